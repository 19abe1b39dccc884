"""Hyper-parameter search with Optuna over any training-config key.

A search space is a YAML file, given by path or by name: ``paperzoo tune fashion_mnist`` finds
``configs/tune/fashion_mnist.yaml`` in the working directory, else among the spaces shipped with the package
(:func:`find_search_space`, as ``paperzoo train`` finds recipes)::

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

Each trial's config is the base recipe, then the space's ``fixed`` overrides, then the command's ``--set``
overrides, then the trial's sampled values. Trials select on a validation split held out from the training set
(``data.val_fraction`` is set to 0.1 when the base recipe has none; a space or ``--set`` that makes it 0 is
refused), so the test set stays untouched. Each trial trains with the shared trainer and reports the validation
metric after every epoch; the TPE sampler proposes values and the median pruner stops trials that fall behind
the median of earlier trials at the same epoch.

Everything of a study lands in one directory, ``<out_dir>/tune-<study>/`` (:func:`study_dir`): the trial runs
``trial_0000/``, ``trial_0001/``, ... (ordinary run directories), the SQLite database ``study.db`` (unless
``--storage`` names another), ``trials.csv``, ``best_config.yaml`` and the two plots.

Storage is a database URL (SQLite file by default). Any number of workers may run ``paperzoo tune`` against
the same URL and study name at once: Optuna hands each worker distinct trials, and a study can be resumed by
running the command again. Workers that start together on a new SQLite file take turns creating it (a lock
file beside the database, see :func:`open_study`); a server database (PostgreSQL, MySQL) lets workers on
several machines share a study.

The Ray Tune backend (:mod:`paperzoo.tools.tune_ray`, ``--backend ray``) shares everything but the search
itself: a trial is trained by :func:`train_trial` (config, run directory, per-evaluation reports through
:class:`EpochReporter`, resume), and its results are written by :func:`write_results` from :class:`TrialRow` s.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import math
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import yaml

__all__ = ["SearchSpace", "ParamSpec", "TrialRow", "find_search_space", "load_search_space", "open_study",
           "run_study", "export_results", "write_results", "train_trial", "study_dir"]

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
    base: str  # recipe name or config path
    params: list[ParamSpec]
    metric: str | None = None
    direction: str | None = None
    fixed: list[str] = field(default_factory=list)  # the space's overrides of the base recipe
    overrides: list[str] = field(default_factory=list)  # the command's --set, applied after `fixed`
    name: str = "study"  # the file's stem: the default study name


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


def find_search_space(name: str | os.PathLike) -> Path:
    """A search-space path, or the name of one (``fashion_mnist`` or with ``.yaml``) in ``./configs/tune/`` (a
    user's own) or in the package's ``paperzoo/configs/tune/``: found from any working directory."""
    from paperzoo.train.config import find_recipe

    return find_recipe(name, kind="search space")


def load_search_space(name: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> SearchSpace:
    """Read and check a search space (a path or a name, :func:`find_search_space`); ``overrides``: ``--set``
    KEY=VALUE pairs for the base recipe. Every key is checked against the config before any trial runs."""
    from paperzoo.train.classification import eval_split
    from paperzoo.train.config import read_yaml

    p = find_search_space(name)
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
                        metric=raw.get("metric"), direction=raw.get("direction"), fixed=list(raw.get("fixed", [])),
                        overrides=list(overrides), name=p.stem)
    searched = {s.key for s in space.params} & {o.split("=", 1)[0].strip() for o in space.overrides}
    if searched:
        raise ValueError(f"--set {', '.join(sorted(searched))}: searched by {p.name}; set only other keys")
    cfg = _trial_config(space, {s.key: _any_value(s) for s in space.params}, None)  # checks every key
    if eval_split(cfg) == "test":
        raise ValueError(f"{p.name}: data.val_fraction is 0 after the space's fixed values and --set; trials "
                         "select on a validation split held out from the training set, never on the test set")
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
    """The base config with the fixed overrides, the --set overrides and the trial's values applied (validated)."""
    from paperzoo.train.config import apply_overrides, config_from_dict

    data = _base_dict(space)
    if not (data.get("data") or {}).get("val_fraction"):
        # select hyper-parameters on a held-out part of the training set, never on the test set
        _set(data, "data.val_fraction", 0.1)
    data = apply_overrides(data, [*space.fixed, *space.overrides])
    for key, value in values.items():
        _set(data, key, value)
    if run_name is not None:
        _set(data, "run.name", run_name)
        if out_dir:
            _set(data, "run.out_dir", out_dir)
    return config_from_dict(data)


def space_metric(space: SearchSpace) -> str:
    """The metric trials are compared on: the space's ``metric``, else the task's primary one (``val_acc``:
    trials always evaluate on the held-out validation split)."""
    from paperzoo.train.classification import ImageClassificationTask

    return space.metric or ImageClassificationTask.primary_metric


def space_direction(space: SearchSpace) -> str:
    """``maximize`` or ``minimize``: the space's ``direction``, else minimize a loss and maximize the rest."""
    return space.direction or ("minimize" if space.metric and "loss" in space.metric else "maximize")


class EpochReporter:
    """Wraps a task: after each evaluation, hand ``(value of metric, evaluation number)`` to ``report``, which
    may raise to stop the trial early (a pruner's or a scheduler's decision). ``start``: evaluations already
    made by a resumed run, so that the numbers go on where they stopped."""

    def __init__(self, task, metric: str, report: Callable[[float, int], None], start: int = 0) -> None:
        self._task, self._metric, self._report, self._epoch = task, metric, report, start

    def __getattr__(self, name: str) -> Any:
        return getattr(self._task, name)

    def evaluate(self, model):
        metrics = self._task.evaluate(model)
        if self._metric not in metrics:
            raise ValueError(f"metric {self._metric!r} not among the evaluation metrics {sorted(metrics)}")
        self._epoch += 1
        self._report(float(metrics[self._metric]), self._epoch)
        return metrics


def _report_to_optuna(trial, value: float, epoch: int) -> None:
    """Optuna's ``report`` for :class:`EpochReporter`: report to the trial, prune if it falls behind."""
    import optuna

    trial.report(value, epoch)
    if trial.should_prune():
        raise optuna.TrialPruned(f"pruned after epoch {epoch}: {value}")


def _evaluations_done(run_dir: Path, metric: str) -> int:
    """Evaluations a run made up to its newest intact checkpoint (those after it are redone on resume): the
    records of ``metrics.jsonl`` that hold the metric (the others are training records)."""
    from paperzoo.train import checkpoint as ckpt
    from paperzoo.train.logger import read_metrics

    last, _ = ckpt.latest_intact_checkpoint(run_dir / "checkpoints")
    if last is None:
        return 0
    step = ckpt.read_meta(last / "model.safetensors")["step"]
    return sum(1 for r in read_metrics(run_dir / "metrics.jsonl") if metric in r and r.get("step", 0) <= step)


def train_trial(space: SearchSpace, values: dict[str, Any], number: int, out_dir: str | os.PathLike,
                report: Callable[[float, int], None], *, resume: bool = False) -> tuple[float, Path]:
    """Train trial ``number`` with the sampled ``values`` in ``out_dir/trial_NNNN`` and return its final metric
    and run directory; ``report`` gets the metric after every evaluation (:class:`EpochReporter`). With
    ``resume``, a run directory left by an interrupted attempt of the same trial continues from its newest
    checkpoint. Raises RuntimeError for a trial that did not finish (a NaN loss, a stop signal)."""
    from paperzoo.train.classification import ImageClassificationTask
    from paperzoo.train.distributed import DistInfo
    from paperzoo.train.trainer import fit

    cfg = _trial_config(space, values, trial_run_name(number), str(out_dir))
    run_dir = Path(out_dir) / trial_run_name(number)
    earlier = resume and (run_dir / "config.yaml").is_file()
    metric = space_metric(space)
    task = EpochReporter(ImageClassificationTask(cfg, DistInfo()), metric, report,
                         start=_evaluations_done(run_dir, metric) if earlier else 0)
    result = fit(cfg, task, resume=run_dir if earlier else None)
    if result.status != "done" or metric not in result.metrics:
        raise RuntimeError(f"trial {number} ended with status {result.status!r}")
    value = float(result.metrics[metric])
    if math.isnan(value):
        raise RuntimeError(f"trial {number}: {metric} is NaN")
    return value, result.run_dir


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

    direction = space_direction(space)
    with _creation_lock(storage):
        study = optuna.create_study(
            study_name=study_name, storage=_storage(storage), direction=direction, load_if_exists=True,
            sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup_trials),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=n_startup_trials, n_warmup_steps=n_warmup_steps),
        )
        recipe = yaml.safe_dump({"base": space.base, "fixed": space.fixed, "set": space.overrides})
        before = study.user_attrs.get("search_space")
        if before is not None and before != recipe and study.trials:  # its trials trained another config
            raise ValueError(f"study {study_name!r} in {storage} was run with another base recipe or --set "
                             f"({' '.join(before.split())}); give another --study to start a new one")
        study.set_user_attr("search_space", recipe)
    return study


def study_dir(out_dir: str | os.PathLike, study_name: str) -> Path:
    """Where a study's trial runs, database and results go: ``<out_dir>/tune-<study>``."""
    return Path(out_dir) / f"tune-{study_name}"


def trial_run_name(number: int) -> str:
    """The run directory of trial ``number`` inside the study directory: ``trial_0007``."""
    return f"trial_{number:04d}"


def run_study(space: SearchSpace, *, study_name: str, storage: str, n_trials: int | None = None,
              timeout: float | None = None, out_dir: str | os.PathLike = "runs/tune", seed: int | None = None,
              n_startup_trials: int = 5, n_warmup_steps: int = 1):
    """Create or resume the study and run trials in this process until ``n_trials`` or ``timeout``; trial
    ``n`` trains in ``out_dir/trial_000n`` (``out_dir``: the study's directory, :func:`study_dir`)."""
    import optuna

    study = open_study(space, study_name=study_name, storage=storage, seed=seed, n_startup_trials=n_startup_trials,
                       n_warmup_steps=n_warmup_steps)
    study.set_user_attr("metric", space_metric(space))  # named on the plots' axes

    def objective(trial: optuna.Trial) -> float:
        values = {s.key: s.suggest(trial) for s in space.params}
        value, run_dir = train_trial(space, values, trial.number, out_dir, partial(_report_to_optuna, trial))
        trial.set_user_attr("run_dir", str(run_dir))
        return value

    study.optimize(objective, n_trials=n_trials, timeout=timeout, catch=(RuntimeError,), gc_after_trial=True)
    return study


@dataclass
class TrialRow:
    """One trial of either backend, as the results table and the best config see it."""

    number: int
    state: str  # COMPLETE, PRUNED (stopped early), FAIL, RUNNING, ...
    value: float | None  # the final metric, or the last one reported before the trial stopped
    duration_s: float | None
    params: dict[str, Any]
    run_dir: str | None


def best_row(rows: list[TrialRow], direction: str) -> TrialRow | None:
    """The complete trial with the best value (the first of equals); None if no trial completed."""
    done = [r for r in rows if r.state == "COMPLETE" and r.value is not None and not math.isnan(r.value)]
    if not done:
        return None
    sign = 1.0 if direction == "maximize" else -1.0
    return max(done, key=lambda r: (sign * r.value, -r.number))


def write_results(rows: list[TrialRow], space: SearchSpace, study_name: str, out: str | os.PathLike
                  ) -> dict[str, Path]:
    """Write the trials table (``trials.csv``), the best complete trial's config (``best_config.yaml``, ready
    to train) and the optimization history plot into ``out``; returns the files written."""
    from paperzoo.train.config import config_to_dict

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {"trials": out / "trials.csv"}
    keys = sorted({k for r in rows for k in r.params})
    with files["trials"].open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["number", "state", "value", "duration_s", *keys, "run_dir"])
        for r in rows:
            w.writerow([r.number, r.state, r.value, r.duration_s, *(r.params.get(k) for k in keys), r.run_dir])
    best = best_row(rows, space_direction(space))
    if best is None:
        return files
    cfg = _trial_config(space, best.params, None)
    text = (f"# best trial {best.number} of study {study_name!r}: value {best.value}\n"
            f"# params: {best.params}\n" + yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    files["best_config"] = out / "best_config.yaml"
    files["best_config"].write_text(text)
    files["history"] = _plot_history(rows, study_name, space_metric(space), space_direction(space),
                                     out / "optimization_history.png")
    return files


def optuna_rows(study) -> list[TrialRow]:
    """The trials of an Optuna study as :class:`TrialRow` s."""
    return [TrialRow(t.number, t.state.name, t.value, t.duration.total_seconds() if t.duration else None,
                     dict(t.params), t.user_attrs.get("run_dir")) for t in study.trials]


def export_results(study, space: SearchSpace, out: str | os.PathLike) -> dict[str, Path]:
    """Write the best config (ready-to-run YAML), the trials table (CSV) and the two plots into ``out``."""
    from optuna.trial import TrialState

    files = write_results(optuna_rows(study), space, study.study_name, out)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    if len(complete) >= 2 and len(space.params) >= 1:
        metric = space.metric or study.user_attrs.get("metric", "objective")
        try:
            files["importance"] = _plot_importances(study, metric, Path(out) / "param_importances.png")
        except (RuntimeError, ValueError) as e:  # e.g. all trials sampled the same values
            print(f"param importance plot skipped: {e}")
    return files


# Both plots are drawn here rather than by optuna.visualization.matplotlib, whose figures stack two titles and
# cut long parameter names and legends off: one title naming the study, the metric on the axis, the config keys
# in full.
def _plot_history(rows: list[TrialRow], study_name: str, metric: str, direction: str, path: Path) -> Path:
    """Each finished trial's value against its number, and the best value so far."""
    from paperzoo.viz.common import new_figure, save_figure

    done = [r for r in rows if r.state == "COMPLETE"]
    xs, ys = [r.number for r in done], [r.value for r in done]
    pick = max if direction == "maximize" else min
    best = [pick(ys[: i + 1]) for i in range(len(ys))]
    fig, axes = new_figure(1, size=(7, 4.5))
    ax = axes[0, 0]
    ax.plot(xs, ys, "o", label="trial")
    ax.step(xs, best, where="post", color="tab:red", label=f"best so far ({direction})")
    ax.set(title=f"Optimization history: study {study_name!r}", xlabel="trial", ylabel=metric)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def _plot_importances(study, metric: str, path: Path) -> Path:
    """The PED-ANOVA importance (Watanabe et al. 2023; Optuna's default, needs no scikit-learn) of each parameter
    for ``metric``, as horizontal bars."""
    import optuna

    from paperzoo.viz.common import new_figure, save_figure

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "importances will be equal" on tiny studies
        importance = optuna.importance.get_param_importances(  # normalised to sum 1, largest first
            study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())
    names = list(importance)[::-1]  # largest at the top
    fig, axes = new_figure(1, size=(7, 1.6 + 0.45 * len(names)))
    ax = axes[0, 0]
    ax.barh(names, [importance[n] for n in names], color="tab:blue")
    for y, n in enumerate(names):
        ax.text(importance[n], y, f" {importance[n]:.2f}", va="center", fontsize=9)
    n_done = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)  # what the importance uses
    ax.set(title=f"Hyper-parameter importance: study {study.study_name!r} ({n_done} complete trials)",
           xlabel=f"importance for {metric} (PED-ANOVA; sums to 1)", xlim=(0, 1.1 * max([*importance.values(), 0.01])))
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)
