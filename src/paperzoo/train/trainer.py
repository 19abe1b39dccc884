"""The training loop: one readable function, :func:`fit`, for every task.

The loop knows nothing about images or text. A :class:`Task` supplies the model, the training batches, the
loss of a batch and an evaluation; image classification (:mod:`paperzoo.train.classification`) is the first
task, and the sequence models plug translation and language modelling into the same loop.

Sections of :func:`fit`, top to bottom: set up (devices, DDP, seeds, run directory) -> build (task, model,
optimizer, schedule, grad scaler, EMA) -> resume -> train (micro-steps with autocast and accumulation,
clip, step, EMA, schedule) -> hooks after each optimizer step (NaN guard, log, checkpoint, Ctrl-C) -> hooks
after each epoch (evaluate, best, checkpoint) -> finish (final weights, curves, status).

Exact resumption: everything random is either re-derived from (seed, epoch, batch) (data order and
augmentation, inside the task) or saved in the checkpoint (torch/CUDA/Python/NumPy RNG states, optimizer,
schedule, scaler, EMA, loader position), and checkpoints are taken at optimizer-step boundaries. So a run
killed at any moment and resumed from its last checkpoint replays the lost steps exactly: on CPU the final
weights are bitwise identical to an uninterrupted run (tests/train/test_checkpoint_resume.py).
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from . import checkpoint as ckpt
from . import distributed as D
from .allocator import retain_freed_memory
from .config import Config, config_to_dict, save_config
from .logger import Progress, RunLogger, write_status

__all__ = ["NonFiniteLossError", "Task", "TrainResult", "fit", "prepare_run_dir", "resume_hint",
           "throughput_key"]


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run is marked failed and its last good checkpoint kept."""


class Task(Protocol):
    """What :func:`fit` needs from a task.

    ``train_loader`` yields batches for :meth:`train_step`; it has ``set_epoch(epoch)``, ``__len__`` (micro-
    batches per epoch, this rank) and ``state_dict()`` / ``load_state_dict()`` (position within the epoch).
    """

    primary_metric: str  # key of evaluate()'s dict used to pick the best checkpoint, e.g. "val_acc"
    higher_is_better: bool
    # Optional (read with getattr, defaults in brackets): what ``count`` in train_step's stats counts, logged
    # as "<unit>_per_s" ["img": img_per_s; text tasks say "tok"], and the command that resumes a run of this
    # task, printed in hints and status.json as "<command> --resume RUN" ["paperzoo train"].
    throughput_unit: str
    resume_command: str

    def build_model(self) -> nn.Module: ...

    @property
    def train_loader(self) -> Any: ...

    def train_step(self, model: nn.Module, batch: Any) -> tuple[Tensor, dict[str, Tensor]]:
        """Loss of one micro-batch and metric sums for logging, e.g. ``{"correct": t, "count": n}``."""
        ...

    def evaluate(self, model: nn.Module) -> dict[str, float]: ...

    def metadata(self) -> dict[str, Any]:
        """Saved with every checkpoint: what is needed to use the weights (classes, normalization, ...)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Resumable task state (at least the train loader's position), saved in ``state.pt``."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class TrainResult:
    run_dir: Path
    status: str  # "done", "interrupted" or "failed"
    metrics: dict[str, float] = field(default_factory=dict)  # final evaluation
    best: dict[str, Any] = field(default_factory=dict)  # {"metric", "value", "step"}
    step: int = 0
    train_time_s: float = 0.0
    resume_hint: str = ""  # the command that continues the run, e.g. "paperzoo lm train --resume runs/x"


def throughput_key(task: Any) -> str:
    """The metrics.jsonl field of a task's training throughput: ``img_per_s``, ``tok_per_s``, ..."""
    return f"{getattr(task, 'throughput_unit', 'img')}_per_s"


def resume_hint(task: Any, run_dir: str | os.PathLike) -> str:
    """The command that resumes ``run_dir``, e.g. ``paperzoo translate train --resume runs/x``."""
    return f"{getattr(task, 'resume_command', 'paperzoo train')} --resume {run_dir}"


# ----------------------------------------------------------------------------------------------- setup
def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _configure_determinism(deterministic: bool, device: torch.device) -> None:
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # required by cuBLAS for determinism
        torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = device.type == "cuda" and not deterministic


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
    }


def _set_rng_state(s: dict[str, Any]) -> None:
    torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
    random.setstate(_as_tuple(s["python"]))
    name, keys, *rest = s["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))


def _as_tuple(x: Any) -> Any:
    return tuple(_as_tuple(v) for v in x) if isinstance(x, list | tuple) else x


def prepare_run_dir(cfg: Config, resume: str | os.PathLike | None = None) -> Path:
    """The run directory: ``resume`` if given, else ``run.out_dir/run.name`` (a new one if name is unset)."""
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / "config.yaml").is_file():
            raise FileNotFoundError(f"cannot resume: {run_dir} is not a run directory (no config.yaml)")
        return run_dir
    dataset = getattr(getattr(cfg, "data", None), "dataset", "data")
    name = cfg.run.name or f"{cfg.model.name}-{dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(cfg.run.out_dir) / name
    if (run_dir / "metrics.jsonl").exists() or (run_dir / "checkpoints").exists():
        raise ValueError(f"run directory {run_dir} already holds a run; resume it with --resume {run_dir} "
                         "or choose another run.name")
    return run_dir


@contextlib.contextmanager
def _catch_sigint() -> Iterator[dict[str, bool]]:
    """Turn the first Ctrl-C into a flag the loop checks after each step; a second one interrupts at once."""
    flag = {"stop": False}
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: Any) -> None:
        flag["stop"] = True
        signal.signal(signal.SIGINT, previous)

    try:
        signal.signal(signal.SIGINT, handler)
        installed = True
    except ValueError:  # not the main thread: Ctrl-C behaves as usual
        installed = False
    try:
        yield flag
    finally:
        if installed:
            signal.signal(signal.SIGINT, previous)


# ---------------------------------------------------------------------------------------------- the loop
def fit(cfg: Config, task: Task | None = None, *, resume: str | os.PathLike | None = None) -> TrainResult:
    """Train according to ``cfg`` (or resume the run directory ``resume``) and return the outcome.

    Args:
        cfg: the full configuration (see :mod:`paperzoo.train.config`). Other tasks may pass their own
            dataclass as long as it has the ``model`` (``name``), ``optim``, ``sched``, ``train`` and ``run``
            sections of :class:`~paperzoo.train.config.Config` (e.g. ``paperzoo.text.config.TextConfig``).
        task: defaults to image classification built from ``cfg``.
        resume: a run directory to continue from its newest complete checkpoint.
    """
    # ---- set up: devices, DDP, seeds, run directory
    from .api import build_optimizer_and_schedule

    dist = D.setup(cfg.train.device)
    threads_before, det_before = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    _configure_determinism(cfg.train.deterministic, dist.device)
    if cfg.train.retain_memory and dist.device.type == "cpu":
        retain_freed_memory()  # activations reused from the heap, not page-faulted in every step
    if cfg.train.precision == "fp16" and dist.device.type != "cuda":
        raise ValueError("train.precision=fp16 needs a GPU (GradScaler); on CPU use bf16 or fp32")
    run_dir = Path(D.broadcast_object(str(prepare_run_dir(cfg, resume)) if dist.is_main else None, dist))
    _seed_everything(cfg.train.seed)  # same seed on every rank: identical initial weights

    # ---- build: task, model, optimizer, schedule, scaler, EMA
    if task is None:
        from .classification import ImageClassificationTask

        task = ImageClassificationTask(cfg, dist)
    model = task.build_model().to(dist.device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    loader = task.train_loader
    accum = cfg.train.grad_accum
    steps_per_epoch = len(loader) // accum
    if steps_per_epoch < 1:
        raise ValueError(f"an epoch has {len(loader)} batch(es), fewer than train.grad_accum={accum}; "
                         "lower data.batch_size or grad_accum")
    total_steps = cfg.train.epochs * steps_per_epoch
    if cfg.train.max_steps:
        total_steps = min(total_steps, cfg.train.max_steps)
    optimizer, scheduler = build_optimizer_and_schedule(cfg, model, total_steps, steps_per_epoch)
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.train.precision == "fp16")
    ema = None
    if cfg.train.ema:
        from .ema import ModelEma

        ema = ModelEma(model, decay=cfg.train.ema_decay)
    autocast = torch.autocast(dist.device.type, dtype=torch.bfloat16 if cfg.train.precision == "bf16"
                              else torch.float16, enabled=cfg.train.precision != "fp32")

    # the run directory is created once the data and model are known to build (no empty runs left behind)
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        ckpt.clean_temporary(run_dir)
        ckpt.clean_temporary(run_dir / "checkpoints")
        save_config(cfg, run_dir / "config.yaml")
        write_status(run_dir, "running", pid=os.getpid())

    # ---- resume from the newest complete checkpoint (or start fresh if there is none yet)
    epoch, step, in_epoch, train_time = 0, 0, False, 0.0
    log_sums: dict[str, Tensor] = {}
    best: dict[str, Any] = {"metric": task.primary_metric, "value": None, "step": None}
    last = ckpt.latest_checkpoint(run_dir / "checkpoints") if resume is not None else None
    if last is not None:
        from paperzoo.weights import load_state_dict_checked

        state = ckpt.load_training_state(last)
        load_state_dict_checked(model, ckpt.read_weights(last / "model.safetensors"), what=str(last))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        task.load_state_dict(state["task"])
        epoch, step, in_epoch = state["epoch"], state["step"], state["in_epoch"]
        best, train_time = dict(state["best"]), state["train_time"]
        log_sums = dict(state.get("log_sums", {}))  # a log interval cut by the interruption goes on
        rng = state["rng"]  # one entry per rank of the saving run (a list under DDP)
        if isinstance(rng, list):
            if len(rng) != dist.world_size:
                progress_note = (f"resuming a {len(rng)}-process run with {dist.world_size} process(es): the data "
                                 "shards and random streams differ from the original run")
                print(f"paperzoo: warning: {progress_note}", file=sys.stderr)
            rng = rng[dist.rank % len(rng)]
        _set_rng_state(rng)
    else:
        torch.manual_seed(cfg.train.seed + dist.rank)  # per-rank dropout / drop-path masks
    train_model = D.wrap_model(model, dist, cfg.train.sync_bn)
    if cfg.train.compile:
        train_model = torch.compile(train_model)

    logger = RunLogger(run_dir, enabled=dist.is_main, tensorboard=cfg.run.tensorboard,
                       resume_step=step if resume is not None else None)
    progress = Progress(total_steps, cfg.run.progress if dist.is_main else "off")
    if last is not None:
        progress.message(f"resumed {run_dir} from {last.name} (epoch {epoch + 1}, step {step}/{total_steps})")
    else:
        progress.message(f"run directory: {run_dir} ({total_steps} steps, {steps_per_epoch} per epoch)")

    def save(kind: str, metrics: dict[str, float] | None = None) -> None:
        """Hook: write a resumable checkpoint ("step") or weights only ("best", "final"); rank 0 only."""
        rng = _rng_state()
        if dist.enabled:  # every rank's RNG state, so that each resumes its own dropout stream
            gathered: list[Any] = [None] * dist.world_size
            torch.distributed.all_gather_object(gathered, rng)
            rng = gathered
        if not dist.is_main:
            return
        meta = {**task.metadata(), "epoch": epoch, "step": step, "metrics": metrics or {},
                "config": config_to_dict(cfg), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        ema_sd = ema.module.state_dict() if ema is not None else None
        if kind == "step":
            training_state = {
                "epoch": epoch, "step": step, "in_epoch": in_epoch, "best": best, "train_time": train_time,
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "ema": ema.state_dict() if ema is not None else None,
                "task": task.state_dict(), "rng": rng,
                # one process: the pending log sums, so the first record after a resume equals the original's
                # (under DDP each rank has its own; that record then covers the resumed steps only)
                "log_sums": {} if dist.enabled else {k: torch.as_tensor(v).cpu() for k, v in sums.items()},
            }
            ckpt.save_checkpoint(run_dir / "checkpoints" / f"step_{step:08d}", model.state_dict(), meta,
                                 ema_state=ema_sd, training_state=training_state)
            ckpt.prune_checkpoints(run_dir / "checkpoints", cfg.train.keep_last)
            ckpt.fault_point("after_checkpoint")
        else:
            ckpt.save_checkpoint(run_dir / kind, model.state_dict(), meta, ema_state=ema_sd)

    def evaluate() -> dict[str, float]:
        """Hook: evaluate the model (and its EMA) and keep the best weights."""
        metrics = task.evaluate(model)
        if ema is not None:
            metrics.update({f"{k}_ema": v for k, v in task.evaluate(ema.module).items()})
        value = metrics.get(task.primary_metric)
        if value is not None and (best["value"] is None
                                  or (value > best["value"] if task.higher_is_better else value < best["value"])):
            best.update(value=value, step=step)
            save("best", metrics)
        return metrics

    # ---- train
    status, final_metrics, error = "done", {}, None
    # metric sums since the last log record; saved with a checkpoint so that a resumed run logs the same values
    sums: dict[str, Tensor] = {k: torch.as_tensor(v).to(dist.device) for k, v in log_sums.items()}
    rate_key = throughput_key(task)
    items_before = float(sums["count"]) if "count" in sums else 0.0  # counted before the resume: not timed here
    nonfinite = torch.zeros((), dtype=torch.bool, device=dist.device)
    check_every = 1 if dist.device.type == "cpu" else cfg.train.log_every  # a CPU check costs no sync
    t_log = time.perf_counter()
    try:
        with _catch_sigint() as interrupt:
            while step < total_steps:
                if not in_epoch:
                    loader.set_epoch(epoch)
                in_epoch, micro = True, 0
                model.train()
                t_step = time.perf_counter()
                for batch in loader:
                    # -- one micro-batch: forward under autocast, scaled backward; DDP syncs on the last one
                    sync = (micro + 1) % accum == 0
                    ctx = train_model.no_sync() if dist.enabled and not sync else contextlib.nullcontext()
                    with ctx:
                        with autocast:
                            loss, stats = task.train_step(train_model, batch)
                        scaler.scale(loss / accum).backward()
                    nonfinite |= ~torch.isfinite(loss.detach())
                    sums["loss"] = sums.get("loss", 0) + loss.detach().float()
                    sums["micro_batches"] = sums.get("micro_batches", 0) + 1
                    for k, v in stats.items():
                        sums[k] = sums.get(k, 0) + v.detach()
                    micro += 1
                    if not sync:
                        continue
                    # -- one optimizer step: unscale, clip, step, schedule, EMA
                    if cfg.train.grad_clip:
                        scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
                    scheduler.step()
                    if ema is not None:
                        ema.update(model)
                    step += 1
                    ckpt.fault_point("step")
                    now = time.perf_counter()
                    train_time += now - t_step
                    t_step = now

                    # -- hooks after each optimizer step: NaN guard, log, checkpoint, Ctrl-C
                    if step % check_every == 0 or step % cfg.train.log_every == 0 or step == total_steps:
                        # a collective in DDP: every rank must stop together, or the others would hang
                        if D.all_reduce_sum(nonfinite.float(), dist).item() > 0:
                            when = f"step {step}" + (f" or in the {check_every - 1} steps before it"
                                                     if check_every > 1 else "")
                            raise NonFiniteLossError(
                                f"the training loss is NaN/inf at {when} (epoch {epoch + 1}); lower optim.lr, set "
                                "train.grad_clip or use fp32. The last good checkpoint is kept.")
                    end_of_epoch = step % steps_per_epoch == 0 or step == total_steps
                    if step % cfg.train.log_every == 0 or end_of_epoch:
                        record = _train_record(sums, epoch, step, optimizer, dist)
                        items, items_before = record.pop("items", 0) - items_before, 0.0
                        record[rate_key] = items / max(time.perf_counter() - t_log, 1e-9)
                        record["train_time_s"] = train_time  # so curves can put training metrics against time
                        eta = (total_steps - step) * train_time / max(step, 1)
                        logger.log(record)
                        progress.update(step, epoch, {k: record[k] for k in ("train_loss", "train_acc", "lr",
                                                                             rate_key) if k in record}, eta)
                        sums, t_log = {}, time.perf_counter()
                    if end_of_epoch:
                        break
                    if cfg.train.checkpoint_every and step % cfg.train.checkpoint_every == 0:
                        save("step")
                        t_step = time.perf_counter()  # train_time counts training, not saving
                    if _should_stop(interrupt["stop"], dist):
                        save("step")
                        status = "interrupted"
                        break
                if status == "interrupted":
                    break
                # -- hooks after each epoch: evaluate, keep best, checkpoint
                epoch, in_epoch = epoch + 1, False
                if epoch % cfg.train.eval_every == 0 or step == total_steps:
                    metrics = evaluate()
                    logger.log({"epoch": epoch, "step": step, **metrics, "train_time_s": train_time})
                    progress.message(f"epoch {epoch}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
                    final_metrics = metrics
                save("step", final_metrics)
                t_log = time.perf_counter()  # throughput measures training only, not evaluation or saving
                if _should_stop(interrupt["stop"], dist):
                    status = "interrupted"
                    break
    except NonFiniteLossError as e:
        status, error = "failed", str(e)
    except BaseException as e:  # a crash or a second Ctrl-C: record it, then let it propagate
        if dist.is_main:
            write_status(run_dir, "failed", step=step, error=f"{type(e).__name__}: {e}",
                         resume=resume_hint(task, run_dir))
        raise
    finally:
        progress.close()
        logger.close()

    # ---- finish: final weights, learning curves, status
    if status == "done":
        if not final_metrics:  # e.g. resumed a finished run
            final_metrics = task.evaluate(model)
        save("final", final_metrics)
    if dist.is_main:
        if cfg.run.plots:
            from paperzoo.viz.curves import plot_run_curves  # matplotlib loads only when plotting

            plot_run_curves(run_dir, run_dir / "curves.png")
        info: dict[str, Any] = {"step": step, "total_steps": total_steps, "metrics": final_metrics, "best": best}
        if error:
            info["error"] = error
        if status == "interrupted":
            info["resume"] = resume_hint(task, run_dir)
        write_status(run_dir, status, **info)
    D.barrier(dist)
    D.cleanup(dist)
    torch.set_num_threads(threads_before)  # leave the caller's process as it was
    torch.use_deterministic_algorithms(det_before)
    if error:
        progress.message(f"run failed: {error}")
    return TrainResult(run_dir=run_dir, status=status, metrics=final_metrics, best=best, step=step,
                       train_time_s=train_time, resume_hint=resume_hint(task, run_dir))


def _should_stop(local: bool, dist: D.DistInfo) -> bool:
    """All ranks stop together if any rank received Ctrl-C."""
    if not dist.enabled:
        return local
    flag = torch.tensor([1.0 if local else 0.0], device=dist.device)
    return bool(D.all_reduce_sum(flag, dist).item() > 0)


def _train_record(sums: dict[str, Tensor], epoch: int, step: int, optimizer: torch.optim.Optimizer,
                  dist: D.DistInfo) -> dict[str, Any]:
    """Average the metric sums since the last record over micro-batches / items and all ranks."""
    keys = sorted(sums)
    vec = torch.stack([torch.as_tensor(sums[k], dtype=torch.float64, device=dist.device) for k in keys])
    vec = D.all_reduce_sum(vec, dist).tolist()
    total = dict(zip(keys, vec))
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
