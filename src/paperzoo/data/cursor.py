"""Where a seeded loader stands in its epoch: one cursor and one resumable-loader base for every loader.

paperzoo's loaders (:class:`~paperzoo.data.loader.TensorLoader`, :class:`~paperzoo.data.streaming.StreamingLoader`,
:class:`~paperzoo.text.data.LengthBatchLoader`, :class:`~paperzoo.text.data.LMLoader`) produce an epoch's batches
in an order that is a function of ``(seed, epoch)`` only. Their position is therefore three integers, kept by
:class:`EpochCursor`, and resuming mid-epoch means replaying the same order from the saved batch.

The contract the trainer relies on (all four loaders, tested in ``tests/data/test_cursor.py``):

* ``state_dict()`` is ``{"epoch", "batch", "seed"}``; ``batch`` counts the batches of the epoch already handed
  out (counted *before* a batch is yielded: the consumer owns it then, so a checkpoint taken while it is being
  used does not replay it). After a whole epoch ``batch == len(loader)``.
* ``load_state_dict(state)`` makes the next pass continue at ``state["batch"]``; a different seed or a batch
  outside ``[0, len(loader)]`` is refused. States saved before the seed was recorded (no ``"seed"`` key) load.
* ``set_epoch(e)`` with a new epoch starts it from batch 0; with the current epoch it keeps the position, so
  ``load_state_dict(s); set_epoch(s["epoch"])`` resumes.
* The restored position is used by one pass only: iterating again starts the epoch from the beginning.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

__all__ = ["EpochCursor", "ResumableLoader"]


@dataclass
class EpochCursor:
    """The epoch a loader produces and how many of its batches were handed out (see the module docstring)."""

    seed: int = 0
    epoch: int = 0
    batch: int = 0  # batches of the current epoch already handed out
    _resume: int = field(default=0, repr=False)  # where the next pass starts (set by load_state_dict)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.batch, self._resume = int(epoch), 0, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch": self.batch, "seed": self.seed}

    def load_state_dict(self, state: Mapping[str, int], num_batches: int) -> None:
        """Restore a position of an epoch of ``num_batches`` batches."""
        if int(state.get("seed", self.seed)) != self.seed:
            raise ValueError(f"loader state was saved with seed {state['seed']}, this loader has seed {self.seed}")
        if not 0 <= int(state["batch"]) <= num_batches:
            raise ValueError(f"loader state batch {state['batch']} outside [0, {num_batches}]")
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
        self._resume = self.batch

    @property
    def next_start(self) -> int:
        """The batch the next pass begins at (for loaders that must know it before the first batch)."""
        return self._resume

    def positions(self, num_batches: int) -> Iterator[int]:
        """One pass: the batch indices from the restored position (else 0) to ``num_batches - 1``, counting each
        as handed out just before it is yielded."""
        start, self._resume = self._resume, 0  # a later pass of this epoch starts from the beginning again
        self.batch = start
        for i in range(start, num_batches):
            self.batch = i + 1
            yield i


class ResumableLoader:
    """The resumable half of the trainer's loader protocol, written once on top of an :class:`EpochCursor`.

    Subclasses define ``__len__`` (batches per epoch) and ``__iter__``, which draws its batch indices from
    ``self.cursor.positions(len(self))`` and reads ``self.epoch`` / ``self.seed`` to seed the epoch's order.
    """

    def __init__(self, seed: int = 0) -> None:
        self.cursor = EpochCursor(seed=int(seed))

    def __len__(self) -> int:
        raise NotImplementedError

    @property
    def seed(self) -> int:
        return self.cursor.seed

    @property
    def epoch(self) -> int:
        return self.cursor.epoch

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order to produce (the current one again keeps a restored position)."""
        self.cursor.set_epoch(epoch)

    def state_dict(self) -> dict[str, int]:
        return self.cursor.state_dict()

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.cursor.load_state_dict(state, len(self))
