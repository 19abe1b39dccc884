"""The training loop: :func:`fit`, one loop for every :class:`~paperzoo.train.task.Task`.

The loop knows nothing about images or text: a task supplies the model, the batches, the loss of a batch and
an evaluation. It reads top to bottom: set up (devices, determinism, the run directory) -> build (task, model,
optimizer, schedule, grad scaler, EMA, logs) -> resume -> train, whose body is four paragraphs (micro-batches,
the optimizer step, hooks after each step, hooks after each epoch) -> finish (final weights, curves, status).
What the loop changes is one small dataclass, :class:`LoopState`; what it works with is another,
:class:`RunContext`; the functions below take those two.

Exact resumption: everything random is either re-derived from (seed, epoch, batch) (data order and
augmentation, inside the task) or saved in the checkpoint (the RNG states of :mod:`.rng`, optimizer, schedule,
scaler, EMA, loader position), and checkpoints are taken at optimizer-step boundaries. So a run killed at any
moment and resumed from its last checkpoint replays the lost steps exactly: on CPU the final weights are bitwise
identical to an uninterrupted run (tests/train/test_checkpoint_resume.py).

Time budget: with ``train.time_budget_s`` (and no ``max_steps``) a short throughput probe on a copy of the model
sets ``epochs`` / ``max_steps`` so that the whole schedule fits in the budget (:mod:`.budget`). Whatever the probe
said, training stops once the budget is spent (a collective under DDP), with the final evaluation and weights as
at the end of any run. The budget counts training time as the loop does (``train_time_s``): evaluation and
checkpoints are not in it.

Faults: Ctrl-C or SIGTERM saves a resumable checkpoint and ends the run "interrupted" (a second signal
interrupts at once); a NaN/inf loss ends it "failed" with its last good checkpoint; a checkpoint that cannot be
written (a full disk) raises :class:`RunFailedError` and keeps the previous one; a resume skips a newest
checkpoint that is truncated or corrupt, saying so. Two runs cannot claim one run directory.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from . import checkpoint as ckpt
from . import distributed as D
from .allocator import retain_freed_memory
from .budget import fit_schedule_to_budget, schedule_length
from .config import config_to_dict, save_config
from .logger import Progress, RunLogger, write_status
from .optim import build_optimizer_and_schedule
from .rng import gather_rng_states, seed_everything, set_rng_state, this_rank
from .task import Task, get_task

__all__ = ["LoopState", "NonFiniteLossError", "RunContext", "RunFailedError", "TrainResult", "fit", "resume_hint"]


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run is marked failed and its last good checkpoint kept."""


class RunFailedError(OSError):
    """A checkpoint could not be written (e.g. a full disk): the run is marked failed, the previous checkpoint
    kept. Raised without its chain, so that the command line shows one line."""


@dataclass
class TrainResult:
    run_dir: Path
    status: str  # "done", "interrupted" or "failed"
    metrics: dict[str, float] = field(default_factory=dict)  # final evaluation
    best: dict[str, Any] = field(default_factory=dict)  # {"metric", "value", "step"}
    step: int = 0
    steps_per_epoch: int = 0
    train_time_s: float = 0.0
    resume_hint: str = ""  # the command that continues the run, e.g. "paperzoo lm train --resume runs/x"


@dataclass
class LoopState:
    """What the loop changes. The first six fields go into every resumable checkpoint."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    in_epoch: bool = False  # epoch `epoch` has begun: the loader's position is part of the task's state
    train_time: float = 0.0  # seconds spent training, not evaluating or saving
    best: dict[str, Any] = field(default_factory=dict)  # {"metric", "value", "step"} of the best evaluation
    sums: dict[str, Tensor] = field(default_factory=dict)  # metric sums since the last log record
    # this process only
    metrics: dict[str, float] = field(default_factory=dict)  # the last evaluation
    nonfinite: Tensor = field(default_factory=lambda: torch.zeros((), dtype=torch.bool))  # a NaN/inf loss seen
    items_before: float = 0.0  # items in `sums` counted before a resume: not timed by this process
    t_step: float = 0.0  # time.perf_counter() at the start of the current step / log interval
    t_log: float = 0.0


@dataclass
class RunContext:
    """What the loop works with, built once by :func:`_build`."""

    cfg: Any  # the task's config: has the model, optim, sched, train and run sections
    task: Task
    dist: D.DistInfo
    run_dir: Path
    model: nn.Module  # the bare model: saved, evaluated, averaged by the EMA
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    ema: Any  # ModelEma or None
    autocast: torch.autocast
    steps_per_epoch: int
    total_steps: int
    logger: RunLogger
    progress: Progress
    train_model: nn.Module | None = None  # what the forward pass runs: the model under DDP / torch.compile


def resume_hint(task: Task, run_dir: str | os.PathLike) -> str:
    """The command that resumes ``run_dir``, e.g. ``paperzoo translate train --resume runs/x``."""
    return f"{task.resume_command} --resume {run_dir}"


# ---------------------------------------------------------------------------------------------- the loop
def fit(cfg: Any, task: Task | None = None, *, resume: str | os.PathLike | None = None) -> TrainResult:
    """Train according to ``cfg`` (or resume the run directory ``resume``) and return the outcome.

    Args:
        cfg: a task's config (see :func:`paperzoo.train.api.resolve_config`): its ``task`` field names the task,
            and it has the ``model``, ``optim``, ``sched``, ``train`` and ``run`` sections of
            :class:`~paperzoo.train.config.Config`.
        task: a task object to train instead of the one ``cfg.task`` names.
        resume: a run directory to continue from its newest intact checkpoint.
    """
    dist = D.setup(cfg.train.device)
    run = None
    try:
        with _process_settings(cfg.train, dist.device):
            run_dir, last = _locate_run(cfg, dist, resume)
            run = _build_or_release(cfg, task, dist, run_dir, last, resumed=resume is not None)
            return _run(run, last)
    finally:
        del run  # the DDP wrapper's reducer holds the process group: it must go before the group does
        D.cleanup(dist)


def _run(run: RunContext, last: Path | None) -> TrainResult:
    """Resume (or start), train, finish; a crash leaves status.json "failed" with the command that resumes."""
    s = LoopState(best={"metric": run.task.primary_metric, "value": None, "step": None},
                  nonfinite=torch.zeros((), dtype=torch.bool, device=run.dist.device))
    try:
        _start(run, s, last)
        with _stop_signals() as stop:
            status, error = _train(run, s, stop), None
    except NonFiniteLossError as e:
        status, error = "failed", str(e)
    except BaseException as e:  # a crash, a full disk or a second Ctrl-C: record it, then let it propagate
        _mark_failed(run, s, e)
        raise
    finally:
        run.progress.close()
        run.logger.close()
    return _finish(run, s, status, error)


def _train(run: RunContext, s: LoopState, stop: dict[str, bool]) -> str:
    """Optimizer steps until the last one ("done") or a stop signal ("interrupted"); a NaN/inf loss raises."""
    accum = run.cfg.train.grad_accum
    s.t_log = time.perf_counter()
    while s.step < run.total_steps:
        batches = _start_epoch(run, s)
        for _ in range(_steps_left_in_epoch(run, s)):
            # -- micro-batches: forward under autocast, scaled backward; DDP syncs on the last one
            for i, batch in enumerate(itertools.islice(batches, accum)):
                _micro_batch(run, s, batch, sync=i == accum - 1)
            # -- one optimizer step: unscale, clip, step, schedule, EMA
            _optimizer_step(run, s)
            # -- hooks after each optimizer step: budget, NaN guard, log, checkpoint, stop signal
            if _after_step(run, s, stop):
                return "interrupted"
            if s.step == run.total_steps:  # the last step, which a spent time budget can bring forward
                break
        del batches  # ends the epoch's pass (a streaming loader's workers) before evaluating
        # -- hooks after each epoch: evaluate, keep the best, checkpoint, stop signal
        _after_epoch(run, s)
        if _should_stop(stop, run.dist):
            return "interrupted"
    return "done"


def _start(run: RunContext, s: LoopState, last: Path | None) -> None:
    """Resume from ``last`` (or seed this rank's random streams), then wrap the model for training."""
    if last is not None:
        _resume(run, s, last)
    else:
        torch.manual_seed(run.cfg.train.seed + run.dist.rank)  # per-rank dropout / drop-path masks
        budget = run.cfg.train.time_budget_s
        run.progress.message(f"run directory: {run.run_dir} ({run.total_steps} steps, {run.steps_per_epoch} per "
                             f"epoch{f', a {budget:g} s budget' if budget else ''})")
    run.train_model = D.wrap_model(run.model, run.dist, run.cfg.train.sync_bn)  # after the weights are loaded
    if run.cfg.train.compile:
        run.train_model = torch.compile(run.train_model)


def _start_epoch(run: RunContext, s: LoopState) -> Iterator[Any]:
    loader = run.task.train_loader
    if not s.in_epoch:  # else the loader continues where the checkpoint left it
        loader.set_epoch(s.epoch)
    s.in_epoch = True
    run.model.train()
    s.t_step = time.perf_counter()
    return iter(loader)


def _steps_left_in_epoch(run: RunContext, s: LoopState) -> int:
    # every epoch has steps_per_epoch steps (a partial accumulation group at its end is dropped)
    return min(run.steps_per_epoch - s.step % run.steps_per_epoch, run.total_steps - s.step)


def _micro_batch(run: RunContext, s: LoopState, batch: Any, *, sync: bool) -> None:
    """Forward and scaled backward of one micro-batch; its loss and statistics join the log sums."""
    no_sync = run.train_model.no_sync() if run.dist.enabled and not sync else contextlib.nullcontext()
    with no_sync:
        with run.autocast:
            loss, stats = run.task.train_step(run.train_model, batch)
        run.scaler.scale(loss / run.cfg.train.grad_accum).backward()
    loss = loss.detach()
    s.nonfinite |= ~torch.isfinite(loss)
    for k, v in {"loss": loss.float(), "micro_batches": 1, **{k: v.detach() for k, v in stats.items()}}.items():
        s.sums[k] = s.sums.get(k, 0) + v


def _optimizer_step(run: RunContext, s: LoopState) -> None:
    clip = run.cfg.train.grad_clip
    if clip:
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), clip)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    run.scheduler.step()
    if run.ema is not None:
        run.ema.update(run.model)
    s.step += 1
    ckpt.fault_point("step")
    now = time.perf_counter()
    s.train_time += now - s.t_step
    s.t_step = now


def _after_step(run: RunContext, s: LoopState, stop: dict[str, bool]) -> bool:
    """Time budget, NaN guard, log record, periodic checkpoint and stop signal; True if the run stops here
    (interrupted). A spent budget makes this step the last one (``run.total_steps``)."""
    t = run.cfg.train
    if s.step < run.total_steps and _budget_spent(run, s):
        run.total_steps = run.progress.total = s.step  # the last step: the epoch's hooks evaluate and save
        run.progress.message(f"time budget of {t.time_budget_s:g} s spent at step {s.step}: stopping")
    _check_finite(run, s)
    end_of_epoch = s.step % run.steps_per_epoch == 0 or s.step == run.total_steps
    if s.step % t.log_every == 0 or end_of_epoch:
        _log_train(run, s)
    if end_of_epoch:  # the epoch's hooks checkpoint and look for a stop signal
        return False
    if t.checkpoint_every and s.step % t.checkpoint_every == 0:
        _save(run, s, "step")
        s.t_step = time.perf_counter()  # train_time counts training, not saving
    if _should_stop(stop, run.dist):
        _save(run, s, "step")
        return True
    return False


def _after_epoch(run: RunContext, s: LoopState) -> None:
    """Evaluate (every ``eval_every`` epochs and at the end), keep the best weights, write a checkpoint."""
    s.epoch, s.in_epoch = s.epoch + 1, False
    if s.epoch % run.cfg.train.eval_every == 0 or s.step == run.total_steps:
        s.metrics = _evaluate(run, s)
        run.logger.log({"epoch": s.epoch, "step": s.step, **s.metrics, "train_time_s": s.train_time})
        run.progress.message(f"epoch {s.epoch}: " + ", ".join(f"{k} {v:.4f}" for k, v in s.metrics.items()))
    _save(run, s, "step", s.metrics)
    s.t_log = time.perf_counter()  # throughput measures training only, not evaluation or saving


# ----------------------------------------------------------------------------------------------- hooks
def _check_finite(run: RunContext, s: LoopState) -> None:
    """Raise :class:`NonFiniteLossError` if a loss since the last check was NaN/inf.

    Checked after every step on CPU (reading the flag costs no sync), every ``log_every`` steps on GPU. Under
    DDP this is a collective: every rank stops together, or the others would hang.
    """
    t = run.cfg.train
    every = 1 if run.dist.device.type == "cpu" else t.log_every
    if s.step % every and s.step % t.log_every and s.step != run.total_steps:
        return
    if D.all_reduce_sum(s.nonfinite.float(), run.dist).item() > 0:
        when = f"step {s.step}" + (f" or in the {every - 1} steps before it" if every > 1 else "")
        raise NonFiniteLossError(f"the training loss is NaN/inf at {when} (epoch {s.epoch + 1}); lower optim.lr, "
                                 "set train.grad_clip or use fp32. The last good checkpoint is kept.")


def _budget_spent(run: RunContext, s: LoopState) -> bool:
    """``train.time_budget_s`` is used up (under DDP on any rank; asked every ``log_every`` steps there, since
    asking is a collective)."""
    budget = run.cfg.train.time_budget_s
    if not budget:
        return False
    if not run.dist.enabled:
        return s.train_time >= budget
    if s.step % run.cfg.train.log_every:
        return False
    flag = torch.tensor([1.0 if s.train_time >= budget else 0.0], device=run.dist.device)
    return bool(D.all_reduce_sum(flag, run.dist).item() > 0)


def _log_train(run: RunContext, s: LoopState) -> None:
    """One training record: averages since the last one, learning rate, throughput, ETA."""
    record = _train_record(s.sums, s.epoch, s.step, run.optimizer, run.dist)
    rate_key = f"{run.task.throughput_unit}_per_s"
    items = record.pop("items", 0) - s.items_before
    record[rate_key] = items / max(time.perf_counter() - s.t_log, 1e-9)
    record["train_time_s"] = s.train_time  # so curves can put training metrics against time
    eta = (run.total_steps - s.step) * s.train_time / max(s.step, 1)
    run.logger.log(record)
    shown = {k: record[k] for k in ("train_loss", "train_acc", "lr", rate_key) if k in record}
    run.progress.update(s.step, s.epoch, shown, eta)
    s.sums, s.items_before, s.t_log = {}, 0.0, time.perf_counter()


def _evaluate(run: RunContext, s: LoopState) -> dict[str, float]:
    """Evaluate the model (and its EMA); save the weights as "best" if the primary metric improved."""
    metrics = run.task.evaluate(run.model)
    if run.ema is not None:
        metrics.update({f"{k}_ema": v for k, v in run.task.evaluate(run.ema.module).items()})
    value, best = metrics.get(run.task.primary_metric), s.best["value"]
    if value is not None and (best is None or (value > best if run.task.higher_is_better else value < best)):
        s.best.update(value=value, step=s.step)
        _save(run, s, "best", metrics)
    return metrics


def _save(run: RunContext, s: LoopState, kind: str, metrics: dict[str, float] | None = None) -> None:
    """Write a resumable checkpoint (``kind`` "step") or weights only ("best", "final"); rank 0 writes.

    Every rank calls this (the RNG states are gathered). A write that fails (a full disk) raises
    :class:`RunFailedError`; the checkpoint is renamed into place only when whole, so the previous one stays.
    """
    rng = gather_rng_states(run.dist) if kind == "step" else None
    if not run.dist.is_main:
        return
    path = run.run_dir / "checkpoints" / f"step_{s.step:08d}" if kind == "step" else run.run_dir / kind
    meta = {**run.task.metadata(), "epoch": s.epoch, "step": s.step, "metrics": metrics or {},
            "config": config_to_dict(run.cfg), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    ema = run.ema.module.state_dict() if run.ema is not None else None
    training_state = _training_state(run, s, rng) if kind == "step" else None
    try:
        ckpt.save_checkpoint(path, run.model.state_dict(), meta, ema_state=ema, training_state=training_state)
        if kind == "step":
            ckpt.prune_checkpoints(run.run_dir / "checkpoints", run.cfg.train.keep_last)
    except OSError as e:
        with contextlib.suppress(OSError):
            ckpt.clean_temporary(path.parent)  # give back the space the partial write took
        raise RunFailedError(f"could not write checkpoint {path}: {e.strerror or e}; the previous checkpoint "
                             "is kept") from None
    if kind == "step":
        ckpt.fault_point("after_checkpoint")


def _training_state(run: RunContext, s: LoopState, rng: Any) -> dict[str, Any]:
    """``state.pt``: the loop state and everything else a resumed run needs to continue exactly."""
    return {
        "epoch": s.epoch, "step": s.step, "in_epoch": s.in_epoch, "best": s.best, "train_time": s.train_time,
        "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict(), "ema": run.ema.state_dict() if run.ema is not None else None,
        "task": run.task.state_dict(), "rng": rng,
        # one process: the pending log sums, so the first record after a resume equals the original's (under
        # DDP each rank has its own; that record then covers the resumed steps only)
        "log_sums": {} if run.dist.enabled else {k: torch.as_tensor(v).cpu() for k, v in s.sums.items()},
    }


def _should_stop(stop: dict[str, bool], dist: D.DistInfo) -> bool:
    """All ranks stop together if any rank received a stop signal."""
    if not dist.enabled:
        return stop["stop"]
    flag = torch.tensor([1.0 if stop["stop"] else 0.0], device=dist.device)
    return bool(D.all_reduce_sum(flag, dist).item() > 0)


def _train_record(sums: dict[str, Tensor], epoch: int, step: int, optimizer: torch.optim.Optimizer,
                  dist: D.DistInfo) -> dict[str, Any]:
    """Average the metric sums since the last record over micro-batches / items and all ranks."""
    keys = sorted(sums)
    vec = torch.stack([torch.as_tensor(sums[k], dtype=torch.float64, device=dist.device) for k in keys])
    total = dict(zip(keys, D.all_reduce_sum(vec, dist).tolist()))
    record: dict[str, Any] = {"epoch": epoch, "step": step, "lr": optimizer.param_groups[0]["lr"]}
    count = total.pop("count", None)
    n_micro = total.pop("micro_batches")  # summed over ranks, like the losses
    record["train_loss"] = total.pop("loss") / n_micro
    record["items"] = count or 0
    for k, v in total.items():  # e.g. "correct" -> train_acc
        name = "train_acc" if k == "correct" else f"train_{k}"
        record[name] = v / count if count else v
    if not all(math.isfinite(v) for v in record.values() if isinstance(v, float)):
        record["nonfinite"] = True
    return record


# ------------------------------------------------------------------------------------- set up and build
@contextlib.contextmanager
def _process_settings(t: Any, device: torch.device) -> Iterator[None]:
    """Threads, determinism and the allocator for the run (``t``: the train section); the caller's threads
    and determinism are restored afterwards."""
    if t.precision == "fp16" and device.type != "cuda":
        raise ValueError("train.precision=fp16 needs a GPU (GradScaler); on CPU use bf16 or fp32")
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    if t.threads:
        torch.set_num_threads(t.threads)
    if t.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # required by cuBLAS for determinism
        torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = t.deterministic
    torch.backends.cudnn.benchmark = device.type == "cuda" and not t.deterministic
    if t.retain_memory and device.type == "cpu":
        retain_freed_memory()  # activations reused from the heap, not page-faulted in every step
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _locate_run(cfg: Any, dist: D.DistInfo, resume: str | os.PathLike | None) -> tuple[Path, Path | None]:
    """The run directory and the checkpoint to resume from (None: start from scratch).

    A new run claims ``run.out_dir/run.name`` atomically (a generated name gets ``-2``, ``-3``, ... if taken);
    a resumed one continues from its newest intact checkpoint. Rank 0 decides and tells the others; an error
    is raised on every rank, so that none waits for the others forever.
    """
    found: tuple[str, str | None, str | None] | None = None
    if dist.is_main:
        try:
            run_dir, last = _claim_run_dir(cfg) if resume is None else _resume_point(Path(resume))
            found = (str(run_dir), None if last is None else str(last), None)
        except (ValueError, OSError) as e:
            if not dist.enabled:
                raise
            found = ("", None, f"{type(e).__name__}: {e}")
    run_dir, last, error = D.broadcast_object(found, dist)
    if error:
        raise ValueError(error)
    return Path(run_dir), None if last is None else Path(last)


def _claim_run_dir(cfg: Any) -> tuple[Path, None]:
    """Claim the new run's directory and write its config at once: a run killed while it builds can then be
    resumed (from step 0) rather than leave a directory that neither starts nor resumes."""
    dataset = getattr(getattr(cfg, "data", None), "dataset", "data")
    name = cfg.run.name or f"{cfg.model.name}-{dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    # a generated name may be taken by a run started in the same second: that one gets name-2
    run_dir = ckpt.claim_run_dir(Path(cfg.run.out_dir) / name, unique=cfg.run.name is None)
    save_config(cfg, run_dir / "config.yaml")
    return run_dir, None


def _resume_point(run_dir: Path) -> tuple[Path, Path | None]:
    """The newest intact checkpoint of ``run_dir``; newer ones that fail verification are skipped, with a
    one-line warning (none at all: the run starts again from step 0)."""
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"cannot resume: {run_dir} is not a run directory (no config.yaml)")
    last, skipped = ckpt.latest_intact_checkpoint(run_dir / "checkpoints")
    if skipped:
        then = f"resuming from {last.name}" if last is not None else "no intact checkpoint left: starting at step 0"
        reasons = "; ".join(f"{p.name} ({reason})" for p, reason in skipped)
        print(f"paperzoo: warning: skipped corrupt checkpoint(s) {reasons}; {then}", file=sys.stderr)
    return run_dir, last


def _build_or_release(cfg: Any, task: Task | None, dist: D.DistInfo, run_dir: Path, last: Path | None, *,
                      resumed: bool) -> RunContext:
    """:func:`_build`; if the data or the model of a new run fails to build, its directory is given back (it
    holds only its config), so that no empty run is left behind."""
    try:
        return _build(cfg, task, dist, run_dir, last, resumed=resumed)
    except BaseException:
        if not resumed and dist.is_main:
            (run_dir / "config.yaml").unlink(missing_ok=True)
            ckpt.release_run_dir(run_dir)
        raise


def _build(cfg: Any, task: Task | None, dist: D.DistInfo, run_dir: Path, last: Path | None, *,
           resumed: bool) -> RunContext:
    """Task, model, optimizer, schedule, grad scaler, EMA; then the run's config, status and logs on disk."""
    seed_everything(cfg.train.seed)  # same seed on every rank: identical initial weights
    resume_meta = ckpt.read_meta(last / "model.safetensors") if last is not None else None
    if task is None:
        task = get_task(cfg.task).from_config(cfg, dist, resume_meta=resume_meta)
    model = task.build_model().to(dist.device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    autocast = torch.autocast(dist.device.type, dtype=torch.bfloat16 if cfg.train.precision == "bf16"
                              else torch.float16, enabled=cfg.train.precision != "fp32")
    probed = bool(cfg.train.time_budget_s and not cfg.train.max_steps)
    if probed:
        cfg = fit_schedule_to_budget(cfg, task, model, dist, autocast)
    steps_per_epoch, total_steps = schedule_length(cfg.train, len(task.train_loader))
    optimizer, scheduler = build_optimizer_and_schedule(cfg, model, total_steps, steps_per_epoch)
    ema = None
    if cfg.train.ema:
        from .ema import ModelEma

        ema = ModelEma(model, decay=cfg.train.ema_decay)
    if dist.is_main:
        ckpt.clean_temporary(run_dir)
        ckpt.clean_temporary(run_dir / "checkpoints")
        # again, now that it builds: with the overrides of a resume, a probed length, or the model arguments a
        # pretrained checkpoint's converter set (e.g. its BatchNorm eps), which a resume must rebuild
        save_config(cfg, run_dir / "config.yaml")
        write_status(run_dir, "running", pid=os.getpid())
    resume_step = resume_meta["step"] if resume_meta is not None else 0  # later records are redone: dropped
    return RunContext(
        cfg=cfg, task=task, dist=dist, run_dir=run_dir, model=model, optimizer=optimizer, scheduler=scheduler,
        scaler=torch.amp.GradScaler("cuda", enabled=cfg.train.precision == "fp16"), ema=ema,
        autocast=autocast, steps_per_epoch=steps_per_epoch, total_steps=total_steps,
        logger=RunLogger(run_dir, enabled=dist.is_main, tensorboard=cfg.run.tensorboard,
                         resume_step=resume_step if resumed else None),
        progress=Progress(total_steps, cfg.run.progress if dist.is_main else "off"))


def _resume(run: RunContext, s: LoopState, last: Path) -> None:
    """Load checkpoint ``last`` into the model, optimizer, schedule, scaler, EMA, task, loop state and RNG."""
    from paperzoo.weights import load_state_dict_checked

    state = ckpt.load_training_state(last)
    load_state_dict_checked(run.model, ckpt.read_weights(last / "model.safetensors"), what=str(last))
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.scaler.load_state_dict(state["scaler"])
    if run.ema is not None:
        run.ema.load_state_dict(state["ema"])
    run.task.load_state_dict(state["task"])
    s.epoch, s.step, s.in_epoch = state["epoch"], state["step"], state["in_epoch"]
    s.best, s.train_time = dict(state["best"]), state["train_time"]
    # a log interval cut by the interruption goes on; its items were counted before, not timed here
    s.sums = {k: torch.as_tensor(v).to(run.dist.device) for k, v in state.get("log_sums", {}).items()}
    s.items_before = float(s.sums["count"]) if "count" in s.sums else 0.0
    set_rng_state(this_rank(state["rng"], run.dist))
    run.progress.message(f"resumed {run.run_dir} from {last.name} (epoch {s.epoch + 1}, step {s.step}/"
                         f"{run.total_steps})")


def _finish(run: RunContext, s: LoopState, status: str, error: str | None) -> TrainResult:
    """Final weights (a finished run), learning curves and status.json."""
    if status == "done":
        if not s.metrics:  # e.g. resumed a finished run
            s.metrics = run.task.evaluate(run.model)
        _save(run, s, "final", s.metrics)
    if run.dist.is_main:
        if run.cfg.run.plots:
            from paperzoo.viz.curves import plot_run_curves  # matplotlib loads only when plotting

            plot_run_curves(run.run_dir, run.run_dir / "curves.png")
        info: dict[str, Any] = {"step": s.step, "total_steps": run.total_steps, "metrics": s.metrics,
                                "best": s.best}
        if error:
            info["error"] = error
        if status == "interrupted":
            info["resume"] = resume_hint(run.task, run.run_dir)
        write_status(run.run_dir, status, **info)
    D.barrier(run.dist)
    if error:
        run.progress.message(f"run failed: {error}")
    return TrainResult(run_dir=run.run_dir, status=status, metrics=s.metrics, best=s.best, step=s.step,
                       steps_per_epoch=run.steps_per_epoch, train_time_s=s.train_time,
                       resume_hint=resume_hint(run.task, run.run_dir))


def _mark_failed(run: RunContext, s: LoopState, e: BaseException) -> None:
    """status.json says "failed" (rank 0). If even that write fails (a full disk), the error in flight is
    what the user sees, not a second one."""
    if run.dist.is_main:
        with contextlib.suppress(OSError):
            write_status(run.run_dir, "failed", step=s.step, error=f"{type(e).__name__}: {e}",
                         resume=resume_hint(run.task, run.run_dir))


@contextlib.contextmanager
def _stop_signals() -> Iterator[dict[str, bool]]:
    """Turn the first Ctrl-C (SIGINT) or SIGTERM (what cluster schedulers and ``kill`` send) into a flag that
    the loop checks after each step; the previous handlers are back at once, so a second signal interrupts."""
    stop = {"stop": False}
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.getsignal(sig) for sig in signals}

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)

    def handler(signum: int, frame: Any) -> None:
        stop["stop"] = True
        restore()

    try:
        for sig in signals:
            signal.signal(sig, handler)
        installed = True
    except ValueError:  # not the main thread: signals behave as usual
        installed = False
    try:
        yield stop
    finally:
        if installed:
            restore()
