"""A run's random state: the seed every rank starts from, and the generator states a checkpoint saves.

Data order and augmentation are re-derived from (seed, epoch, batch) inside the tasks; what is left (dropout,
stochastic depth, anything drawing from the global generators) lives in the torch / CUDA / Python / NumPy states
below, which the trainer saves at every checkpoint and restores on resume, so the lost steps replay exactly.
Under DDP each rank saves its own (``gather_rng_states``) and takes its own back (``this_rank``).
"""

from __future__ import annotations

import random
import sys
from typing import Any

import numpy as np
import torch

from . import distributed as D

__all__ = ["gather_rng_states", "rng_state", "seed_everything", "set_rng_state", "this_rank"]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
    }


def gather_rng_states(dist: D.DistInfo) -> Any:
    """This process's RNG states; under DDP every rank's (a list), so that each resumes its own dropout stream."""
    rng = rng_state()
    if not dist.enabled:
        return rng
    gathered: list[Any] = [None] * dist.world_size
    torch.distributed.all_gather_object(gathered, rng)
    return gathered


def this_rank(rng: Any, dist: D.DistInfo) -> dict[str, Any]:
    """This rank's entry of the saved RNG states (one dict, or a list with one per rank of the saving run)."""
    if not isinstance(rng, list):
        return rng
    if len(rng) != dist.world_size:
        print(f"paperzoo: warning: resuming a {len(rng)}-process run with {dist.world_size} process(es): the "
              "data shards and random streams differ from the original run", file=sys.stderr)
    return rng[dist.rank % len(rng)]


def set_rng_state(s: dict[str, Any]) -> None:
    torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
    random.setstate(_as_tuple(s["python"]))
    name, keys, *rest = s["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))


def _as_tuple(x: Any) -> Any:
    return tuple(_as_tuple(v) for v in x) if isinstance(x, list | tuple) else x
