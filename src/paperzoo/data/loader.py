"""A batch iterator over in-memory tensors: shuffled, augmented, resumable mid-epoch, DDP-sharded.

For datasets that fit in memory (MNIST-size and CIFAR-size) a ``torch.utils.data.DataLoader`` spends most
of its time collating single images in Python. :class:`TensorLoader` instead slices a whole batch with one
``index_select`` from the uint8 tensor, converts it to float once and hands it to a batched transform
(:mod:`paperzoo.data.transforms`). With ``device="cuda"`` the whole uint8 dataset is moved to the GPU once.

Determinism contract (what the checkpoint/resume and DDP code relies on):

* The sample order of an epoch is ``randperm`` from a generator seeded by ``(seed, epoch)`` only.
* The augmentation of batch ``i`` uses a generator seeded by ``(seed, epoch, i, rank)`` only, so replaying
  from the middle of an epoch reproduces the same batches bit for bit.
* The position (``state_dict``, ``load_state_dict``, ``set_epoch``) is an :class:`~paperzoo.data.cursor.EpochCursor`
  shared with the other loaders: ``{"epoch", "batch", "seed"}``, ``batch`` counting the batches already handed
  out; after ``load_state_dict`` the next ``__iter__`` continues from there.
* With ``world_size > 1`` rank ``r`` takes ``perm[r::world_size]`` (after padding the permutation to a multiple
  of ``world_size`` by wrapping around, like ``DistributedSampler``; ``drop_last`` drops the tail instead).
  Batch ``i`` over all ranks is then exactly the samples of batch ``i`` of a one-process loader with
  ``batch_size * world_size`` (when the dataset size divides evenly), so DDP sees the same global batches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

from .cursor import ResumableLoader

__all__ = ["TensorLoader", "derive_seed"]

_MASK64 = (1 << 64) - 1


def derive_seed(*keys: int) -> int:
    """Mix integers into one 63-bit seed (SplitMix64 finaliser), so nearby keys give unrelated streams."""
    z = 0x9E3779B97F4A7C15
    for k in keys:
        z = (z ^ (int(k) & _MASK64)) * 0xBF58476D1CE4E5B9 & _MASK64
        z = (z ^ (z >> 27)) * 0x94D049BB133111EB & _MASK64
        z ^= z >> 31
    return z >> 1


_ORDER, _AUGMENT = 1, 2  # stream ids for derive_seed


class TensorLoader(ResumableLoader):
    """Iterate over ``(x, y)`` batches of in-memory images.

    Args:
        images: uint8 (N, C, H, W) (scaled to [0, 1] floats per batch) or float (N, C, H, W) (used as is).
        labels: int64 (N,) (or float soft targets (N, K)).
        batch_size: images per batch (per rank).
        shuffle: reshuffle every epoch (order from ``(seed, epoch)``); False keeps dataset order.
        drop_last: drop the last incomplete batch.
        seed: base seed of the order and augmentation streams.
        transform: batched transform ``t(x, y, generator) -> (x, y)``, e.g. ``build_train_transform(...)``,
            which is where normalisation happens. None yields x in [0, 1].
        device: where batches (and the stored dataset) live.
        channels_last: yield x in ``torch.channels_last`` memory format.
        rank, world_size: DDP sharding (see module docstring).
        prep_threads: intra-op threads while a CPU batch is prepared (None: torch's current setting). The
            per-batch ops are small (~100k elements for 128 28x28 images): a second thread saves little and
            every op pays a parallel-region barrier, which on a busy machine costs milliseconds (measured
            25x slower with 2 threads than with 1 under load). The setting is restored before each yield.

    Yields:
        x float32 (B, C, H, W), y int64 (B,) or float32 (B, K) after mixup/cutmix.
    """

    def __init__(self, images: Tensor, labels: Tensor, batch_size: int, *, shuffle: bool = True,
                 drop_last: bool = False, seed: int = 0, transform: Callable[..., Any] | None = None,
                 device: str | torch.device = "cpu", channels_last: bool = False, rank: int = 0,
                 world_size: int = 1, prep_threads: int | None = 1) -> None:
        if images.ndim != 4 or labels.shape[0] != images.shape[0]:
            raise ValueError(f"images must be (N, C, H, W) and labels (N,...), got {tuple(images.shape)} / "
                             f"{tuple(labels.shape)}")
        if batch_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need batch_size >= 1 and 0 <= rank < world_size, got {batch_size}, {rank}, {world_size}")
        super().__init__(seed)
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device)
        self.batch_size, self.shuffle, self.drop_last = int(batch_size), bool(shuffle), bool(drop_last)
        self.transform, self.channels_last = transform, bool(channels_last)
        self.rank, self.world_size = int(rank), int(world_size)
        self.prep_threads = prep_threads

    # ------------------------------------------------------------------------------------------ sizes
    @property
    def dataset_size(self) -> int:
        return self.images.shape[0]

    @property
    def num_samples(self) -> int:
        """Samples this rank sees per epoch."""
        n, w = self.dataset_size, self.world_size
        return n // w if self.drop_last else -(-n // w)

    def __len__(self) -> int:
        """Batches per epoch (per rank)."""
        n, b = self.num_samples, self.batch_size
        return n // b if self.drop_last else -(-n // b)

    # ------------------------------------------------------------------------------------------ order
    def indices(self, epoch: int | None = None) -> Tensor:
        """This rank's sample indices for ``epoch`` (default: the current one), in order, on the CPU."""
        epoch = self.epoch if epoch is None else epoch
        n = self.dataset_size
        if self.shuffle:
            g = torch.Generator().manual_seed(derive_seed(self.seed, epoch, _ORDER))
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        if self.world_size > 1:
            total = self.num_samples * self.world_size
            if total > n:  # pad by wrapping around so every rank has the same number of samples
                order = torch.cat([order, order[: total - n]])
            order = order[:total][self.rank::self.world_size]
        return order

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        order = self.indices().to(self.device)
        for i in self.cursor.positions(len(self)):
            yield self._prepare(order[i * self.batch_size: (i + 1) * self.batch_size], i)

    def _prepare(self, idx: Tensor, i: int) -> tuple[Tensor, Tensor]:
        """Slice, convert and augment batch ``i`` (its rows ``idx``) with ``prep_threads`` intra-op threads."""
        prev = torch.get_num_threads()
        switch = self.prep_threads is not None and self.device.type == "cpu" and prev != self.prep_threads
        if switch:
            torch.set_num_threads(self.prep_threads)  # ~0.3 µs; restored before the model runs
        try:
            x = self.images.index_select(0, idx)
            y = self.labels.index_select(0, idx)
            x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
            if self.transform is not None:
                g = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, i, self.rank, _AUGMENT))
                x, y = self.transform(x, y, g)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            return x, y
        finally:
            if switch:
                torch.set_num_threads(prev)

    def __repr__(self) -> str:
        return (f"TensorLoader(n={self.dataset_size}, batch_size={self.batch_size}, batches={len(self)}, "
                f"shuffle={self.shuffle}, rank={self.rank}/{self.world_size}, transform={self.transform!r})")
