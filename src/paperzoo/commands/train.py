"""``paperzoo train``: train a registered model from a YAML recipe plus ``--set section.key=value`` overrides.

Also the entry point of distributed runs: ``torchrun --nproc_per_node=N -m paperzoo train RECIPE ...``.
Exit status: 0 done, 1 failed (NaN/inf loss), 130 interrupted (Ctrl-C; a resumable checkpoint was saved).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

EXIT_CODES = {"done": 0, "failed": 1, "interrupted": 130}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model from a YAML recipe (+ overrides); resumable",
                       description="Train a registered model. CONFIG is a YAML file or a recipe name in configs/ "
                                   "(e.g. fashion_mnist_default). Overrides: --set optim.lr=0.05 train.epochs=3.")
    p.add_argument("config", nargs="?", help="YAML recipe path or name (omit with --resume RUN_DIR)")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="override config values, e.g. --set optim.lr=0.1 model.name=resnet18")
    p.add_argument("--resume", nargs="?", const="auto", metavar="RUN_DIR",
                   help="continue RUN_DIR from its newest checkpoint; without a value, resume the run directory "
                        "that CONFIG names (run.out_dir/run.name) if it exists, else start it")
    p.add_argument("--model", help="shortcut for --set model.name=...")
    p.add_argument("--epochs", type=int, help="shortcut for --set train.epochs=...")
    p.add_argument("--data-dir", help="shortcut for --set data.root=...")
    p.add_argument("--out-dir", help="shortcut for --set run.out_dir=...")
    p.add_argument("--name", help="shortcut for --set run.name=...")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=run)


def _overrides(args: argparse.Namespace) -> list[str]:
    out = list(args.overrides)
    for flag, key in (("model", "model.name"), ("epochs", "train.epochs"), ("data_dir", "data.root"),
                      ("out_dir", "run.out_dir"), ("name", "run.name")):
        if getattr(args, flag) is not None:
            out.append(f"{key}={getattr(args, flag)}")
    return out


def run(args: argparse.Namespace) -> int:
    import yaml

    from paperzoo.train.api import resolve_config, train
    from paperzoo.train.config import config_to_dict

    from ._run_args import resolve_config_and_resume

    overrides = _overrides(args)
    config, resume = resolve_config_and_resume(args.config, args.resume, overrides, resolve_config)
    if args.print_config:
        cfg = resolve_config(config if config is not None else Path(resume) / "config.yaml", overrides)
        print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
        return 0
    result = train(config, overrides=overrides, resume=resume)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"run: {result.run_dir}")
        print(f"status: {result.status} (step {result.step}, {result.train_time_s:.0f} s of training)")
        for k, v in result.metrics.items():
            print(f"{k}: {v:.4f}")
        if result.status == "interrupted":
            print(f"resume with: {result.resume_hint}", file=sys.stderr)
    return EXIT_CODES[result.status]
