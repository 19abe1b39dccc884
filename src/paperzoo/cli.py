"""The ``paperzoo`` command line.

Each subcommand lives in its own module under ``paperzoo/commands/`` and exposes
``register(subparsers)``; this file only discovers them, so areas never edit a shared list.

Bad input of any kind (a wrong value, a missing, unreadable or corrupt file, a refused pickle) ends with one line
``paperzoo COMMAND: error: ...`` on stderr and exit status 2; ``--debug`` or ``PAPERZOO_DEBUG=1`` also prints
the traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
import traceback

import paperzoo.commands as _commands
from paperzoo.commands._shared import show_defaults


def build_parser() -> argparse.ArgumentParser:
    from paperzoo import __version__

    parser = argparse.ArgumentParser(
        prog="paperzoo",
        description="Readable, verified implementations of landmark deep-learning architectures.",
    )
    parser.add_argument("--version", action="version", version=f"paperzoo {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="print the traceback of errors too (same as PAPERZOO_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(_commands.__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{_commands.__name__}.{info.name}").register(sub)
    show_defaults(parser)  # every command's help shows the defaults of its options
    return parser


def user_error_types() -> tuple[type[BaseException], ...]:
    """The exceptions that mean bad input rather than a bug in paperzoo.

    ``ValueError`` covers paperzoo's ConfigError, TokenizerMismatchError, RunDirExistsError and data-format
    errors as well as ``UnicodeDecodeError``; ``OSError`` covers missing files (and paperzoo's CheckpointError,
    DatasetNotFoundError and the trainer's RunFailedError), permissions, a directory where a file belongs, a
    full disk and images PIL cannot identify; ``UnpicklingError`` is a pickle that was refused. A bare
    ``KeyError`` or ``TypeError`` is a bug, not bad input.
    """
    import pickle

    import yaml

    from paperzoo.detection.registry import UnknownDetectorError
    from paperzoo.registry import UnknownModelError
    from paperzoo.segmentation.registry import UnknownSegmenterError
    from paperzoo.weights import WeightLoadError

    return (ValueError, OSError, UnknownModelError, UnknownDetectorError, UnknownSegmenterError,
            pickle.UnpicklingError, yaml.YAMLError, WeightLoadError)


def describe(e: BaseException) -> str:
    """One line saying what went wrong, naming the file where there is one."""
    if isinstance(e, OSError) and e.strerror and e.filename is not None:
        msg = f"{e.filename}: {e.strerror}"  # e.g. "x.png: Is a directory", without the "[Errno 21]"
    elif isinstance(e, OSError) and e.strerror:
        msg = e.strerror  # e.g. "No space left on device"
    else:
        msg = str(e) or type(e).__name__
    return "; ".join(line.strip() for line in msg.splitlines() if line.strip())


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    debug = args.debug or os.environ.get("PAPERZOO_DEBUG", "") not in ("", "0")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if not isinstance(e, user_error_types()):
            raise  # a bug: keep the traceback
        if debug:
            traceback.print_exc()
        print(f"paperzoo {args.command}: error: {describe(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
