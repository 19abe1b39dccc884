"""The Python API: ``paperzoo.train(config)`` and ``paperzoo.evaluate(checkpoint)``.

Example::

    import paperzoo

    result = paperzoo.train("configs/fashion_mnist_default.yaml", overrides=["train.epochs=1"])
    print(result.status, result.metrics["val_acc"], result.run_dir)
    report = paperzoo.evaluate(result.run_dir, tta="flip", out_dir=result.run_dir / "eval")
    print(report.metrics["accuracy"], report.metrics["macro_f1"])

``config`` may be a :class:`~paperzoo.train.config.Config`, a nested dict or a YAML path; ``overrides`` are
``section.key=value`` strings as on the command line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .config import Config, apply_overrides, config_from_dict, config_to_dict, find_recipe, load_config
from .evaluate import EvalResult, average_checkpoints, ensemble, evaluate, predict_files
from .trainer import Task, TrainResult, fit

__all__ = ["EvalResult", "TrainResult", "average_checkpoints", "build_optimizer_and_schedule", "ensemble",
           "evaluate", "predict_files", "resolve_config", "train"]


def resolve_config(config: Config | dict | str | os.PathLike | None = None,
                   overrides: list[str] | None = None) -> Config:
    """A validated :class:`Config` from a Config, a dict, a YAML path or a recipe name, with overrides applied."""
    if isinstance(config, Config):
        data = config_to_dict(config)
    elif isinstance(config, dict):
        data = dict(config)
    elif config is None:
        data = {}
    else:  # a YAML path or a recipe name from configs/
        return load_config(find_recipe(config), overrides)
    return config_from_dict(apply_overrides(data, list(overrides or [])))


def train(config: Config | dict | str | os.PathLike | None = None, *, overrides: list[str] | None = None,
          resume: str | os.PathLike | None = None, task: Task | None = None) -> TrainResult:
    """Train a model; returns a :class:`TrainResult` (``run_dir``, ``status``, ``metrics``, ``best``).

    With ``resume=RUN_DIR`` the run's saved ``config.yaml`` is used (``config`` must then be None) and
    training continues from its newest checkpoint; ``overrides`` still apply on top.
    """
    if resume is not None:
        if config is not None:
            raise ValueError("pass either a config or resume=RUN_DIR (which uses the run's saved config)")
        run_cfg = Path(resume) / "config.yaml"
        if not run_cfg.is_file():
            raise FileNotFoundError(f"cannot resume: {resume} is not a run directory (no config.yaml)")
        config = run_cfg
    return fit(resolve_config(config, overrides), task, resume=resume)


def build_optimizer_and_schedule(cfg: Config, model: nn.Module, total_steps: int, steps_per_epoch: int
                                 ) -> tuple[torch.optim.Optimizer, Any]:
    """The optimizer (no weight decay on norms/biases) and the per-step LR schedule of ``cfg``."""
    from .optim import build_optimizer
    from .schedulers import build_scheduler

    o, s = cfg.optim, cfg.sched
    optimizer = build_optimizer(model, o.name, lr=o.lr, weight_decay=o.weight_decay, momentum=o.momentum,
                                nesterov=o.nesterov, betas=tuple(o.betas))
    scheduler = build_scheduler(
        optimizer, s.name, total_steps=total_steps,
        warmup_steps=round(s.warmup_epochs * steps_per_epoch), min_lr_ratio=s.min_lr_ratio,
        step_size=round(s.step_epochs * steps_per_epoch) if s.step_epochs else None,
        milestones=tuple(round(m * steps_per_epoch) for m in s.milestones), gamma=s.gamma, pct_start=s.pct_start)
    return optimizer, scheduler


