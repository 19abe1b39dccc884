"""Batches of an on-disk dataset (ImageFolder) through a ``DataLoader`` with workers, seeded and resumable.

:class:`StreamingLoader` has :class:`~paperzoo.data.loader.TensorLoader`'s interface (the
:class:`~paperzoo.data.cursor.EpochCursor` position, ``set_epoch``, batched transform), for datasets too large
to hold in memory: the workers decode items, the transform runs on the collated batch.

* Training (``shuffle=True``): the epoch's order is a permutation seeded by ``(seed, epoch)``, cut into global
  batches of ``batch_size * world_size`` (the incomplete tail dropped), of which rank r takes every
  ``world_size``-th element. A resumed run hands the ``DataLoader`` only the samples not yet consumed.
* Evaluation (``shuffle=False``): rank r reads items r, r + world_size, ... in order, each exactly once.
* Augmentation runs on the collated batch with a generator seeded by ``(seed, epoch, batch index, rank)``.
* A decode error in a worker is re-raised as a one-line :class:`DatasetCorruptError` naming the file (torch
  would otherwise prefix the worker's whole traceback to the message).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .cursor import ResumableLoader
from .datasets import DatasetCorruptError
from .loader import derive_seed

__all__ = ["StreamingLoader"]


def _worker_message(e: DatasetCorruptError) -> str:
    """The original message of an error a ``DataLoader`` worker raised.

    torch re-raises it in the main process as ``type("Caught X in DataLoader worker process k.\\nOriginal
    Traceback ...\\nmodule.X: message")``; in-process (``num_workers=0``) the message is already the original.
    """
    text = str(e).rstrip()
    if not text.startswith("Caught "):
        return text
    return text.splitlines()[-1].split(": ", 1)[-1]


def _batches(dl: Iterable[Any]) -> Iterator[Any]:
    try:
        yield from dl
    except DatasetCorruptError as e:
        raise DatasetCorruptError(_worker_message(e)) from e


class StreamingLoader(ResumableLoader):
    """Iterate over ``(x, y)`` batches of a map-style dataset of ``(uint8 or float (C, H, W), label)`` items.

    Args:
        dataset: e.g. :class:`~paperzoo.data.imagefolder.ImageFolderDataset`; a ``set_epoch`` method, if it has
            one, is called with the loader's epoch (it seeds random-resized crops).
        batch_size: items per batch (per rank).
        seed: base seed of the order and augmentation streams.
        transform: batched transform ``t(x, y, generator) -> (x, y)`` (normalises).
        device: where batches go.
        num_workers: ``DataLoader`` worker processes (0: decode in this process).
        shuffle, rank, world_size, channels_last: as for :class:`~paperzoo.data.loader.TensorLoader`.
    """

    def __init__(self, dataset: Dataset, batch_size: int, *, seed: int, transform: Callable[..., Any],
                 device: torch.device | str, num_workers: int, shuffle: bool = True, rank: int = 0,
                 world_size: int = 1, channels_last: bool = False) -> None:
        super().__init__(seed)
        self.dataset, self.batch_size, self.transform = dataset, batch_size, transform
        self.device, self.num_workers, self.rank, self.world = torch.device(device), num_workers, rank, world_size
        self.shuffle, self.channels_last = shuffle, channels_last

    def __len__(self) -> int:
        if self.shuffle:
            return len(self.dataset) // (self.batch_size * self.world)
        return -(-len(range(self.rank, len(self.dataset), self.world)) // self.batch_size)

    def _order(self) -> Tensor:
        """This rank's item indices for the current epoch, batch after batch."""
        if not self.shuffle:
            return torch.arange(self.rank, len(self.dataset), self.world)
        g = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch))
        perm = torch.randperm(len(self.dataset), generator=g)
        global_b = self.batch_size * self.world
        return perm[: len(self) * global_b].view(-1, global_b)[:, self.rank::self.world].flatten()  # (n_b * B,)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        order = self._order()[self.cursor.next_start * self.batch_size:].tolist()  # the samples not yet consumed
        if hasattr(self.dataset, "set_epoch"):  # before the workers start: each gets a copy of the dataset
            self.dataset.set_epoch(self.epoch)
        # its own generator: a DataLoader draws its workers' base seed from the global RNG otherwise, which a
        # resumed run would draw at another point of the stream (dropout, samplers) than an uninterrupted one
        dl = DataLoader(self.dataset, batch_size=self.batch_size, sampler=order, num_workers=self.num_workers,
                        generator=torch.Generator().manual_seed(derive_seed(self.seed, self.epoch)))
        # the batch is fetched before the cursor counts it, so a failed read is not counted as consumed
        for (x, y), i in zip(_batches(dl), self.cursor.positions(len(self))):
            x = x.to(self.device, non_blocking=True)
            x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
            g = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, i, self.rank))
            x, y = self.transform(x, y.to(self.device), g)
            yield (x.contiguous(memory_format=torch.channels_last) if self.channels_last else x), y
