"""In-memory image datasets: Fashion-MNIST, MNIST, CIFAR-10 and CIFAR-100 as uint8 tensors.

* Fashion-MNIST: Xiao, Rasul & Vollgraf, "Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine
  Learning Algorithms", arXiv:1708.07747. Found by default where Debian's ``dataset-fashion-mnist``
  installs it (``/usr/share/datasets/fashion-mnist``).
* MNIST: LeCun et al. (1998), same IDX format (:mod:`paperzoo.data.idx`).
* CIFAR-10/100: Krizhevsky (2009), binary or python version, extracted or as the ``.tar.gz``
  (:mod:`paperzoo.data.cifar`).

These are small (<= 180 MB as uint8), so a whole split lives in one tensor and batches are sliced from it by
:class:`paperzoo.data.loader.TensorLoader`; nothing is downloaded. A missing dataset raises
:class:`DatasetNotFoundError` naming every place looked in and how to get the files.

``mean``/``std`` are per-channel statistics of the *training* split in [0, 1] units (used for both splits,
so the test set never informs preprocessing); ``ImageDataset.compute_stats`` recomputes them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from . import cifar, idx

__all__ = [
    "DATASETS",
    "dataset_stats",
    "DatasetCorruptError",
    "DatasetNotFoundError",
    "ImageDataset",
    "load_image_dataset",
]

DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
#: Optional extra search location: ``$PAPERZOO_DATA/<name>`` (and ``$PAPERZOO_DATA`` itself).
DATA_ENV = "PAPERZOO_DATA"

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's files are not where we looked; the message lists the paths and how to get them."""


class DatasetCorruptError(DatasetNotFoundError):
    """The files exist but are truncated or malformed (a re-download usually fixes it)."""


@dataclass
class ImageDataset:
    """One split of an image-classification dataset held in memory.

    Attributes:
        images: uint8 tensor (N, C, H, W).
        labels: int64 tensor (N,), values in ``[0, len(classes))``.
        classes: class names, index = label.
        name: dataset name (``"fashion_mnist"``, ...).
        mean, std: per-channel normalisation statistics in [0, 1] units (from the training split).
    """

    images: Tensor
    labels: Tensor
    classes: list[str]
    name: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"labels must be int64 (N,) with N={self.images.shape[0]}, got {tuple(self.labels.shape)}")
        if len(self.mean) != self.in_chans or len(self.std) != self.in_chans:
            raise ValueError(f"mean/std need {self.in_chans} values (one per channel)")

    def __len__(self) -> int:
        return self.images.shape[0]

    def __repr__(self) -> str:  # the dataclass default would print every pixel
        return (f"ImageDataset(name={self.name!r}, images={tuple(self.images.shape)} {self.images.dtype}, "
                f"classes={self.num_classes}, mean={self.mean}, std={self.std})")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_chans(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> tuple[int, int]:
        return self.images.shape[2], self.images.shape[3]

    def subset(self, indices: Tensor | list[int]) -> ImageDataset:
        """A new dataset of the given rows (same classes and statistics)."""
        index = torch.as_tensor(indices, dtype=torch.long)
        return ImageDataset(self.images[index], self.labels[index], list(self.classes), self.name,
                            self.mean, self.std)

    def resized(self, size: int) -> ImageDataset:
        """Every image resized to ``size`` x ``size`` (bilinear with antialiasing, as the detection scenes scale
        their items), still uint8; the normalisation statistics are kept (resizing barely moves them)."""
        out = F.interpolate(self.images.float(), size=(size, size), mode="bilinear", antialias=True,
                            align_corners=False)  # (N, C, size, size)
        return ImageDataset(out.round_().clamp_(0, 255).to(torch.uint8), self.labels, list(self.classes), self.name,
                            self.mean, self.std)

    def split(self, val_fraction: float, seed: int = 0) -> tuple[ImageDataset, ImageDataset]:
        """Stratified, seeded hold-out split: ``round(val_fraction * n_c)`` images of each class go to val."""
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(len(self), generator=g)
        labels = self.labels[perm]
        val_mask = torch.zeros(len(self), dtype=torch.bool)
        for c in range(self.num_classes):  # a loop over classes, not images
            rows = (labels == c).nonzero().flatten()
            val_mask[rows[: round(val_fraction * len(rows))]] = True
        train_idx, val_idx = perm[~val_mask].sort().values, perm[val_mask].sort().values
        return self.subset(train_idx), self.subset(val_idx)

    def compute_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and std of the pixels in [0, 1] units (float64 accumulation)."""
        x = self.images.transpose(0, 1).reshape(self.in_chans, -1).double() / 255.0  # (C, N*H*W)
        return tuple(x.mean(1).tolist()), tuple(x.std(1, correction=0).tolist())


# Training-split statistics, verified against the files by tests/data/test_datasets.py (fashion_mnist) and
# recomputable with ImageDataset.compute_stats().
_STATS = {
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}

DATASETS = tuple(_STATS)


def dataset_stats(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per channel of a named dataset's training split, in [0, 1] units."""
    return _STATS[name]

_HOW_TO_GET = {
    "fashion_mnist": (
        "Install Debian's package (`sudo apt-get install dataset-fashion-mnist`, it puts the four "
        "*-ubyte.gz files in /usr/share/datasets/fashion-mnist), or download train-images-idx3-ubyte.gz, "
        "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz from "
        "https://github.com/zalandoresearch/fashion-mnist into a directory and pass it as root / --data-dir."
    ),
    "mnist": (
        "Download train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
        "t10k-labels-idx1-ubyte.gz (http://yann.lecun.com/exdb/mnist/ or a mirror) into a directory and pass "
        "it as root / --data-dir (gzipped or not)."
    ),
    "cifar10": (
        "Download cifar-10-binary.tar.gz or cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html "
        "and put the archive (or its extracted cifar-10-batches-bin / cifar-10-batches-py folder) in root / "
        "--data-dir."
    ),
    "cifar100": (
        "Download cifar-100-binary.tar.gz or cifar-100-python.tar.gz from "
        "https://www.cs.toronto.edu/~kriz/cifar.html and put the archive (or its extracted cifar-100-binary / "
        "cifar-100-python folder) in root / --data-dir."
    ),
}


def _candidate_dirs(name: str, root: str | None) -> list[str]:
    """Directories to search, in order: root and its usual sub-folders, $PAPERZOO_DATA, Debian's path."""
    bases: list[str] = []
    if root is not None:
        bases.append(os.path.expanduser(root))
    elif os.environ.get(DATA_ENV):
        bases.append(os.path.expanduser(os.environ[DATA_ENV]))
    subdirs = {
        "fashion_mnist": ["fashion-mnist", "fashion_mnist", "FashionMNIST/raw"],
        "mnist": ["mnist", "MNIST/raw"],
        "cifar10": ["cifar10", "cifar-10"],
        "cifar100": ["cifar100", "cifar-100"],
    }[name]
    dirs = [os.path.join(b, s) for b in bases for s in ["", *subdirs]]
    if root is None and name == "fashion_mnist":
        dirs.append(DEBIAN_FASHION_MNIST)
    return [os.path.normpath(d) for d in dirs]


def _not_found(name: str, root: str | None, looked: list[str]) -> DatasetNotFoundError:
    where = "\n  ".join(looked) if looked else "(nowhere: no root given)"
    hint = "" if root is not None or name == "fashion_mnist" else (
        f"\n{name} has no default location: pass root= (CLI: --data-dir) or set ${DATA_ENV}."
    )
    return DatasetNotFoundError(f"{name} not found. Looked in:\n  {where}{hint}\n{_HOW_TO_GET[name]}")


def _load_idx(name: str, split: str, root: str | None) -> tuple[np.ndarray, np.ndarray]:
    prefix = "train" if split == "train" else "t10k"
    looked = []
    for d in _candidate_dirs(name, root):
        looked.append(d)
        img_path = idx.find_idx_file(d, f"{prefix}-images-idx3-ubyte")
        lbl_path = idx.find_idx_file(d, f"{prefix}-labels-idx1-ubyte")
        if img_path is None or lbl_path is None:
            continue
        try:
            images, labels = idx.read_idx(img_path), idx.read_idx(lbl_path)
        except idx.IdxFormatError as e:
            raise DatasetCorruptError(f"{name} {split} split is corrupt: {e}\n{_HOW_TO_GET[name]}") from e
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels) or images.dtype != np.uint8:
            raise DatasetCorruptError(
                f"{name}: {img_path} holds {images.shape} {images.dtype} but {lbl_path} holds {labels.shape}"
            )
        if labels.max(initial=0) >= 10:
            raise DatasetCorruptError(f"{name}: {lbl_path} has labels >= 10")
        return images[:, None], labels.astype(np.int64)  # (N, H, W) -> (N, 1, H, W)
    raise _not_found(name, root, looked)


def _load_cifar(name: str, split: str, root: str | None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    looked: list[str] = []
    for d in _candidate_dirs(name, root):
        looked += cifar.looked_for(d, name)
        for version, source in cifar.cifar_sources(d, name):
            try:
                return cifar.read_cifar(source, name, version, split)
            except FileNotFoundError as e:
                raise DatasetCorruptError(
                    f"{name}: {e} is missing (incomplete extraction?)\n{_HOW_TO_GET[name]}"
                ) from e
            except cifar.CifarFormatError as e:
                raise DatasetCorruptError(f"{name} {split} split is corrupt: {e}\n{_HOW_TO_GET[name]}") from e
    raise _not_found(name, root, looked)


def load_image_dataset(name: str, split: Literal["train", "test"] = "train", root: str | None = None) -> ImageDataset:
    """Load one split of ``"fashion_mnist" | "mnist" | "cifar10" | "cifar100"`` into memory.

    Args:
        name: dataset name (``"fashion-mnist"`` and ``"cifar-10"`` spellings are accepted too).
        split: ``"train"`` (60k / 50k images) or ``"test"`` (10k).
        root: directory holding the files (or the usual sub-folder, e.g. ``FashionMNIST/raw``, or for CIFAR
            the archive). None: ``$PAPERZOO_DATA`` if set, and for Fashion-MNIST Debian's location.

    Raises:
        DatasetNotFoundError: no files found; the message says where we looked and how to get them.
        DatasetCorruptError: files found but malformed.
        cifar.UnsafePickleError: a CIFAR python batch tries to load anything but plain data.
    """
    key = name.lower().replace("-", "_")
    key = {"fashionmnist": "fashion_mnist", "cifar_10": "cifar10", "cifar_100": "cifar100"}.get(key, key)
    if key not in _STATS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)} (or ImageFolderDataset)")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if key in ("fashion_mnist", "mnist"):
        images, labels = _load_idx(key, split, root)
        classes = FASHION_MNIST_CLASSES if key == "fashion_mnist" else [str(i) for i in range(10)]
    else:
        images, labels, classes = _load_cifar(key, split, root)
    mean, std = _STATS[key]
    return ImageDataset(torch.from_numpy(np.require(images, requirements=["C", "W"])), torch.from_numpy(labels),
                        list(classes), key, mean, std)
