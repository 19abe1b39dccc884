"""ImageFolder: one sub-directory per class, decoded with Pillow, streamed through a ``DataLoader``.

Layout (as torchvision's ``ImageFolder``)::

    root/cat/0001.jpg
    root/cat/0002.png
    root/dog/abc.jpg

Classes are the sorted sub-directory names. The train/val split is stratified and depends only on ``seed``
and the sorted file list (not on file-system order or on the number of workers). Items are uint8 tensors
(C, H, W) plus an int label, so batches go through the same batched transforms
(:mod:`paperzoo.data.transforms`, which also normalise) as the in-memory datasets.

Resizing follows the usual ImageNet evaluation practice: resize the shorter side to ``image_size / crop_pct``
(crop_pct = 0.875, i.e. 256 -> 224), then take the centre ``image_size`` square. ``train_crop="random_resized"``
instead takes a random crop of ``scale`` of the area and ``ratio`` aspect (Szegedy et al., "Going Deeper with
Convolutions", arXiv:1409.4842 Sec. 6), drawn from a generator seeded by (seed, epoch, index): reproducible
whatever the worker count; call :meth:`ImageFolderDataset.set_epoch` each epoch (with
``persistent_workers=False``, the DataLoader default, workers see the new epoch).

The folder is scanned once, when the dataset is built, so that a bad tree fails before training, not mid-epoch:

* **Symlinked directories are not followed** (at the class level or below; one warning lists them): a link
  can loop (the same images again and again) or point into another class (images counted under two labels).
  Symlinked *files* are read. The root itself may be a symlink.
* **An empty class folder is kept as a class**, with a warning: the label indices then follow the folder names
  whatever is inside them, so two trees with the same folders (or a checkpoint and a new tree) agree on what
  label 3 means. Remove the folder to drop the class.
* **Every image of the split is checked** before training: Pillow's ``Image.open`` reads the header and
  ``verify()`` checks what the format allows without decoding (PNG chunk checksums; for JPEG only the header),
  in a thread pool. The unreadable files raise one :class:`DatasetCorruptError` naming the first of them and
  how many there are. A file damaged past its header, or changed after the scan, still fails when it is
  decoded, with an error naming it (``verify=False`` skips the check).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset

from .datasets import DatasetCorruptError, DatasetNotFoundError, ImageDataset
from .loader import derive_seed

__all__ = ["IMAGE_EXTENSIONS", "ImageFolderDataset", "verify_images"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _few(paths: Sequence[str], root: str, n: int = 3) -> str:
    """The first ``n`` paths relative to ``root``, then how many more."""
    shown = ", ".join(os.path.relpath(p, root) for p in paths[:n])
    return shown + (f" and {len(paths) - n} more" if len(paths) > n else "")


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _scan(root: str) -> tuple[list[str], list[tuple[str, int]]]:
    """Classes (sorted folder names) and (path, label) samples; warns about skipped links and empty classes."""
    if not os.path.isdir(root):
        raise DatasetNotFoundError(
            f"ImageFolder root {root!r} is not a directory. Expected one sub-directory per class holding "
            f"images ({', '.join(IMAGE_EXTENSIONS)})."
        )
    entries = sorted((e for e in os.scandir(root) if e.is_dir() and not e.name.startswith(".")), key=lambda e: e.name)
    links = [e.path for e in entries if e.is_symlink()]
    classes = [e.name for e in entries if not e.is_symlink()]
    samples: list[tuple[str, int]] = []
    empty = []
    for label, c in enumerate(classes):
        n_before = len(samples)
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, c)):  # followlinks=False: see the docstring
            links += [os.path.join(dirpath, d) for d in sorted(dirnames) if os.path.islink(os.path.join(dirpath, d))]
            dirnames.sort()
            samples += [(os.path.join(dirpath, f), label) for f in sorted(filenames) if _is_image(f)]
        if len(samples) == n_before:
            empty.append(c)
    skipped = f" (not following symlinked directories ({len(links)}): {_few(links, root)})" if links else ""
    if not samples:
        raise DatasetNotFoundError(f"no images found under {root!r} (looked in {len(classes)} class folders for "
                                   f"{', '.join(IMAGE_EXTENSIONS)}){skipped}")
    if links:
        warnings.warn(f"ImageFolder {root}: not following symlinked directories ({len(links)}; a link can loop or "
                      f"relabel images): {_few(links, root)}", stacklevel=2)
    if empty:
        warnings.warn(f"ImageFolder {root}: class folders without images ({len(empty)}): {', '.join(empty[:5])}"
                      f"{' ...' if len(empty) > 5 else ''} (kept as classes so labels follow the folder names; "
                      "remove the folders to drop them)", stacklevel=2)
    return classes, samples


def _check_image(path: str) -> str | None:
    """Why ``path`` is not a readable image (None when it is): header parsed, ``verify()`` passed."""
    try:
        with Image.open(path) as img:
            img.verify()
    except Exception as e:  # Pillow raises many types (OSError, SyntaxError, struct.error, ...): all mean "bad"
        return f"{type(e).__name__}: {e}"
    return None


def verify_images(paths: Sequence[str], root: str = "", *, threads: int = 8) -> None:
    """Raise one :class:`DatasetCorruptError` naming the first unreadable image of ``paths`` (module docstring).

    Threads overlap the file reads (a network file system is where a big folder's check spends its time).
    """
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(paths) // 64 + 1))) as pool:
        problems = list(pool.map(_check_image, paths))
    bad = [(p, why) for p, why in zip(paths, problems) if why is not None]
    if bad:
        where = f" under {root}" if root else ""
        raise DatasetCorruptError(f"{len(bad)} of {len(paths)} images{where} cannot be read, first {bad[0][0]} "
                                  f"({bad[0][1]}); fix or remove them")


class ImageFolderDataset(Dataset):
    """A class-per-folder image dataset with a deterministic stratified train/val split.

    Args:
        root: directory with one sub-directory per class.
        image_size: output side length (square).
        split: ``"train"``, ``"val"`` (the held-out ``val_fraction`` of each class) or ``"all"``.
        val_fraction: fraction of each class held out for ``"val"``.
        seed: seed of the split (and of random-resized crops).
        in_chans: 3 (RGB) or 1 (grayscale, Pillow mode ``L``).
        train_crop: ``"center"`` (resize + centre crop) or ``"random_resized"`` (only used for ``split="train"``).
        crop_pct: centre crop fraction of the resized image.
        scale, ratio: area fraction and aspect-ratio ranges of random-resized crops.
        mean, std: normalisation statistics carried for the transforms (default: ImageNet's for RGB).
        verify: check that every image of the split opens before training (module docstring).

    Items are ``(uint8 tensor (C, image_size, image_size), int label)``.
    """

    def __init__(self, root: str, image_size: int, split: Literal["train", "val", "all"] = "train",
                 val_fraction: float = 0.1, seed: int = 0, *, in_chans: int = 3,
                 train_crop: Literal["center", "random_resized"] = "center", crop_pct: float = 0.875,
                 scale: Sequence[float] = (0.08, 1.0), ratio: Sequence[float] = (3 / 4, 4 / 3),
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 verify: bool = True) -> None:
        if split not in ("train", "val", "all"):
            raise ValueError(f"split must be 'train', 'val' or 'all', got {split!r}")
        if in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 1 or 3, got {in_chans}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if train_crop not in ("center", "random_resized"):
            raise ValueError(f"train_crop must be 'center' or 'random_resized', got {train_crop!r}")
        self.root, self.image_size, self.split, self.seed = root, int(image_size), split, int(seed)
        self.in_chans, self.crop_pct, self.scale, self.ratio = in_chans, float(crop_pct), tuple(scale), tuple(ratio)
        self.random_crop = train_crop == "random_resized" and split == "train"
        self.classes, all_samples = _scan(root)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.samples = all_samples if split == "all" else self._split(all_samples, val_fraction, split == "val")
        self.targets = [label for _, label in self.samples]
        if verify:  # only this split's files: a train and a val dataset of one tree check each file once
            verify_images([p for p, _ in self.samples], root)
        default_mean, default_std = (IMAGENET_MEAN, IMAGENET_STD) if in_chans == 3 else ((0.5,), (0.5,))
        self.mean = tuple(mean) if mean is not None else default_mean
        self.std = tuple(std) if std is not None else default_std
        self.epoch = 0

    def _split(self, samples: list[tuple[str, int]], val_fraction: float, want_val: bool) -> list[tuple[str, int]]:
        g = torch.Generator().manual_seed(derive_seed(self.seed, len(samples)))
        perm = torch.randperm(len(samples), generator=g)
        labels = torch.tensor([label for _, label in samples])[perm]
        is_val = torch.zeros(len(samples), dtype=torch.bool)
        for c in range(len(self.classes)):  # per class: the first round(f * n_c) of the shuffled rows
            rows = (labels == c).nonzero().flatten()
            is_val[perm[rows[: round(val_fraction * len(rows))]]] = True
        keep = is_val if want_val else ~is_val
        return [s for s, k in zip(samples, keep.tolist()) if k]

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch used to seed random-resized crops."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        return (f"ImageFolderDataset(root={self.root!r}, split={self.split!r}, n={len(self)}, "
                f"classes={len(self.classes)}, image_size={self.image_size}, random_crop={self.random_crop})")

    def _random_box(self, w: int, h: int, index: int) -> tuple[float, float, float, float]:
        g = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, index))
        u = torch.rand((4, 10), generator=g, dtype=torch.float64)
        area = w * h * (self.scale[0] + (self.scale[1] - self.scale[0]) * u[0])
        lo, hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        r = torch.exp(lo + (hi - lo) * u[1])
        cw, ch = torch.sqrt(area * r), torch.sqrt(area / r)
        ok = ((cw <= w) & (ch <= h)).nonzero().flatten()
        if len(ok) == 0:  # fall back to the centre crop of the whole image
            s = min(w, h)
            return (w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2
        i = int(ok[0])
        cw_, ch_ = float(cw[i]), float(ch[i])
        x0, y0 = float(u[2, i]) * (w - cw_), float(u[3, i]) * (h - ch_)
        return x0, y0, x0 + cw_, y0 + ch_

    def load_image(self, index: int) -> Image.Image:
        path = self.samples[index][0]
        try:
            with Image.open(path) as img:
                return img.convert("RGB" if self.in_chans == 3 else "L")
        except (UnidentifiedImageError, OSError) as e:
            raise DatasetCorruptError(f"cannot decode image {path}: {e}") from e

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        img = self.load_image(index)
        s = self.image_size
        if self.random_crop:
            img = img.resize((s, s), Image.BILINEAR, box=self._random_box(img.width, img.height, index))
        else:
            short = round(s / self.crop_pct)
            scale = short / min(img.width, img.height)
            w, h = max(s, round(img.width * scale)), max(s, round(img.height * scale))
            img = img.resize((w, h), Image.BILINEAR)
            left, top = (w - s) // 2, (h - s) // 2
            img = img.crop((left, top, left + s, top + s))
        arr = np.asarray(img, dtype=np.uint8).reshape(s, s, self.in_chans)
        return torch.from_numpy(arr.copy()).permute(2, 0, 1), self.samples[index][1]  # (H, W, C) -> (C, H, W)

    def to_image_dataset(self) -> ImageDataset:
        """Decode every image into memory (for small folders, to use :class:`TensorLoader`)."""
        images = torch.stack([self[i][0] for i in range(len(self))])  # (N, C, H, W)
        return ImageDataset(images, torch.tensor(self.targets, dtype=torch.int64), list(self.classes),
                            os.path.basename(os.path.normpath(self.root)), self.mean, self.std)
