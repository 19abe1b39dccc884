"""Datasets, the in-memory batch loader and batched tensor augmentation.

* :mod:`.datasets` — Fashion-MNIST / MNIST (IDX) and CIFAR-10/100 (binary or python) as uint8 tensors.
* :mod:`.imagefolder` — class-per-folder images decoded with Pillow, for a ``DataLoader``.
* :mod:`.loader` — :class:`TensorLoader`: seeded, resumable, DDP-sharded batches from tensors.
* :mod:`.streaming` — :class:`StreamingLoader`: the same for on-disk datasets, through a ``DataLoader``.
* :mod:`.cursor` — :class:`EpochCursor`: the epoch/batch position every loader saves and resumes from.
* :mod:`.transforms` — crop-pad, flip, random erasing, mixup/cutmix on whole batches.
"""

from .cursor import EpochCursor
from .datasets import DATASETS, DatasetCorruptError, DatasetNotFoundError, ImageDataset, load_image_dataset
from .imagefolder import ImageFolderDataset
from .loader import TensorLoader
from .streaming import StreamingLoader
from .transforms import build_eval_transform, build_train_transform

__all__ = [
    "DATASETS",
    "DatasetCorruptError",
    "DatasetNotFoundError",
    "EpochCursor",
    "ImageDataset",
    "ImageFolderDataset",
    "StreamingLoader",
    "TensorLoader",
    "build_eval_transform",
    "build_train_transform",
    "load_image_dataset",
]
