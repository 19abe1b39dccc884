"""The Python API: ``paperzoo.train(config)`` and ``paperzoo.evaluate(checkpoint)``.

Example::

    import paperzoo

    result = paperzoo.train("configs/fashion_mnist_default.yaml", overrides=["train.epochs=1"])
    print(result.status, result.metrics["val_acc"], result.run_dir)
    report = paperzoo.evaluate(result.run_dir, tta="flip", out_dir=result.run_dir / "eval")
    print(report.metrics["accuracy"], report.metrics["macro_f1"])

``config`` may be a config dataclass, a nested dict, a YAML path or a recipe name; its ``task`` field picks the
task (image classification by default; ``translation``, ``language_model``, or any registered
:class:`~paperzoo.train.task.Task`). ``overrides`` are ``section.key=value`` strings as on the command line.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from .config import apply_overrides, config_to_dict, find_recipe, read_config_data
from .evaluate import EvalResult, average_checkpoints, ensemble, evaluate, predict_files
from .task import get_task
from .trainer import TrainResult, fit

__all__ = ["EvalResult", "TrainResult", "average_checkpoints", "ensemble", "evaluate", "predict_files",
           "resolve_config", "train"]

DEFAULT_TASK = "image_classification"


def resolve_config(config: Any = None, overrides: list[str] | None = None, *, task: str | None = None) -> Any:
    """The validated config of a task, from a config dataclass, a dict, a YAML path or a recipe name.

    The config's top-level ``task`` field picks the task (:func:`paperzoo.train.task.get_task`), whose config
    type is then built and checked: ``Config`` for image classification, ``TextConfig`` for translation and
    language modelling, ... ``task`` names the task a config without that field is for (default
    image_classification); a config naming another task is an error. ``overrides`` are ``section.key=value``.
    """
    if dataclasses.is_dataclass(config):
        data = apply_overrides(config_to_dict(config), list(overrides or []))
    elif isinstance(config, dict):
        data = apply_overrides(dict(config), list(overrides or []))
    else:  # None, a YAML path or a recipe name from configs/
        data = read_config_data(None if config is None else find_recipe(config), overrides)
    name = data.setdefault("task", task or DEFAULT_TASK)
    if task is not None and name != task:
        raise ValueError(f"the config is for task {name!r}, not {task!r}")
    return get_task(name).config_from_dict(data)


def train(config: Any = None, *, overrides: list[str] | None = None, resume: str | os.PathLike | None = None,
          task: str | None = None) -> TrainResult:
    """Train the task a config names; returns a :class:`TrainResult` (``run_dir``, ``status``, ``metrics``, ...).

    With ``resume=RUN_DIR`` the run's saved ``config.yaml`` is used (``config`` must then be None) and
    training continues from its newest intact checkpoint; ``overrides`` still apply on top. ``task``: see
    :func:`resolve_config`.
    """
    if resume is not None:
        if config is not None:
            raise ValueError("pass either a config or resume=RUN_DIR (which uses the run's saved config)")
        run_cfg = Path(resume) / "config.yaml"
        if not run_cfg.is_file():
            raise FileNotFoundError(f"cannot resume: {resume} is not a run directory (no config.yaml)")
        config = run_cfg
    return fit(resolve_config(config, overrides, task=task), resume=resume)
