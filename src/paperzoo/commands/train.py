"""``paperzoo train``: train a registered model from a YAML recipe plus ``--set section.key=value`` overrides.

Also the entry point of distributed runs: ``torchrun --nproc_per_node=N -m paperzoo train RECIPE ...``.
Exit status: 0 done, 1 failed (NaN/inf loss), 130 interrupted (Ctrl-C; a resumable checkpoint was saved).
"""

from __future__ import annotations

import argparse

from ._shared import COMMON_SHORTCUTS, add_training_args, run_training


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model from a YAML recipe (+ overrides); resumable",
                       description="Train a registered model. CONFIG is a YAML file or a recipe name in configs/ "
                                   "(e.g. fashion_mnist_default). Overrides: --set optim.lr=0.05 train.epochs=3.")
    add_training_args(p, shortcuts=("--model", "--data-dir", *COMMON_SHORTCUTS),
                      example="optim.lr=0.1 model.name=resnet18")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return run_training(args)  # the config names its task (image classification by default)
