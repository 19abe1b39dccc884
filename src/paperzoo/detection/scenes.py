"""Fashion-MNIST scenes: a built-in detection dataset made of real images (issue 15, "Data and metrics").

Nothing can be downloaded here, so detection is trained and scored on canvases that hold 1-6 Fashion-MNIST items
(Xiao et al. 2017, arXiv:1708.07747) at random scales and places:

* Each item is resized with antialiasing to ``round(28 * s)`` pixels, ``s`` uniform in ``scale``, and pasted
  whole inside the canvas. Items are composited with ``max``: the background is dark (0) and items are bright,
  as in Fashion-MNIST itself, so an overlap shows both items rather than one hiding the other.
* An item's **mask** is its own pixels above :data:`MASK_THRESHOLD` after scaling and placing, and its **box** is
  the tight ``xyxy`` box of that mask (pixel-edge convention: a one-pixel mask at (x, y) has box
  ``(x, y, x + 1, y + 1)``), not the pasted 28-pixel-multiple square, whose dark margins hold no object.
* Overlap is limited by rejection sampling: the IoU of any two item boxes is at most ``max_overlap``. Each item
  tries :data:`PLACEMENT_TRIES` random positions at once (one tensor op) and takes the first that fits; an item
  that fits nowhere is redrawn (another image and scale) a bounded number of times, then generation fails
  loudly instead of silently returning fewer items.
* Labels follow COCO: 0 is the background, category ids 1..10 are the Fashion-MNIST classes + 1.
* Train scenes use only the train split's items, test scenes only the test split's; ``item_indices`` records
  which image of that split each instance is. Everything is drawn from one seeded ``torch.Generator``, so the
  same arguments give identical tensors, whatever the global RNG state.

:meth:`Scenes.to_coco` writes the scenes in COCO's layout (PNG images + ``instances_<split>.json``) so that
standard tools (pycocotools, torchvision's ``CocoDetection``) read them.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from ..data.datasets import FASHION_MNIST_CLASSES, load_image_dataset
from .boxes import box_iou

__all__ = ["MASK_THRESHOLD", "PLACEMENT_TRIES", "Scenes", "make_scenes", "mask_to_rle"]

#: A pixel belongs to an item when its resized intensity exceeds this (of 255): ~10%, which keeps the faint
#: antialiased fringe out of the box and mask.
MASK_THRESHOLD = 25
#: Random positions tried at once for each item before it is redrawn.
PLACEMENT_TRIES = 64
#: Times an item that fits nowhere is redrawn (new image and scale) before generation gives up.
_MAX_REDRAWS = 20
_ITEM_SIZE = 28  # Fashion-MNIST images are 28 x 28


@dataclass
class Scenes:
    """``n`` generated scenes of one split; per-scene lists hold one entry per item (instance).

    Attributes:
        images: uint8 (n, 1, H, W).
        boxes: per scene, float32 (k, 4) tight ``xyxy`` boxes of the masks, integer-valued.
        labels: per scene, int64 (k,) COCO category ids 1..10 (Fashion-MNIST class + 1).
        masks: per scene, bool (k, H, W) instance masks (the item's own pixels, even where a brighter item
            overlaps it).
        item_indices: per scene, int64 (k,) index of each item's image in its split of Fashion-MNIST.
        paste_boxes: per scene, int64 (k, 4) ``xyxy`` square where each resized item was pasted.
        split: ``"train"`` or ``"test"``.
        categories: category names; id ``i`` is ``categories[i - 1]``.
    """

    images: Tensor
    boxes: list[Tensor]
    labels: list[Tensor]
    masks: list[Tensor]
    item_indices: list[Tensor]
    paste_boxes: list[Tensor]
    split: str
    categories: list[str]

    def __len__(self) -> int:
        return self.images.shape[0]

    def __repr__(self) -> str:  # the dataclass default would print every pixel
        n_items = sum(len(b) for b in self.boxes)
        return f"Scenes(split={self.split!r}, images={tuple(self.images.shape)}, items={n_items})"

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Tensor]]:
        """Scene ``i`` as ``(image, target)`` with torchvision's detection keys: boxes, labels, masks."""
        return self.images[i], {"boxes": self.boxes[i], "labels": self.labels[i], "masks": self.masks[i]}

    def to_coco(self, directory: str) -> str:
        """Write COCO's layout: ``directory/<split>/<image id:06d>.png`` and ``directory/instances_<split>.json``.

        Image and annotation ids start at 1 (pycocotools treats id 0 as "no match"); ``file_name`` is relative
        to ``directory/<split>``, as in COCO itself. Each annotation has ``bbox`` in ``xywh``, ``area`` = mask
        pixel count, ``iscrowd`` 0 and the mask as uncompressed RLE (:func:`mask_to_rle`). Returns the JSON path.
        """
        image_dir = os.path.join(directory, self.split)
        os.makedirs(image_dir, exist_ok=True)
        height, width = self.images.shape[-2:]
        images, annotations = [], []
        for i in range(len(self)):
            image_id = i + 1
            file_name = f"{image_id:06d}.png"
            Image.fromarray(self.images[i, 0].numpy()).save(os.path.join(image_dir, file_name))
            images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
            for box, label, mask in zip(self.boxes[i].tolist(), self.labels[i].tolist(), self.masks[i]):
                x1, y1, x2, y2 = box
                annotations.append({
                    "id": len(annotations) + 1, "image_id": image_id, "category_id": label,
                    "bbox": [x1, y1, x2 - x1, y2 - y1], "area": int(mask.sum()), "iscrowd": 0,
                    "segmentation": mask_to_rle(mask),
                })
        categories = [{"id": c + 1, "name": name, "supercategory": "fashion"} for c, name in enumerate(self.categories)]
        coco = {"info": {"description": f"paperzoo Fashion-MNIST scenes ({self.split})"}, "licenses": [],
                "images": images, "annotations": annotations, "categories": categories}
        path = os.path.join(directory, f"instances_{self.split}.json")
        with open(path, "w") as f:
            json.dump(coco, f)
        return path


def mask_to_rle(mask: Tensor) -> dict:
    """COCO's uncompressed RLE of a bool (H, W) mask: run lengths in column-major order, starting with zeros."""
    flat = mask.t().reshape(-1)  # COCO counts down the columns (Fortran order)
    change = (flat[1:] != flat[:-1]).nonzero().flatten() + 1  # index where each new run starts
    edges = torch.cat((torch.tensor([0]), change, torch.tensor([flat.numel()])))
    counts = (edges[1:] - edges[:-1]).tolist()
    if flat.numel() and flat[0]:  # the first run must count zeros, so a mask starting with 1 opens with 0
        counts.insert(0, 0)
    return {"counts": counts, "size": list(mask.shape)}


@functools.lru_cache(maxsize=4)
def _items(split: str, root: str | None) -> tuple[Tensor, Tensor]:
    """The split's images (N, 28, 28) as float and labels; cached because reading the train split takes ~1.5 s."""
    ds = load_image_dataset("fashion_mnist", split, root)
    return ds.images[:, 0].float(), ds.labels


def _tight_box(mask: Tensor) -> Tensor | None:
    """Tight ``xyxy`` box (pixel edges) of a bool (h, w) mask, or None if it is empty."""
    ys, xs = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
    if len(ys) == 0:
        return None
    return torch.tensor([xs[0], ys[0], xs[-1] + 1, ys[-1] + 1], dtype=torch.float32)


def _draw_item(images: Tensor, scale: tuple[float, float], g: torch.Generator) -> tuple[int, Tensor]:
    """A random item of the split, resized with antialiasing to a random scale: (index, uint8-valued (s, s))."""
    index = int(torch.randint(len(images), (1,), generator=g))
    s = scale[0] + (scale[1] - scale[0]) * float(torch.rand((), generator=g))
    side = max(1, round(_ITEM_SIZE * s))
    resized = F.interpolate(images[index][None, None], size=(side, side), mode="bilinear", antialias=True,
                            align_corners=False)[0, 0]
    # numpy's round (half to even, as torch's): torch.round of an item over ~45 px goes multi-threaded and stalls
    # 5-20 ms on a busy 2-core machine, 10x the whole scene's cost
    return index, torch.from_numpy(np.round(resized.numpy())).clamp(0, 255)


def _place(local_box: Tensor, side: int, placed: Tensor, canvas: int, max_overlap: float,
           g: torch.Generator) -> Tensor | None:
    """Offset (x, y) for an item whose square is ``side`` wide and whose local box is ``local_box``, such that
    its placed box has IoU <= max_overlap with every box in ``placed`` (k, 4); the first of PLACEMENT_TRIES
    random offsets that fits, or None."""
    offsets = torch.randint(canvas - side + 1, (PLACEMENT_TRIES, 2), generator=g)  # (T, 2) as (x, y)
    candidates = local_box + offsets.repeat(1, 2)  # (T, 4)
    if len(placed) == 0:
        return offsets[0]
    fits = (box_iou(candidates, placed) <= max_overlap).all(1)  # (T,)
    return offsets[fits.int().argmax()] if fits.any() else None


def _make_scene(images: Tensor, canvas: int, n_items: int, scale: tuple[float, float], max_overlap: float,
                g: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One scene: image (H, W) uint8, boxes (k, 4), masks (k, H, W), item indices (k,), paste boxes (k, 4)."""
    image = torch.zeros(canvas, canvas)
    boxes, masks, indices, pastes = [], [], [], []
    for _ in range(n_items):
        for _ in range(_MAX_REDRAWS):
            index, item = _draw_item(images, scale, g)
            local_mask = item > MASK_THRESHOLD
            local_box = _tight_box(local_mask)
            if local_box is None:  # shrunk to nothing visible: draw another
                continue
            side = item.shape[0]
            xy = _place(local_box, side, torch.stack(boxes) if boxes else torch.zeros(0, 4), canvas, max_overlap, g)
            if xy is not None:
                break
        else:
            raise RuntimeError(f"could not place {n_items} items with max_overlap={max_overlap} on a {canvas}-pixel "
                               f"canvas after {_MAX_REDRAWS} redraws: lower max_items or scale, or raise max_overlap")
        x, y = int(xy[0]), int(xy[1])
        region = (slice(y, y + side), slice(x, x + side))
        image[region] = torch.maximum(image[region], item)  # max compositing: dark background, bright items
        mask = torch.zeros(canvas, canvas, dtype=torch.bool)
        mask[region] = local_mask
        boxes.append(local_box + torch.tensor([x, y, x, y], dtype=torch.float32))
        masks.append(mask)
        indices.append(index)
        pastes.append([x, y, x + side, y + side])
    return (image.to(torch.uint8), torch.stack(boxes), torch.stack(masks), torch.tensor(indices),
            torch.tensor(pastes))


def _check_args(split: str, n: int, canvas: int, min_items: int, max_items: int, scale: tuple[float, float],
                max_overlap: float) -> None:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 1 <= min_items <= max_items:
        raise ValueError(f"need 1 <= min_items <= max_items, got min_items={min_items}, max_items={max_items}")
    if not 0 < scale[0] <= scale[1]:
        raise ValueError(f"scale must be (low, high) with 0 < low <= high, got {scale}")
    if round(_ITEM_SIZE * scale[1]) > canvas:
        raise ValueError(f"items up to {round(_ITEM_SIZE * scale[1])} pixels do not fit a {canvas}-pixel canvas")
    if not 0.0 <= max_overlap <= 1.0:
        raise ValueError(f"max_overlap must be in [0, 1], got {max_overlap}")


def make_scenes(split: str, n: int, *, canvas: int = 128, min_items: int = 1, max_items: int = 6,
                scale: tuple[float, float] = (0.6, 2.0), max_overlap: float = 0.3, seed: int = 0,
                root: str | None = None) -> Scenes:
    """Generate ``n`` Fashion-MNIST scenes from the items of ``split`` (see the module docstring).

    Args:
        split: ``"train"`` or ``"test"``: the Fashion-MNIST split the items come from.
        n: number of scenes.
        canvas: side of the square canvas in pixels.
        min_items, max_items: each scene holds a uniform random number of items in this range.
        scale: (low, high) of the uniform item scale; 1.0 is Fashion-MNIST's 28 pixels.
        max_overlap: largest IoU allowed between the boxes of two items in one scene.
        seed: seed of the private generator; same arguments give identical scenes.
        root: Fashion-MNIST directory (None: ``$PAPERZOO_DATA`` or Debian's location).

    Raises:
        ValueError: bad arguments. RuntimeError: the items cannot be placed within ``max_overlap``.
    """
    _check_args(split, n, canvas, min_items, max_items, scale, max_overlap)
    images, classes = _items(split, root)
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(min_items, max_items + 1, (n,), generator=g)
    out = Scenes(torch.zeros(n, 1, canvas, canvas, dtype=torch.uint8), [], [], [], [], [], split,
                 list(FASHION_MNIST_CLASSES))
    for i in range(n):  # once per dataset; ~1 ms a scene
        image, boxes, masks, indices, pastes = _make_scene(images, canvas, int(counts[i]), scale, max_overlap, g)
        out.images[i, 0] = image
        out.boxes.append(boxes)
        out.labels.append(classes[indices] + 1)  # COCO: 0 is the background
        out.masks.append(masks)
        out.item_indices.append(indices)
        out.paste_boxes.append(pastes)
    return out
