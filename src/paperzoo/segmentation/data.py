"""Semantic-segmentation datasets, joint image/mask transforms and batching (issue 17, "Data, metrics, tools").

Every dataset here gives ``(image, mask)``:

* ``image``: float32 ``(3, H, W)`` RGB in ``[0, 1]``;
* ``mask``: int64 ``(H, W)``, the class of each pixel: 0 is the background, ``1..K-1`` the classes and
  :data:`IGNORE_INDEX` (255) a pixel neither trained on nor scored (VOC's object borders, COCO's crowds);

and carries ``categories`` (``categories[0] == "__background__"``) and ``num_classes`` (``K``, with the background).

Sources:

* **Fashion-MNIST scenes** (:class:`ScenesSegmentation`): the per-instance masks the scenes keep
  (:mod:`paperzoo.detection.scenes`) painted into one map, item class + 1 per pixel. Where two items overlap
  (rare: their boxes have IoU <= 0.3) the item drawn later takes the pixel, so the mask is a function of the scene.
* **COCO** (:class:`CocoSegmentation`): the ``instances_*.json`` is read and checked by
  :class:`~paperzoo.detection.data.CocoDetection` (same one-line errors, same ``skip_invalid``, same labels); each
  annotation's ``segmentation`` (polygons, uncompressed or compressed RLE) is decoded with ``pycocotools.mask``.
  As torchvision's reference (``ConvertCocoPolysToMask``), a pixel covered by two or more instances is 255;
  crowd regions are 255 too (COCOeval ignores them as well).
* **Pascal VOC** (:class:`VOCSegmentation`): ``ImageSets/Segmentation/<set>.txt``, ``JPEGImages/<id>.jpg`` and
  ``SegmentationClass/<id>.png``, a palette ("P") PNG whose indices are the classes, 255 on object borders.

A missing or corrupt file, or a mask whose size differs from its image, raises ``FileNotFoundError`` /
``ValueError`` with one line naming the file.

Randomness: ``dataset[i]`` is a function of ``(transform_seed, epoch, i)`` only, through the seeded-transform
machinery of :class:`~paperzoo.detection.data.DetectionDataset` (its base), so a resumed epoch replays the same
flips and crops. The transforms are tensor ops on the pair; masks are resampled with ``nearest-exact`` (pixel
centres), never blended.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from ..detection.data import (
    BACKGROUND,
    VOC_CLASSES,
    CocoDetection,
    DetectionDataset,
    ScenesDetection,
    _read_image,
    _report,
    pad_images,
)

__all__ = ["IGNORE_INDEX", "SegmentationDataset", "ScenesSegmentation", "CocoSegmentation", "VOCSegmentation",
           "semantic_mask", "paint_instances", "decode_coco_segmentation", "resize_pair", "Resize", "RandomScale",
           "RandomCrop", "RandomHorizontalFlip", "Compose", "collate"]

#: mask value of pixels that are neither trained on nor scored (VOC's border value; torchvision's ignore_index)
IGNORE_INDEX = 255


class SegmentationDataset(DetectionDataset):
    """Base of the segmentation datasets: :meth:`load` returns ``(image, mask)`` instead of a box target.

    It inherits :class:`~paperzoo.detection.data.DetectionDataset`'s seeded transforms (``set_epoch``,
    ``generator``, ``get``, ``__getitem__``), categories and ``num_classes``; the transform takes and returns
    ``(image, mask)``.
    """

    def load(self, index: int) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        raise NotImplementedError

    def coco_dict(self) -> dict:
        raise NotImplementedError("segmentation datasets are scored by mean IoU, not COCOeval")


def _check_pair(image: Tensor, mask: Tensor, where: str) -> None:
    if tuple(image.shape[-2:]) != tuple(mask.shape):
        raise ValueError(f"{where}: mask is {mask.shape[1]}x{mask.shape[0]} but its image is "
                         f"{image.shape[2]}x{image.shape[1]}")


# ---------------------------------------------------------------------------------------------------- scenes


class ScenesSegmentation(SegmentationDataset):
    """The built-in Fashion-MNIST scenes with semantic masks (the same scenes as
    :class:`~paperzoo.detection.data.ScenesDetection` for the same arguments). Labels 1..10 are the Fashion-MNIST
    classes + 1; a pixel two items cover belongs to the one drawn later."""

    def __init__(self, split: str, n: int, *, seed: int = 0, canvas: int = 128, root: str | None = None,
                 transform: Any = None, transform_seed: int = 0, **scene_args: Any) -> None:
        super().__init__(transform, transform_seed)
        self.source = ScenesDetection(split, n, seed=seed, canvas=canvas, root=root, **scene_args)
        self.categories, self.cat_ids = self.source.categories, self.source.cat_ids

    def __len__(self) -> int:
        return len(self.source)

    def load(self, index: int) -> tuple[Tensor, Tensor]:
        image, target = self.source.load(index)
        return image, semantic_mask(target["masks"], target["labels"])


def semantic_mask(masks: Tensor, labels: Tensor) -> Tensor:
    """Instance masks bool ``(k, H, W)`` in drawing order -> class map int64 ``(H, W)``; the last drawn wins."""
    k = masks.shape[0]
    order = torch.arange(1, k + 1)[:, None, None] * masks  # (k, H, W): 1-based drawing index where item covers
    owner = order.amax(0) if k else masks.new_zeros(masks.shape[1:], dtype=torch.int64)  # (H, W), 0 = none
    return torch.cat([labels.new_zeros(1), labels])[owner]


def paint_instances(masks: Tensor, labels: Tensor, iscrowd: Tensor | None = None) -> Tensor:
    """Instance masks bool ``(k, H, W)`` -> class map int64 ``(H, W)`` as torchvision's COCO reference: a pixel of
    one instance takes its label, of two or more :data:`IGNORE_INDEX`; crowd instances are ignored regions."""
    if masks.shape[0] == 0:
        return torch.zeros(masks.shape[1:], dtype=torch.int64)
    out = (masks * labels[:, None, None]).amax(0)  # (H, W)
    out[masks.sum(0) > 1] = IGNORE_INDEX
    if iscrowd is not None and bool(iscrowd.any()):
        out[masks[iscrowd.bool()].any(0)] = IGNORE_INDEX
    return out


# ---------------------------------------------------------------------------------------------------- COCO


def _segmentation_problem(segm: Any, height: int, width: int) -> str | None:
    """Why a COCO ``segmentation`` cannot be decoded at ``height x width``, or None."""
    if isinstance(segm, list):
        if not segm or not all(isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0
                               and all(isinstance(v, (int, float)) and np.isfinite(v) for v in p) for p in segm):
            return "segmentation polygons must be lists of >= 3 (x, y) points"
        return None
    if isinstance(segm, dict) and isinstance(segm.get("counts"), (list, str, bytes)):
        if list(segm.get("size", [])) != [height, width]:
            return f"RLE size {segm.get('size')!r} differs from the image's [height, width] [{height}, {width}]"
        return None
    return f"segmentation must be polygons or RLE {{'size', 'counts'}}, got {str(segm)[:60]}"


def decode_coco_segmentation(segm: Any, height: int, width: int) -> Tensor:
    """One COCO ``segmentation`` (polygons, uncompressed RLE or compressed RLE) as a bool ``(H, W)`` mask."""
    from pycocotools import mask as mask_utils

    if isinstance(segm, list):  # polygons: one RLE per part, merged
        rle = mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
    elif isinstance(segm["counts"], list):  # uncompressed RLE (column-major run lengths)
        rle = mask_utils.frPyObjects(segm, height, width)
    else:  # compressed RLE: pycocotools' string
        rle = segm
    return torch.from_numpy(mask_utils.decode(rle).astype(bool))


class CocoSegmentation(SegmentationDataset):
    """Images of ``image_dir`` with the instance segmentations of a COCO ``instances_*.json`` painted into one
    class map (:func:`paint_instances`). The file is read by :class:`~paperzoo.detection.data.CocoDetection`
    (its checks, ``skip_invalid`` and ``labels`` options); an annotation whose ``segmentation`` is missing or
    malformed, or whose RLE size is not its image's, is an error too (dropped with ``skip_invalid``)."""

    def __init__(self, image_dir: str, ann_file: str, *, skip_invalid: bool = False, labels: str = "contiguous",
                 transform: Any = None, transform_seed: int = 0) -> None:
        super().__init__(transform, transform_seed)
        self.boxes = CocoDetection(image_dir, ann_file, skip_invalid=skip_invalid, labels=labels)
        self.categories, self.cat_ids = self.boxes.categories, self.boxes.cat_ids
        gt = self.boxes.coco_dict()
        label_of = {cat: label for label, cat in self.boxes.label_to_cat.items()}
        by_image: dict[int, list[tuple[Any, int, bool]]] = {img["id"]: [] for img in gt["images"]}
        info = {img["id"]: img for img in gt["images"]}
        problems = []
        for ann in gt["annotations"]:
            img = info[ann["image_id"]]
            problem = _segmentation_problem(ann.get("segmentation"), img["height"], img["width"])
            if problem:
                problems.append((ValueError, f"{ann_file}: annotation id {ann['id']} (image id {img['id']}, "
                                             f"{img['file_name']}): {problem}"))
            else:
                by_image[img["id"]].append((ann["segmentation"], label_of[ann["category_id"]], bool(ann["iscrowd"])))
        _report(problems, skip_invalid, ann_file)
        self._instances = [by_image[img["id"]] for img in gt["images"]]

    def __len__(self) -> int:
        return len(self.boxes)

    def load(self, index: int) -> tuple[Tensor, Tensor]:
        image, _ = self.boxes.load(index)  # checks the file's size against the annotations'
        h, w = image.shape[-2:]
        anns = self._instances[index]
        masks = torch.stack([decode_coco_segmentation(s, h, w) for s, _, _ in anns]) if anns \
            else torch.zeros(0, h, w, dtype=torch.bool)  # (k, H, W)
        labels = torch.tensor([lab for _, lab, _ in anns], dtype=torch.int64)
        return image, paint_instances(masks, labels, torch.tensor([c for _, _, c in anns], dtype=torch.bool))


# ---------------------------------------------------------------------------------------------------- VOC


def _read_index_png(path: str) -> Tensor:
    """A palette ("P") or grey ("L") PNG of class indices as int64 ``(H, W)``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found")
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L"):
                raise ValueError(f"{path}: a {im.mode} image; class masks are palette (P) or grey (L) PNGs of "
                                 "class indices")
            array = np.asarray(im).copy()
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{path}: not a readable image ({e.__class__.__name__})") from None
    return torch.from_numpy(array).long()


class VOCSegmentation(SegmentationDataset):
    """A Pascal VOC segmentation image set (``root`` is e.g. ``VOCdevkit/VOC2012``; layout in the module
    docstring). Labels 1..20 follow :data:`~paperzoo.detection.data.VOC_CLASSES` (or ``classes``); a mask value
    that is neither a class nor 255 is an error."""

    def __init__(self, root: str, image_set: str = "val", *, classes: Sequence[str] = VOC_CLASSES,
                 transform: Any = None, transform_seed: int = 0) -> None:
        super().__init__(transform, transform_seed)
        list_file = os.path.join(root, "ImageSets", "Segmentation", f"{image_set}.txt")
        if not os.path.isfile(list_file):
            raise FileNotFoundError(f"{list_file} not found (VOC layout: ImageSets/Segmentation/<image_set>.txt)")
        with open(list_file) as f:
            self.image_names = [line.split()[0] for line in f if line.strip()]
        self.categories = [BACKGROUND, *classes]
        self.cat_ids = list(range(1, len(classes) + 1))
        self.paths = [(os.path.join(root, "JPEGImages", f"{n}.jpg"), os.path.join(root, "SegmentationClass",
                                                                                 f"{n}.png"))
                      for n in self.image_names]
        for image_path, mask_path in self.paths:  # fail at once, not in the middle of an epoch
            for p in (image_path, mask_path):
                if not os.path.isfile(p):
                    raise FileNotFoundError(f"{list_file}: {p} not found")

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> tuple[Tensor, Tensor]:
        image_path, mask_path = self.paths[index]
        try:
            image = _read_image(image_path)
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f"{image_path}: not a readable image ({e.__class__.__name__})") from None
        mask = _read_index_png(mask_path)
        _check_pair(image, mask, mask_path)
        bad = (mask >= self.num_classes) & (mask != IGNORE_INDEX)
        if bool(bad.any()):
            raise ValueError(f"{mask_path}: value {int(mask[bad][0])} is neither a class (0..{self.num_classes - 1})"
                             f" nor {IGNORE_INDEX}")
        return image, mask


# ---------------------------------------------------------------------------------------------------- transforms


def resize_pair(image: Tensor, mask: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Resize ``(3, H, W)`` bilinearly (antialiased when shrinking) and ``(H, W)`` by nearest pixel centre."""
    (h, w), (nh, nw) = image.shape[-2:], size
    if (nh, nw) == (h, w):
        return image, mask
    image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False,
                          antialias=nh < h or nw < w)[0]
    mask = F.interpolate(mask[None, None].float(), size=size, mode="nearest-exact")[0, 0].long()  # labels <= 255
    return image, mask


def _scaled(h: int, w: int, scale: float) -> tuple[int, int]:
    return max(1, round(h * scale)), max(1, round(w * scale))


class Resize:
    """Resize the pair so the short side is ``size`` pixels (the aspect ratio kept)."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.size = size

    def __call__(self, image: Tensor, mask: Tensor, generator: torch.Generator | None = None
                 ) -> tuple[Tensor, Tensor]:
        h, w = image.shape[-2:]
        return resize_pair(image, mask, _scaled(h, w, self.size / min(h, w)))


class RandomScale:
    """Resize the pair by a factor drawn uniformly from ``[low, high]`` (torchvision's reference draws the short
    side from [0.5, 2] x its base size)."""

    def __init__(self, low: float, high: float) -> None:
        if not 0 < low <= high:
            raise ValueError(f"scale must be (low, high) with 0 < low <= high, got ({low}, {high})")
        self.low, self.high = low, high

    def __call__(self, image: Tensor, mask: Tensor, generator: torch.Generator | None = None
                 ) -> tuple[Tensor, Tensor]:
        s = self.low + (self.high - self.low) * float(torch.rand((), generator=generator))
        return resize_pair(image, mask, _scaled(*image.shape[-2:], s))


class RandomCrop:
    """A random ``size x size`` window; a smaller pair is first padded at the bottom and right (image 0, mask
    :data:`IGNORE_INDEX`, so the padding is never trained on).

    With probability ``foreground`` the window is centred (as far as the image allows) on a foreground pixel drawn
    uniformly from the mask's pixels that are neither background (0) nor ignored: the foreground oversampling of
    nnU-Net (Isensee et al. 2021, "nnU-Net", Sec. 2), one of the ways FCN Sec. 4.3 names to balance classes
    ("by weighting or sampling the loss"). A mask without foreground falls back to a uniform window.
    """

    def __init__(self, size: int, foreground: float = 0.0) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        if not 0.0 <= foreground <= 1.0:
            raise ValueError(f"foreground must be in [0, 1], got {foreground}")
        self.size, self.foreground = size, foreground

    def __call__(self, image: Tensor, mask: Tensor, generator: torch.Generator | None = None
                 ) -> tuple[Tensor, Tensor]:
        h, w = image.shape[-2:]
        ph, pw = max(self.size - h, 0), max(self.size - w, 0)
        if ph or pw:
            image = F.pad(image, (0, pw, 0, ph), value=0.0)
            mask = F.pad(mask, (0, pw, 0, ph), value=IGNORE_INDEX)
        h, w = image.shape[-2:]
        # both draws always happen, so every image consumes the same random stream whichever branch it takes
        centred = float(torch.rand((), generator=generator)) < self.foreground
        u = torch.rand(2, generator=generator)  # (2,) in [0, 1): a foreground pixel's rank, or the corner
        fg = ((mask != 0) & (mask != IGNORE_INDEX)).flatten().nonzero()[:, 0] if centred else None
        if fg is not None and len(fg):
            i = int(fg[int(u[0] * len(fg))])  # a foreground pixel, uniformly
            y = min(max(i // w - self.size // 2, 0), h - self.size)  # centred on it, kept inside the image
            x = min(max(i % w - self.size // 2, 0), w - self.size)
        else:
            y, x = int(u[0] * (h - self.size + 1)), int(u[1] * (w - self.size + 1))
        return image[:, y:y + self.size, x:x + self.size], mask[y:y + self.size, x:x + self.size]


class RandomHorizontalFlip:
    """Mirror image and mask left-right with probability ``p`` (one draw from the generator)."""

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.p = p

    def __call__(self, image: Tensor, mask: Tensor, generator: torch.Generator | None = None
                 ) -> tuple[Tensor, Tensor]:
        if float(torch.rand((), generator=generator)) >= self.p:
            return image, mask
        return image.flip(-1), mask.flip(-1)


class Compose:
    """Apply pair transforms in order, all drawing from the same generator."""

    def __init__(self, transforms: Sequence[Any]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: Tensor, mask: Tensor, generator: torch.Generator | None = None
                 ) -> tuple[Tensor, Tensor]:
        for t in self.transforms:
            image, mask = t(image, mask, generator)
        return image, mask


# ---------------------------------------------------------------------------------------------------- batching


def collate(batch: Sequence[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """Stack pairs into images ``(B, 3, H, W)`` and masks ``(B, H, W)``; pairs smaller than the largest are
    padded at the bottom and right, masks with :data:`IGNORE_INDEX`, so padding is never trained on nor scored."""
    images, _ = pad_images([im for im, _ in batch], fill=0.0)
    masks, _ = pad_images([m[None] for _, m in batch], fill=IGNORE_INDEX)  # (B, 1, H, W)
    return images, masks[:, 0]
