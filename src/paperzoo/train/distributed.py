"""Distributed data parallel (DDP) plumbing for ``torchrun --nproc_per_node=N -m paperzoo train ...``.

torchrun sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; :func:`setup` reads them, initialises the process
group (NCCL on GPU, gloo on CPU) and returns a :class:`DistInfo`. Without those variables everything here is a
no-op, so the single-process path is the same code. Each rank reads a disjoint slice of the same shuffled
order (``TensorLoader(rank=, world_size=)``), DDP averages gradients, only rank 0 logs and writes checkpoints,
and evaluation sums correct counts over ranks (:func:`all_reduce_sum`).
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

__all__ = ["DistInfo", "all_gather_object", "all_reduce_sum", "barrier", "broadcast_object", "cleanup", "setup",
           "wrap_model"]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str = "auto") -> DistInfo:
    """Initialise the process group when launched by torchrun; pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device=cuda but no CUDA device is available; valid choices here: auto, cpu")
    dev = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev)


def cleanup(info: DistInfo) -> None:
    """Destroy the process group, after freeing what still holds it.

    A DDP reducer that outlives ``destroy_process_group`` keeps the gloo group alive until interpreter exit,
    where its worker threads can be torn down unjoined: "terminate called without an active exception" and
    SIGABRT on a rank that had finished (seen once in CI). Collecting first frees such reducers in time.
    """
    if info.enabled and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def wrap_model(model: nn.Module, info: DistInfo, sync_bn: bool = False) -> nn.Module:
    """DDP-wrap ``model`` (already on ``info.device``); optionally convert BatchNorm to SyncBatchNorm.

    SyncBatchNorm computes batch statistics over all ranks, so small per-rank batches behave like the
    global batch; PyTorch implements it for GPUs only.
    """
    if not info.enabled:
        return model
    if sync_bn:
        if info.device.type != "cuda":
            raise ValueError("train.sync_bn=true needs GPUs (PyTorch's SyncBatchNorm has no CPU kernel)")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [info.device.index] if info.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP and/or torch.compile wrappers (whose state_dict keys are ours)."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum ``t`` over ranks (in place) and return it; identity without DDP."""
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def broadcast_object(obj: object, info: DistInfo) -> object:
    """Rank 0's ``obj`` on every rank (e.g. the run directory name)."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_object(obj: object, info: DistInfo) -> list[object]:
    """Every rank's ``obj``, in rank order (``[obj]`` without DDP): e.g. each rank's share of predictions."""
    if not info.enabled:
        return [obj]
    out: list[object] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out
