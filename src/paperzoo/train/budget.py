"""Fit a run's schedule to a time budget (``train.time_budget_s``).

A short throughput probe, on a copy of the model with its own optimizer, measures the seconds per optimizer step;
``epochs`` / ``max_steps`` are then set so that the whole schedule (a one-cycle or cosine decay included) fills
:data:`BUDGET_FILL` of the budget. The numbers go into the run's config.yaml, so a resume keeps the schedule; the
trainer still stops once the budget is spent, whatever the probe said.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn as nn

from . import distributed as D
from .optim import build_optimizer_and_schedule
from .rng import rng_state, set_rng_state
from .task import Task

__all__ = ["BUDGET_FILL", "fit_schedule_to_budget", "probe_step_time", "schedule_length"]


def schedule_length(t: Any, batches_per_epoch: int) -> tuple[int, int]:
    """(optimizer steps per epoch, total steps) for the train section ``t``."""
    steps_per_epoch = batches_per_epoch // t.grad_accum
    if steps_per_epoch < 1:
        raise ValueError(f"an epoch has {batches_per_epoch} batch(es), fewer than train.grad_accum="
                         f"{t.grad_accum}; lower data.batch_size or grad_accum")
    total = t.epochs * steps_per_epoch
    return steps_per_epoch, min(total, t.max_steps) if t.max_steps else total


#: share of the time budget the probed schedule is planned to fill: the rest absorbs the loop's own overhead
#: (logging, the NaN guard) and a machine that runs a little slower than during the probe
BUDGET_FILL = 0.95


def fit_schedule_to_budget(cfg: Any, task: Task, model: nn.Module, dist: D.DistInfo,
                           autocast: torch.autocast) -> Any:
    """``cfg`` with ``train.epochs`` / ``max_steps`` set so that the run's steps fill ``train.time_budget_s``.

    The seconds per optimizer step come from :func:`probe_step_time`; under DDP rank 0's measurement is used by
    every rank, so that all build the same schedule.
    """
    t = cfg.train
    step_s = D.broadcast_object(probe_step_time(cfg, task, model, dist, autocast), dist)
    steps = max(1, int(BUDGET_FILL * t.time_budget_s / step_s))
    steps_per_epoch, _ = schedule_length(t, len(task.train_loader))
    epochs = -(-steps // steps_per_epoch)
    return dataclasses.replace(cfg, train=dataclasses.replace(t, epochs=epochs, max_steps=steps))


def probe_step_time(cfg: Any, task: Task, model: nn.Module, dist: D.DistInfo, autocast: torch.autocast) -> float:
    """Seconds per optimizer step, timed on a copy of the model with its own optimizer, after one warm-up step,
    for 5 % of the budget (0.2-10 s, at least 3 steps). The run's weights and random streams are left as they
    were, and the loader starts its first epoch afresh afterwards (its position is set by ``set_epoch``)."""
    t = cfg.train
    rng = rng_state()
    probe = copy.deepcopy(model).train()
    optimizer, _ = build_optimizer_and_schedule(cfg, probe, 1000, 1000)
    batches = _repeat_epochs(task.train_loader)
    seconds, n, t0 = min(10.0, max(0.2, t.time_budget_s / 20)), -1, 0.0
    while n < 3 or time.perf_counter() - t0 < seconds:
        for _ in range(t.grad_accum):
            with autocast:
                loss, _ = task.train_step(probe, next(batches))
            (loss / t.grad_accum).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if dist.device.type == "cuda":
            torch.cuda.synchronize(dist.device)
        n += 1
        if n == 0:  # the first step warmed up (allocations, kernel selection): time from here
            t0 = time.perf_counter()
    elapsed = time.perf_counter() - t0
    set_rng_state(rng)
    return elapsed / n  # the copy and its optimizer are freed on return


def _repeat_epochs(loader: Any) -> Iterator[Any]:
    """The loader's batches from the start of epoch 0, again and again (the probe may outlast a short epoch)."""
    loader.set_epoch(0)
    while True:
        yield from loader
