"""The Python API: ``paperzoo.train(config)`` and ``paperzoo.evaluate(checkpoint)``.

Example::

    import paperzoo

    result = paperzoo.train("configs/fashion_mnist_default.yaml", overrides=["train.epochs=1"])
    print(result.status, result.metrics["test_acc"], result.run_dir)  # val_acc with data.val_fraction > 0
    report = paperzoo.evaluate(result.run_dir, tta="flip", out_dir=result.run_dir / "eval")
    print(report.metrics["accuracy"], report.metrics["macro_f1"])

``config`` may be a config dataclass, a nested dict, a YAML path or a recipe name; its ``task`` field picks the
task (image classification by default; ``translation``, ``language_model``, or any registered
:class:`~paperzoo.train.task.Task`). ``overrides`` are ``section.key=value`` strings as on the command line.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import sys
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
        base = config_to_dict(config)
    elif isinstance(config, dict):
        base = copy.deepcopy(config)
    else:  # None, a YAML path or a recipe name from configs/
        base = read_config_data(None if config is None else find_recipe(config))
    data = apply_overrides(copy.deepcopy(base), list(overrides or []))
    name = data.setdefault("task", task or DEFAULT_TASK)
    if task is not None and name != task:
        raise ValueError(f"the config is for task {name!r}, not {task!r}")
    task_type = get_task(name)
    _resolve_model_args(data, base, list(overrides or []), task_type)
    return task_type.config_from_dict(data)


def _resolve_model_args(data: dict, base: dict, overrides: list[str], task_type: Any) -> None:
    """Fit ``data``'s ``model.args`` to its model (:func:`paperzoo.registry.resolve_model_args`): when the
    overrides switch the model (``--model``), the arguments the recipe wrote for its own model that the new one
    does not take are dropped with a line on stderr; an argument given in the overrides that the model cannot
    take is an error. Models outside the registry (a task's own) are left to their task."""
    from paperzoo.registry import UnknownModelError, get_entry, resolve_model_args

    model, base_model = data.get("model"), base.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("args", {}), dict):
        return  # the config's validation reports it
    default = task_type.config_type().model.name
    new = model.get("name") or default
    old = (base_model.get("name") if isinstance(base_model, dict) else None) or default
    try:
        get_entry(new)
    except UnknownModelError:
        return
    keys = [o.split("=", 1)[0].strip() for o in overrides]
    explicit = set(model.get("args", {})) if "model.args" in keys else \
        {k.split(".", 2)[2] for k in keys if k.startswith("model.args.")}
    model["args"], note = resolve_model_args(new, model.get("args", {}), explicit=explicit,
                                             written_for=old if old != new else None)
    if note:
        print(f"paperzoo: {note}", file=sys.stderr)


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
