"""Hyper-parameter search with Optuna over any training-config key.

A search space is a YAML file::

    base: fashion_mnist_default        # a recipe name or a config path
    metric: val_acc                    # optional; default: the task's primary metric
    direction: maximize                # optional; default from the task (higher_is_better)
    fixed: [train.epochs=4]            # optional overrides applied to every trial
    params:
      optim.lr:           {type: log_float, low: 1.0e-3, high: 1.0}
      optim.weight_decay: {type: log_float, low: 1.0e-5, high: 1.0e-2}
      aug.mixup_alpha:    {type: float, low: 0.0, high: 0.4}
      train.epochs:       {type: int, low: 3, high: 8}
      model.name:         {type: categorical, choices: [resnet20, resnet32]}

Trials select on a validation split held out from the training set (``data.val_fraction`` is set to 0.1 when
the base recipe has none), so the test set stays untouched. Each trial sets its sampled values on the base
config, trains with the shared trainer and reports the validation metric after every epoch; the TPE sampler
proposes values and the median pruner stops trials that fall behind the median of earlier trials at the same
epoch.

Storage is a database URL (SQLite file by default). Any number of workers may run ``paperzoo tune`` against
the same URL and study name at once: Optuna hands each worker distinct trials, and a study can be resumed by
running the command again. Workers that start together on a new SQLite file take turns creating it (a lock
file beside the database, see :func:`open_study`); a server database (PostgreSQL, MySQL) lets workers on
several machines share a study.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import math
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["SearchSpace", "ParamSpec", "load_search_space", "open_study", "run_study", "export_results"]

PARAM_TYPES = ("float", "log_float", "int", "log_int", "categorical")


@dataclass
class ParamSpec:
    key: str
    type: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    choices: list[Any] | None = None

    def suggest(self, trial) -> Any:
        if self.type == "categorical":
            return trial.suggest_categorical(self.key, self.choices)
        if self.type in ("int", "log_int"):
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1),
                                     log=self.type == "log_int")
        return trial.suggest_float(self.key, float(self.low), float(self.high), step=self.step,
                                   log=self.type == "log_float")


@dataclass
class SearchSpace:
    base: str
    params: list[ParamSpec]
    metric: str | None = None
    direction: str | None = None
    fixed: list[str] = field(default_factory=list)


def _spec(key: str, raw: Any) -> ParamSpec:
    if "." not in key:
        raise ValueError(f"search-space key {key!r} must be section.key, e.g. optim.lr")
    if not isinstance(raw, dict) or raw.get("type") not in PARAM_TYPES:
        raise ValueError(f"{key}: give a mapping with type one of {', '.join(PARAM_TYPES)}, got {raw!r}")
    spec = ParamSpec(key=key, **{k: raw[k] for k in ("type", "low", "high", "step", "choices") if k in raw})
    unknown = set(raw) - {"type", "low", "high", "step", "choices"}
    if unknown:
        raise ValueError(f"{key}: unknown field(s) {sorted(unknown)}; valid: type, low, high, step, choices")
    if spec.type == "categorical":
        if not spec.choices:
            raise ValueError(f"{key}: categorical needs a non-empty 'choices' list")
    else:
        if spec.low is None or spec.high is None or not float(spec.low) < float(spec.high):
            raise ValueError(f"{key}: {spec.type} needs low < high, got low={spec.low} high={spec.high}")
        if spec.type.startswith("log") and float(spec.low) <= 0:
            raise ValueError(f"{key}: {spec.type} needs low > 0")
    return spec


def load_search_space(path: str | os.PathLike) -> SearchSpace:
    from paperzoo.train.config import read_yaml

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"search space not found: {p}")
    raw = read_yaml(p) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{p}: expected a mapping with base, params, ...")
    unknown = set(raw) - {"base", "params", "metric", "direction", "fixed"}
    if unknown:
        raise ValueError(f"{p}: unknown top-level key(s) {sorted(unknown)}; valid: base, params, metric, "
                         "direction, fixed")
    if "base" not in raw or not raw.get("params"):
        raise ValueError(f"{p}: needs 'base' (a recipe or config path) and a non-empty 'params' mapping")
    if raw.get("direction") not in (None, "maximize", "minimize"):
        raise ValueError(f"{p}: direction must be maximize or minimize")
    space = SearchSpace(base=str(raw["base"]), params=[_spec(k, v) for k, v in raw["params"].items()],
                        metric=raw.get("metric"), direction=raw.get("direction"), fixed=list(raw.get("fixed", [])))
    _trial_config(space, {s.key: _any_value(s) for s in space.params}, None)  # validate keys against the config
    return space


def _any_value(spec: ParamSpec) -> Any:
    if spec.type == "categorical":
        return spec.choices[0]
    return int(spec.low) if "int" in spec.type else float(spec.low)


def _base_dict(space: SearchSpace) -> dict:
    from paperzoo.train.config import find_recipe, read_yaml

    return read_yaml(find_recipe(space.base)) or {}


def _set(data: dict, key: str, value: Any) -> None:
    *sections, leaf = key.split(".")
    node = data
    for k in sections:
        node = node.setdefault(k, {})
    node[leaf] = value


def _trial_config(space: SearchSpace, values: dict[str, Any], run_name: str | None, out_dir: str | None = None):
    """The base config with the fixed overrides and the trial's values applied (validated)."""
    from paperzoo.train.config import apply_overrides, config_from_dict

    data = _base_dict(space)
    if not (data.get("data") or {}).get("val_fraction"):
        # select hyper-parameters on a held-out part of the training set, never on the test set
        _set(data, "data.val_fraction", 0.1)
    data = apply_overrides(data, list(space.fixed))
    for key, value in values.items():
        _set(data, key, value)
    if run_name is not None:
        _set(data, "run.name", run_name)
        if out_dir:
            _set(data, "run.out_dir", out_dir)
    return config_from_dict(data)


class _ReportingTask:
    """Wraps a task: after each evaluation, report the metric to the trial and prune if it falls behind."""

    def __init__(self, task, trial, metric: str) -> None:
        self._task, self._trial, self._metric, self._epoch = task, trial, metric, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._task, name)

    def evaluate(self, model):
        import optuna

        metrics = self._task.evaluate(model)
        if self._metric not in metrics:
            raise ValueError(f"metric {self._metric!r} not among the evaluation metrics {sorted(metrics)}")
        self._epoch += 1
        self._trial.report(float(metrics[self._metric]), self._epoch)
        if self._trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {self._epoch}: {self._metric}={metrics[self._metric]}")
        return metrics


def _storage(url: str):
    import optuna

    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)


@contextlib.contextmanager
def _creation_lock(url: str) -> Iterator[None]:
    """Hold an exclusive lock on ``<database>.lock`` for a SQLite file URL (no lock for other databases).

    Opening a new storage creates its tables and stamps the schema version, and ``create_study`` inserts the
    study: two workers doing this at the same moment on a new SQLite file collide ("table already exists",
    integrity errors). Under the lock the first worker creates and the others, waiting, then load.
    """
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        yield
        return
    lock = Path(f"{parsed.database}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file is closed, also if this process dies
        yield


def open_study(space: SearchSpace, *, study_name: str, storage: str, seed: int | None = None,
               n_startup_trials: int = 5, n_warmup_steps: int = 1):
    """Create the study, or load it if it exists; safe for workers that start together (see _creation_lock)."""
    import optuna

    direction = space.direction or ("minimize" if space.metric and "loss" in space.metric else "maximize")
    with _creation_lock(storage):
        study = optuna.create_study(
            study_name=study_name, storage=_storage(storage), direction=direction, load_if_exists=True,
            sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup_trials),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=n_startup_trials, n_warmup_steps=n_warmup_steps),
        )
        study.set_user_attr("search_space", yaml.safe_dump({"base": space.base, "fixed": space.fixed}))
    return study


def run_study(space: SearchSpace, *, study_name: str, storage: str, n_trials: int | None = None,
              timeout: float | None = None, out_dir: str = "runs/tune", seed: int | None = None,
              n_startup_trials: int = 5, n_warmup_steps: int = 1):
    """Create or resume the study and run trials in this process until ``n_trials`` or ``timeout``."""
    import optuna

    from paperzoo.train.classification import ImageClassificationTask
    from paperzoo.train.distributed import DistInfo
    from paperzoo.train.trainer import fit

    study = open_study(space, study_name=study_name, storage=storage, seed=seed, n_startup_trials=n_startup_trials,
                       n_warmup_steps=n_warmup_steps)

    def objective(trial: optuna.Trial) -> float:
        values = {s.key: s.suggest(trial) for s in space.params}
        cfg = _trial_config(space, values, f"{study_name}-trial{trial.number:04d}", out_dir)
        task = ImageClassificationTask(cfg, DistInfo())
        metric = space.metric or task.primary_metric
        result = fit(cfg, _ReportingTask(task, trial, metric))
        trial.set_user_attr("run_dir", str(result.run_dir))
        if result.status != "done" or metric not in result.metrics:
            raise RuntimeError(f"trial {trial.number} ended with status {result.status!r}")
        value = float(result.metrics[metric])
        if math.isnan(value):
            raise RuntimeError(f"trial {trial.number}: {metric} is NaN")
        return value

    study.optimize(objective, n_trials=n_trials, timeout=timeout, catch=(RuntimeError,), gc_after_trial=True)
    return study


def export_results(study, space: SearchSpace, out: str | os.PathLike) -> dict[str, Path]:
    """Write the best config (ready-to-run YAML), the trials table (CSV) and the two plots into ``out``."""
    import optuna
    from optuna.trial import TrialState

    from paperzoo.train.config import config_to_dict
    from paperzoo.viz.common import save_figure

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    files["trials"] = out / "trials.csv"
    keys = sorted({k for t in study.trials for k in t.params})
    with files["trials"].open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["number", "state", "value", "duration_s", *keys, "run_dir"])
        for t in study.trials:
            dur = t.duration.total_seconds() if t.duration else None
            w.writerow([t.number, t.state.name, t.value, dur, *(t.params.get(k) for k in keys),
                        t.user_attrs.get("run_dir")])
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    if not complete:
        return files
    best = study.best_trial
    cfg = _trial_config(space, best.params, None)
    text = (f"# best trial {best.number} of study {study.study_name!r}: value {best.value}\n"
            f"# params: {best.params}\n" + yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    files["best_config"] = out / "best_config.yaml"
    files["best_config"].write_text(text)

    import matplotlib

    matplotlib.use("Agg")
    from optuna.visualization import matplotlib as ovm

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

    ax = ovm.plot_optimization_history(study)
    ax.set_title(f"Optimization history: {study.study_name}")
    files["history"] = save_figure(ax.figure, out / "optimization_history.png")
    if len(complete) >= 2 and len(space.params) >= 1:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "importances will be equal" on tiny studies
                ax = ovm.plot_param_importances(study)
            ax.set_title(f"Hyper-parameter importance: {study.study_name}")
            files["importance"] = save_figure(ax.figure, out / "param_importances.png")
        except (RuntimeError, ValueError) as e:  # e.g. all trials sampled the same values
            print(f"param importance plot skipped: {e}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return files
