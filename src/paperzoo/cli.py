"""The ``paperzoo`` command line.

Each subcommand lives in its own module under ``paperzoo/commands/`` and exposes
``register(subparsers)``; this file only discovers them, so areas never edit a shared list.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import paperzoo.commands as _commands


def build_parser() -> argparse.ArgumentParser:
    from paperzoo import __version__

    parser = argparse.ArgumentParser(
        prog="paperzoo",
        description="Readable, verified implementations of landmark deep-learning architectures.",
    )
    parser.add_argument("--version", action="version", version=f"paperzoo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(_commands.__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{_commands.__name__}.{info.name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (KeyError, ValueError, FileNotFoundError) as e:
        # user errors (unknown model, bad option, missing file): one clear line, no traceback
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"paperzoo {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
