"""Hyper-parameter search with Ray Tune: the search spaces of :mod:`paperzoo.tools.tune`, on a laptop or a cluster.

``paperzoo tune SPACE --backend ray`` runs the same search space as the Optuna backend, with the same trials:
each trial's config is built by ``tools.tune._trial_config`` and trained by ``tools.tune.train_trial`` (the
shared trainer) in an ordinary run directory ``<study dir>/trial_NNNN/``, and the results are written by
``tools.tune.write_results`` (``trials.csv``, ``best_config.yaml``, the history plot). What Ray adds:

- Trials run ``max_concurrent`` at a time, each in its own Ray worker process with ``cpus_per_trial`` CPUs (and
  ``gpus_per_trial`` GPUs), on a Ray started for the study (``ray.init`` with ``max_concurrent x cpus_per_trial``
  CPUs, no dashboard, a temporary directory under /tmp) or on an existing cluster (``address``).
- ASHA stops trials early: Li et al., "A System for Massively Parallel Hyperparameter Tuning" (MLSys 2020,
  arXiv 1810.05934). Each trial reports the metric after every evaluation (``evaluation`` = 1, 2, ...); at
  the rungs ``grace_period x rf^k`` a trial continues only if it is in the top ``1/rf`` of the trials that
  reached that rung before it (Algorithm 2, asynchronous: no trial waits for a rung to fill).
- Proposals: ``random`` (Ray's random sampling of the space), ``grid`` (every combination) or ``optuna``
  (Optuna's TPE sampler inside Ray, ``ray.tune.search.optuna.OptunaSearch``).

Resuming: Ray's experiment state lives in ``<study dir>/ray/``. Running the same command again restores it
(``Tuner.restore``): finished trials stay, unfinished or errored ones run again, and a trial whose run directory
has a checkpoint continues from it. On a cluster of several machines the study directory (``--out-dir``) must be
on a file system every node sees (the trials write their run directories there), and paperzoo must be installed
on every node.

Deviations from the Optuna backend: a trial's state PRUNED means "stopped early", by ASHA or when the time budget
ran out; there is no importance plot (it needs an Optuna study); ``--n-trials`` counts the whole study, not one
worker's share; a finished study is reported again rather than extended (give another ``--study``).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from paperzoo.tools.tune import (
    ParamSpec,
    SearchSpace,
    TrialRow,
    _trial_config,
    space_direction,
    space_metric,
    train_trial,
    trial_run_name,
)

__all__ = ["RaySettings", "require_ray", "ray_param_space", "run_ray_study"]

SEARCHES = ("random", "grid", "optuna")
TIME_ATTR = "evaluation"  # ASHA's clock: evaluations made by the trial (one per epoch unless train.eval_every)


@dataclass
class RaySettings:
    search: str = "random"  # one of SEARCHES
    address: str | None = None  # an existing cluster; None: a local Ray started for the study
    max_concurrent: int = 2
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    n_startup_trials: int = 5  # random trials before TPE (search="optuna")
    grace_period: int = 1  # evaluations before ASHA may stop a trial
    reduction_factor: float = 3  # eta of Hyperband (its paper's default): the top third continues at each rung


def require_ray() -> None:
    """Raise a one-line ValueError if Ray Tune is not installed (paperzoo itself never needs it)."""
    try:
        import ray.tune  # noqa: F401
    except ImportError as e:
        raise ValueError(f"--backend ray needs Ray Tune ({e}): pip install 'paperzoo[ray]'") from None


# ------------------------------------------------------------------------------------------- the space
def _grid_values(spec: ParamSpec) -> list[Any]:
    """Every value of one parameter for --search grid: the choices, the integers, or floats on their step."""
    if spec.type == "categorical":
        return list(spec.choices)
    if spec.step is None and "int" not in spec.type:
        raise ValueError(f"--search grid: {spec.key} is a continuous range; give it a step or use categorical "
                         "choices")
    step = spec.step or 1
    n = int(math.floor((float(spec.high) - float(spec.low)) / step + 1e-9)) + 1  # high included when on the grid
    values = [float(spec.low) + i * step for i in range(n)]
    return [int(round(v)) for v in values] if "int" in spec.type else values


def _domain(spec: ParamSpec) -> Any:
    """Ray's sampling domain with the meaning of ``ParamSpec.suggest`` (both bounds included)."""
    from ray import tune

    low, high, step = spec.low, spec.high, spec.step
    if spec.type == "categorical":
        return tune.choice(list(spec.choices))
    if spec.type == "int":  # randint excludes its upper bound, qrandint includes it
        return tune.qrandint(int(low), int(high), int(step)) if step else tune.randint(int(low), int(high) + 1)
    if spec.type == "log_int":
        return tune.lograndint(int(low), int(high) + 1)
    if spec.type == "log_float":
        return tune.loguniform(float(low), float(high))
    return tune.quniform(float(low), float(high), float(step)) if step else tune.uniform(float(low), float(high))


def ray_param_space(space: SearchSpace, search: str) -> dict[str, Any]:
    """The space as Ray's ``param_space``: config keys (``optim.lr``) to sampling domains, or to grids."""
    from ray import tune

    if search not in SEARCHES:
        raise ValueError(f"unknown search {search!r}; valid: {', '.join(SEARCHES)}")
    if search == "grid":
        return {s.key: tune.grid_search(_grid_values(s)) for s in space.params}
    return {s.key: _domain(s) for s in space.params}


def max_evaluations(space: SearchSpace) -> int:
    """The most evaluations any trial can make (ASHA's ``max_t``): one every ``train.eval_every`` epochs and one
    at the end (the trainer's rule), for the most epochs and the smallest eval_every the space allows."""
    train = _trial_config(space, {}, None).train
    most = {"train.epochs": train.epochs, "train.eval_every": train.eval_every}
    for s in space.params:
        if s.key in most:
            bounds = s.choices if s.type == "categorical" else [s.low, s.high]
            most[s.key] = max(bounds) if s.key == "train.epochs" else min(bounds)
    return max(1, math.ceil(int(most["train.epochs"]) / max(1, int(most["train.eval_every"]))))


# ------------------------------------------------------------------------------------------- a trial
def trial_number(dirname: str) -> int:
    """The number of a trial from its Ray directory's name, ``trial_0007`` (see :class:`TrialNumbers`)."""
    return int(dirname.split("_")[1])


class TrialNumbers:
    """Ray's ``trial_dirname_creator``: numbers trials 0, 1, 2, ... in the order Ray creates them, and names
    each trial's Ray directory after its run directory (``trial_0007``).

    Ray's own trial ids carry no number when a searcher proposes the trials (``bd376b14``), and Ray copies this
    object, so a number is claimed on disk: the first ``numbers/NNNN`` that ``mkdir`` can create (atomic). The
    directory name is kept in Ray's experiment state, so a restored trial finds its run directory again, and a
    restored study's new trials go on after the old ones.
    """

    def __init__(self, ray_dir: Path) -> None:
        self.numbers = ray_dir / "numbers"

    def __call__(self, trial) -> str:
        self.numbers.mkdir(parents=True, exist_ok=True)
        for number in itertools.count(len(list(self.numbers.iterdir()))):
            with contextlib.suppress(FileExistsError):
                (self.numbers / f"{number:04d}").mkdir()
                return trial_run_name(number)
        raise AssertionError("unreachable")


def _train_one(config: dict[str, Any], *, space: SearchSpace, out: str, cwd: str) -> None:
    """Ray's function trainable: train one trial in ``out/trial_NNNN``, reporting each evaluation to Ray."""
    from ray import tune

    if os.path.isdir(cwd):  # Ray starts trials in their own directory: relative paths of the space mean the user's
        os.chdir(cwd)
    number = trial_number(Path(tune.get_context().get_trial_dir()).name)
    metric = space_metric(space)

    def report(value: float, evaluation: int) -> None:
        tune.report({metric: value, TIME_ATTR: evaluation})  # ASHA may stop the trial here

    train_trial(space, _plain(config), number, out, report, resume=True)


def _plain(config: dict[str, Any]) -> dict[str, Any]:
    """Ray samples integers as numpy scalars: plain Python values, for the config and its YAML."""
    return {k: v.item() if hasattr(v, "item") else v for k, v in config.items()}


# ------------------------------------------------------------------------------------------- the study
@contextlib.contextmanager
def ray_session(settings: RaySettings) -> Iterator[None]:
    """Connect to the cluster at ``settings.address``, or start a small local Ray (no dashboard, a temporary
    directory under /tmp, removed afterwards); shut down at the end. An already running Ray is reused."""
    import ray

    if ray.is_initialized():
        yield
        return
    temp = None
    if settings.address:
        ray.init(address=settings.address, logging_level="warning")
    else:
        # a short path: Ray's sockets live in it, and a socket's path may not exceed 107 bytes
        temp = tempfile.mkdtemp(prefix="paperzoo-ray-", dir="/tmp" if os.path.isdir("/tmp") else None)
        ray.init(num_cpus=max(1, math.ceil(settings.max_concurrent * settings.cpus_per_trial)),
                 num_gpus=math.ceil(settings.max_concurrent * settings.gpus_per_trial),
                 include_dashboard=False, logging_level="warning", _temp_dir=temp)
    try:
        yield
    finally:
        ray.shutdown()
        if temp:
            shutil.rmtree(temp, ignore_errors=True)


def _searcher(settings: RaySettings, seed: int | None):
    """Optuna's TPE inside Ray, or Ray's own random / grid variants; both keep ``max_concurrent`` trials running."""
    if settings.search == "optuna":
        import optuna
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # not a line per trial: the callback prints one
        tpe = optuna.samplers.TPESampler(seed=seed, n_startup_trials=settings.n_startup_trials)
        return ConcurrencyLimiter(OptunaSearch(sampler=tpe), max_concurrent=settings.max_concurrent)
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return BasicVariantGenerator(random_state=seed, max_concurrent=settings.max_concurrent)


def _progress(metric: str, out: Path):
    """A Ray callback that prints one line per finished trial (Ray's own tables are turned off)."""
    from ray import tune

    class OneLinePerTrial(tune.Callback):
        def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
            r, number = trial.last_result or {}, trial_number(Path(trial.path).name)
            how = "finished" if _run_status(out / trial_run_name(number)) == "done" else "stopped early"
            value = f"{metric} {r[metric]:.4f}" if metric in r else "nothing reported"
            print(f"trial {number}: {how} after {r.get(TIME_ATTR, 0)} "
                  f"evaluation(s), {value}", flush=True)

        def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
            print(f"trial {trial_number(Path(trial.path).name)}: error (see {trial.path}/error.txt)", flush=True)

    return OneLinePerTrial()


def _check_same_study(space: SearchSpace, settings: RaySettings, out: Path) -> None:
    """A study directory holds one search: its recipe is kept in ``ray_study.yaml``; another one is refused."""
    recipe = yaml.safe_dump({"base": space.base, "fixed": space.fixed, "set": space.overrides,
                             "params": sorted(s.key for s in space.params), "search": settings.search})
    saved = out / "ray_study.yaml"
    if saved.is_file() and saved.read_text() != recipe:
        raise ValueError(f"{out} holds a Ray study of another base recipe, --set, parameters or --search "
                         f"({' '.join(saved.read_text().split())}); give another --study to start a new one")
    saved.write_text(recipe)


def _scheduler(space: SearchSpace, settings: RaySettings):
    """ASHA with its rungs at ``grace_period x rf^k`` evaluations, all before the last evaluation of the longest
    trials: stopping a trial at its last evaluation saves nothing and loses its final weights. Trials of one
    evaluation have nothing to stop early: they run first in, first out."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    last = max_evaluations(space)
    if last <= settings.grace_period:
        return FIFOScheduler()
    return ASHAScheduler(time_attr=TIME_ATTR, max_t=last - 1, grace_period=settings.grace_period,
                         reduction_factor=settings.reduction_factor,
                         stop_last_trials=False)  # past max_t a trial runs on to its end


def _tuner(space: SearchSpace, out: Path, settings: RaySettings, *, n_trials: int | None, timeout: float | None,
           seed: int | None):
    """Restore the study's Ray experiment if there is one, else set up a new one."""
    from ray import tune

    trainable = tune.with_resources(partial(_train_one, space=space, out=str(out), cwd=os.getcwd()),
                                    {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial})
    if tune.Tuner.can_restore(str(out / "ray")):
        print(f"resuming the Ray study in {out / 'ray'}", flush=True)
        return tune.Tuner.restore(str(out / "ray"), trainable, resume_errored=True)
    grid = settings.search == "grid"
    config = tune.TuneConfig(metric=space_metric(space), mode=space_direction(space)[:3],  # "max" / "min"
                             search_alg=_searcher(settings, seed), scheduler=_scheduler(space, settings),
                             num_samples=1 if grid else (n_trials or -1),  # -1: until the time budget
                             time_budget_s=timeout,
                             trial_dirname_creator=TrialNumbers(out / "ray"))
    run = tune.RunConfig(name="ray", storage_path=str(out), verbose=0, callbacks=[_progress(space_metric(space), out)])
    return tune.Tuner(trainable, param_space=ray_param_space(space, settings.search), tune_config=config,
                      run_config=run)


def run_ray_study(space: SearchSpace, out: str | os.PathLike, settings: RaySettings, *, n_trials: int | None = None,
                  timeout: float | None = None, seed: int | None = None) -> list[TrialRow]:
    """Run (or resume) the study in the study directory ``out`` and return its trials, by number. ``n_trials``:
    trials of the whole study (a grid search runs its whole grid); ``timeout``: seconds for the study."""
    if settings.search == "grid" and n_trials is not None:
        raise ValueError("--search grid runs every combination of the grid; leave out --n-trials")
    out = Path(out).resolve()  # trials run in other processes, maybe on other machines
    _check_same_study(space, settings, out)
    with ray_session(settings), _quiet_ray_output():
        results = _tuner(space, out, settings, n_trials=n_trials, timeout=timeout, seed=seed).fit()
    return sorted((_row(r, space, out) for r in results), key=lambda r: r.number)


@contextlib.contextmanager
def _quiet_ray_output() -> Iterator[None]:
    """Ray's legacy console output, which ``verbose=0`` silences (the newer one prints its header and a
    temporary path at any verbosity); the callback of :func:`_progress` prints a line per trial instead."""
    before = os.environ.get("RAY_AIR_NEW_OUTPUT")
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    try:
        yield
    finally:
        if before is None:
            del os.environ["RAY_AIR_NEW_OUTPUT"]
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = before


def _row(result, space: SearchSpace, out: Path) -> TrialRow:
    """One trial as a :class:`TrialRow`: COMPLETE when its run finished, FAIL on an error, WAITING if it never
    started training (the time budget ran out first), PRUNED otherwise (stopped early)."""
    metrics = result.metrics or {}
    number = trial_number(Path(result.path).name)
    run_dir = out / trial_run_name(number)
    status = _run_status(run_dir)
    if result.error:
        state = "FAIL"
    elif not run_dir.is_dir():  # the time budget ran out before it started
        state = "WAITING"
    else:
        state = "COMPLETE" if status == "done" else "PRUNED"
    value = metrics.get(space_metric(space))
    config = _plain(result.config or _saved_params(Path(result.path)))
    params = {s.key: config[s.key] for s in space.params if s.key in config}
    return TrialRow(number, state, None if value is None else float(value), metrics.get("time_total_s"), params,
                    str(run_dir) if run_dir.is_dir() else None)


def _saved_params(ray_trial_dir: Path) -> dict[str, Any]:
    """The config Ray wrote when the trial started (its result has none if it stopped before reporting)."""
    with contextlib.suppress(OSError, ValueError):
        return json.loads((ray_trial_dir / "params.json").read_text())
    return {}


def _run_status(run_dir: Path) -> str | None:
    with contextlib.suppress(OSError, ValueError):
        return json.loads((run_dir / "status.json").read_text()).get("status")
    return None

