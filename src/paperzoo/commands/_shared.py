"""What the training commands share: ``paperzoo train``, ``paperzoo translate train`` and ``paperzoo lm train``.

Each of them is ``add_training_args`` + ``run_training(args, task)``: the same CONFIG / ``--set`` /
``--resume`` / ``--print-config`` arguments, the same path through ``paperzoo.train.api`` (``resolve_config`` /
``train``, the task named by the command or else by the config), the same result lines and the same exit
status (0 done, 1 failed, 130 interrupted with a resumable checkpoint).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

EXIT_CODES = {"done": 0, "failed": 1, "interrupted": 130}

#: shortcut flags: flag -> (config key, type, help)
SHORTCUTS = {
    "--model": ("model.name", str, "shortcut for --set model.name=..."),
    "--epochs": ("train.epochs", int, "shortcut for --set train.epochs=..."),
    "--data-dir": ("data.root", str, "shortcut for --set data.root=..."),
    "--out-dir": ("run.out_dir", str, "shortcut for --set run.out_dir=..."),
    "--name": ("run.name", str, "shortcut for --set run.name=..."),
}


def add_training_args(p: argparse.ArgumentParser, *, shortcuts: tuple[str, ...], example: str) -> None:
    """CONFIG, ``--set``, ``--resume``, ``--print-config`` and the chosen ``SHORTCUTS``."""
    p.add_argument("config", nargs="?", help="YAML recipe path or name in configs/ (omit with --resume RUN_DIR)")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help=f"override config values, e.g. --set {example}")
    p.add_argument("--resume", nargs="?", const="auto", metavar="RUN_DIR",
                   help="continue RUN_DIR from its newest checkpoint; without a value, resume the run directory "
                        "that CONFIG names (run.out_dir/run.name) if it exists, else start it")
    for flag in shortcuts:
        _, tp, helptext = SHORTCUTS[flag]
        p.add_argument(flag, type=tp, help=helptext)
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def overrides_of(args: argparse.Namespace) -> list[str]:
    """The ``--set`` overrides followed by those of the shortcut flags given."""
    out = list(args.overrides)
    for flag, (key, _, _) in SHORTCUTS.items():
        value = getattr(args, flag[2:].replace("-", "_"), None)
        if value is not None:
            out.append(f"{key}={value}")
    return out


def resolve_config_and_resume(config_arg: str | None, resume: str | None, overrides: list[str],
                              resolve: Callable[[Any, list[str]], Any]) -> tuple[Path | None, str | None]:
    """(config path or None, run directory to resume or None).

    ``--resume RUN_DIR`` uses the run's saved config; ``--resume`` without a value ("auto") resumes the run
    directory that CONFIG names (run.out_dir/run.name) if it exists, else starts it. ``resolve(config,
    overrides)`` builds the validated config to read those names.
    """
    from paperzoo.train.config import find_recipe

    if resume not in (None, "auto"):
        if config_arg:
            raise ValueError("--resume RUN_DIR uses the run's saved config; do not also pass CONFIG")
        return None, resume
    if not config_arg:
        raise ValueError("give a CONFIG (YAML path or recipe name) or --resume RUN_DIR")
    config = find_recipe(config_arg)
    if resume == "auto":
        cfg = resolve(config, overrides)
        if cfg.run.name is None:
            raise ValueError("--resume without a RUN_DIR needs a fixed run.name (e.g. --name myrun)")
        run_dir = Path(cfg.run.out_dir) / cfg.run.name
        if (run_dir / "config.yaml").is_file():
            return None, str(run_dir)
    return config, None


def print_result(result: Any) -> None:
    """The run directory, status and final metrics (stdout); how to resume an interrupted run (stderr)."""
    if int(os.environ.get("RANK", "0")) != 0:
        return  # one report per distributed run
    print(f"run: {result.run_dir}")
    print(f"status: {result.status} (step {result.step}, {result.train_time_s:.0f} s of training)")
    for k, v in result.metrics.items():
        print(f"{k}: {v:.4f}")
    if result.status == "interrupted":
        print(f"resume with: {result.resume_hint}", file=sys.stderr)


def run_training(args: argparse.Namespace, task: str | None = None) -> int:
    """Resolve CONFIG / ``--resume``, then print the config or train; returns the exit status.

    ``task`` (e.g. "translation"): the task the command trains, which a config must name if it names one;
    None lets the config choose (image classification when it names none).
    """
    import functools

    import yaml

    from paperzoo.train import api
    from paperzoo.train.config import config_to_dict

    resolve = functools.partial(api.resolve_config, task=task)
    overrides = overrides_of(args)
    config, resume = resolve_config_and_resume(args.config, args.resume, overrides, resolve)
    if args.print_config:
        cfg = resolve(config if config is not None else Path(resume) / "config.yaml", overrides)
        print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True), end="")
        return 0
    result = api.train(config, overrides=overrides, resume=resume, task=task)
    print_result(result)
    return EXIT_CODES[result.status]


def load_text_run(args: argparse.Namespace, task: str, other_command: str) -> Any:
    """The text checkpoint that ``args.run`` / ``args.which`` name, refused unless it was trained for ``task``."""
    from paperzoo.text.tasks import load_text_checkpoint

    ck = load_text_checkpoint(args.run, args.which, device=args.device)
    if ck.task != task:
        raise ValueError(f"{ck.path} is a {ck.task} checkpoint; use `paperzoo {other_command}`")
    return ck
