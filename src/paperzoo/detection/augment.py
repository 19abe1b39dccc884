"""Detection augmentations: pair transforms that move the boxes (and masks) with the pixels.

Each takes ``(image, target, generator)`` (the :class:`~paperzoo.detection.data.PairTransform` protocol) and draws
its randomness only from ``generator``, so a dataset's ``item i`` stays a function of ``(seed, epoch, i)``.

* :class:`RandomHorizontalFlip` and :class:`RandomResize`: the flip and resize augmentation of issue 15 (Faster
  R-CNN's training flips; torchvision's multi-scale resize);
* :class:`RandomScaleTranslate` and :class:`RandomExposureSaturation`: YOLO's augmentation (Redmon et al. 2016,
  "You Only Look Once", arXiv:1506.02640, Sec. 2.2);
* :class:`Compose`: several in order, one generator.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .boxes import box_area, clip_boxes_to_image
from .data import PairTransform, Target

__all__ = ["BOX_KEYS", "MIN_VISIBLE", "hflip_boxes", "RandomHorizontalFlip", "RandomResize", "affine_boxes",
           "RandomScaleTranslate", "RandomExposureSaturation", "Compose"]

#: target entries holding xyxy boxes in image pixels, moved by the geometric transforms
BOX_KEYS = ("boxes", "proposals")


def hflip_boxes(boxes: Tensor, width: int) -> Tensor:
    """Mirror xyxy boxes ``(N, 4)`` in an image ``width`` pixels wide: ``x1' = W - x2``, ``x2' = W - x1``."""
    flipped = boxes[:, [2, 1, 0, 3]]  # (x2, y1, x1, y2)
    return flipped * flipped.new_tensor([-1.0, 1.0, -1.0, 1.0]) + flipped.new_tensor([width, 0.0, width, 0.0])


class RandomHorizontalFlip:
    """Mirror the image, its boxes and masks left-right with probability ``p`` (one draw from the generator)."""

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.p = p

    def __call__(self, image: Tensor, target: Target, generator: torch.Generator | None = None
                 ) -> tuple[Tensor, Target]:
        if float(torch.rand((), generator=generator)) >= self.p:
            return image, target
        # every box-valued entry moves: the ground truth and, for R-CNN / Fast R-CNN, the region proposals
        target = {**target, **{k: hflip_boxes(target[k], image.shape[-1]) for k in BOX_KEYS if k in target}}
        if "masks" in target:
            target["masks"] = target["masks"].flip(-1)
        return image.flip(-1), target

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class RandomResize:
    """Resize so the short side is one of ``sizes`` (uniform draw), the long side at most ``max_size``.

    The image is resampled bilinearly (antialiased when shrinking); boxes are scaled by the exact per-axis
    factors ``(W' / W, H' / H)`` of the rounded new size, and masks resampled with ``nearest-exact`` (pixel
    centres), so integer factors keep masks and boxes aligned to the pixel.
    """

    def __init__(self, sizes: Sequence[int], max_size: int | None = None) -> None:
        if not sizes or min(sizes) < 1 or (max_size is not None and max_size < 1):
            raise ValueError(f"sizes must be positive integers (and max_size >= 1), got {sizes}, {max_size}")
        self.sizes, self.max_size = list(sizes), max_size

    def new_size(self, height: int, width: int, short: int) -> tuple[int, int]:
        """(H', W') for a short side of ``short`` capped by ``max_size``."""
        scale = short / min(height, width)
        if self.max_size is not None:
            scale = min(scale, self.max_size / max(height, width))
        return max(1, round(height * scale)), max(1, round(width * scale))

    def __call__(self, image: Tensor, target: Target, generator: torch.Generator | None = None
                 ) -> tuple[Tensor, Target]:
        short = self.sizes[int(torch.randint(len(self.sizes), (1,), generator=generator))]
        (h, w), (nh, nw) = image.shape[-2:], self.new_size(*image.shape[-2:], short)
        if (nh, nw) == (h, w):
            return image, target
        image = F.interpolate(image[None], size=(nh, nw), mode="bilinear", align_corners=False,
                              antialias=nh < h or nw < w)[0]
        scale = torch.tensor([nw / w, nh / h, nw / w, nh / h])
        target = {**target, **{k: target[k] * scale for k in BOX_KEYS if k in target}}
        if "masks" in target:
            masks = target["masks"]
            target["masks"] = (F.interpolate(masks[None].float(), size=(nh, nw), mode="nearest-exact")[0] > 0.5
                               if len(masks) else masks.new_zeros(0, nh, nw))
        return image, target

    def __repr__(self) -> str:
        return f"RandomResize(sizes={self.sizes}, max_size={self.max_size})"


#: an augmented box is kept when at least this fraction of its area stays inside the image (after clipping)
MIN_VISIBLE = 0.25


def affine_boxes(boxes: Tensor, scale: float, shift: tuple[float, float], size: tuple[int, int]) -> Tensor:
    """Move xyxy boxes ``(N, 4)`` as :class:`RandomScaleTranslate` moves the pixels of an ``(H, W) = size`` image:
    ``x' = s (x - W/2) + W/2 + t_x``, ``y' = s (y - H/2) + H/2 + t_y`` (pixel edges; not clipped)."""
    height, width = size
    centre = boxes.new_tensor([width / 2, height / 2, width / 2, height / 2])
    return (boxes - centre) * scale + centre + boxes.new_tensor([shift[0], shift[1], shift[0], shift[1]])


class RandomScaleTranslate:
    """YOLO's geometric augmentation (Redmon et al. 2016, arXiv:1506.02640, Sec. 2.2): "random scaling and
    translations of up to 20% of the original image size".

    One scale factor ``s ~ U(1 - scale, 1 + scale)`` about the image centre and a shift ``t ~ U(-translate,
    translate)`` times the width (height) per axis, drawn from the generator (3 draws); the image keeps its size.
    Pixels are resampled by one ``grid_sample`` (bilinear, pixel-edge coordinates: ``align_corners=False``, so
    the boxes of :func:`affine_boxes` follow the pixels exactly); uncovered pixels get ``fill``. Masks are
    resampled with ``nearest``.

    Box rule: every box is clipped to the image; a ground-truth box that keeps less than ``min_visible`` of its
    area inside (or no area at all) is dropped with its label and mask. Region proposals (``"proposals"``) are
    clipped and dropped only when empty. ``scale = translate = 0`` is the identity (and draws nothing).
    """

    def __init__(self, scale: float = 0.2, translate: float = 0.2, min_visible: float = MIN_VISIBLE,
                 fill: float = 0.0) -> None:
        if not (0.0 <= scale < 1.0 and 0.0 <= translate <= 1.0 and 0.0 <= min_visible <= 1.0):
            raise ValueError(f"need 0 <= scale < 1, 0 <= translate <= 1, 0 <= min_visible <= 1; got {scale}, "
                             f"{translate}, {min_visible}")
        self.scale, self.translate, self.min_visible, self.fill = scale, translate, min_visible, fill

    def draw(self, generator: torch.Generator | None = None) -> tuple[float, float, float]:
        """``(s, t_x, t_y)``: the scale factor and the shift as fractions of the width and height."""
        u = torch.rand(3, generator=generator) * 2 - 1  # U(-1, 1)
        return 1.0 + self.scale * float(u[0]), self.translate * float(u[1]), self.translate * float(u[2])

    def __call__(self, image: Tensor, target: Target, generator: torch.Generator | None = None
                 ) -> tuple[Tensor, Target]:
        if self.scale == 0 and self.translate == 0:
            return image, target
        s, tx, ty = self.draw(generator)
        height, width = image.shape[-2:]
        # grid_sample reads the output pixel at normalised u' (u = 2x / W - 1) from the input at u = (u' - 2 t) / s
        theta = torch.tensor([[[1 / s, 0.0, -2 * tx / s], [0.0, 1 / s, -2 * ty / s]]])  # (1, 2, 3)
        grid = F.affine_grid(theta, [1, 1, height, width], align_corners=False)  # (1, H, W, 2)
        shifted = (image - self.fill)[None]  # zero padding outside = fill
        image = F.grid_sample(shifted, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0] + self.fill
        target = dict(target)
        shift = (tx * width, ty * height)
        if "proposals" in target:
            p = clip_boxes_to_image(affine_boxes(target["proposals"], s, shift, (height, width)), (height, width))
            target["proposals"] = p[(p[:, 2] > p[:, 0]) & (p[:, 3] > p[:, 1])]
        boxes = affine_boxes(target["boxes"], s, shift, (height, width))
        clipped = clip_boxes_to_image(boxes, (height, width))
        visible = box_area(clipped)
        keep = (visible > 0) & (visible >= self.min_visible * box_area(boxes))  # (N,)
        target["boxes"], target["labels"] = clipped[keep], target["labels"][keep]
        if "masks" in target:
            masks = target["masks"][keep]
            target["masks"] = (F.grid_sample(masks[:, None].float(), grid.expand(len(masks), -1, -1, -1),
                                             mode="nearest", align_corners=False)[:, 0] > 0.5
                               if len(masks) else masks)
        return image, target

    def __repr__(self) -> str:
        return f"RandomScaleTranslate(scale={self.scale}, translate={self.translate}, min_visible={self.min_visible})"


def _log_uniform(factor: float, generator: torch.Generator | None) -> float:
    """A factor in ``[1 / factor, factor]``, its logarithm uniform (as likely to darken as to brighten)."""
    return math.exp(math.log(factor) * (float(torch.rand((), generator=generator)) * 2 - 1))


class RandomExposureSaturation:
    """YOLO's photometric augmentation (Sec. 2.2): "randomly adjust the exposure and saturation of the image by up
    to a factor of 1.5 in the HSV color space".

    Two draws, ``e`` and ``f``, each log-uniform in ``[1 / factor, factor]``. In HSV, ``V = max(R, G, B)`` and
    ``S = (V - min) / V``; scaling S by ``f`` at fixed H and V maps each channel to ``V - f (V - c)``, and
    scaling V by ``e`` at fixed H and S maps it to ``e c``. Both are clipped in HSV (``S, V <= 1``, so the hue
    never shifts) and computed on the RGB tensor directly. On a gray image (R = G = B, S = 0) only the exposure
    acts: ``min(e c, 1)``. Boxes are untouched; factors of 1 are the identity (and draw nothing).
    """

    def __init__(self, exposure: float = 1.5, saturation: float = 1.5) -> None:
        if exposure < 1 or saturation < 1:
            raise ValueError(f"exposure and saturation are factors >= 1 (1: off), got {exposure}, {saturation}")
        self.exposure, self.saturation = exposure, saturation

    def __call__(self, image: Tensor, target: Target, generator: torch.Generator | None = None
                 ) -> tuple[Tensor, Target]:
        if self.exposure == 1 and self.saturation == 1:
            return image, target
        value = image.amax(0, keepdim=True)  # (1, H, W): V
        if self.saturation != 1:
            f = _log_uniform(self.saturation, generator)
            chroma = value - image.amin(0, keepdim=True)  # V * S
            # S' = min(f S, 1): the factor is at most V / (V - min) = 1 / S where S > 0
            f_eff = torch.where(chroma > 0, (value / chroma.clamp_min(1e-12)).clamp(max=f), f)
            image = value - f_eff * (value - image)
        if self.exposure != 1:
            e = _log_uniform(self.exposure, generator)
            # V' = min(e V, 1): every channel by the same factor, at most 1 / V
            image = image * torch.where(value > 0, (1 / value.clamp_min(1e-12)).clamp(max=e), e)
        return image, target

    def __repr__(self) -> str:
        return f"RandomExposureSaturation(exposure={self.exposure}, saturation={self.saturation})"


class Compose:
    """Apply pair transforms in order, all drawing from the same generator."""

    def __init__(self, transforms: Sequence[PairTransform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: Tensor, target: Target, generator: torch.Generator | None = None
                 ) -> tuple[Tensor, Target]:
        for t in self.transforms:
            image, target = t(image, target, generator)
        return image, target

    def __repr__(self) -> str:
        return f"Compose({self.transforms})"
