"""The detector's input transform: normalize, resize, pad into one batch; and map the boxes back afterwards.

Faster R-CNN (Ren et al. 2015, arXiv:1506.01497) Sec. 3.3 rescales every image so that its shorter side is
``s = 600`` pixels; FPN (Lin et al. 2017, arXiv:1612.03144) Sec. 4.1 uses 800, and Detectron added a cap on the
longer side (1333 for 800) so that elongated images stay affordable. The scale is therefore

    scale = min(min_size / short_side, max_size / long_side)

and the network sees a batch padded with zeros (at the bottom and right, so box coordinates do not move) to a
common size that is a multiple of ``size_divisible`` (32 = the coarsest FPN stride, so every level's grid
divides the image exactly).

Arithmetic follows torchvision's ``GeneralizedRCNNTransform`` (eager mode) so that its checkpoints see the same
pixels: the scale is a Python float, ``F.interpolate(scale_factor=scale, mode="bilinear", align_corners=False,
recompute_scale_factor=True)`` gives an output of ``floor(side * scale)`` pixels (a 480x640 image becomes 800x1066,
a 333x500 one 800x1201), and boxes are scaled by ``new_side / old_side`` per axis in float32.

Deviations from torchvision:

* ``fixed_size`` is ``(height, width)``, as everywhere in paperzoo (torchvision reads its argument as
  ``(width, height)``); it is only used by fixed-size detectors such as SSD.
* bad input (not a list of float ``(C, H, W)`` images with ``len(image_mean)`` channels, a target without
  ``(N, 4)`` boxes) raises ``ValueError`` with one line naming the image;
* neither the targets nor the detections given to :meth:`DetectionTransform.postprocess` are modified in place.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ImageList", "DetectionTransform", "resize_scale", "resize_boxes", "batch_images"]


@dataclass
class ImageList:
    """A padded batch and the size of each image inside it.

    Attributes:
        tensors: ``(B, C, H, W)``, every image at the top-left corner, zeros elsewhere.
        image_sizes: per image, ``(height, width)`` after resizing and before padding: the region that holds
            pixels, to which proposals and detections are clipped.
    """

    tensors: Tensor
    image_sizes: list[tuple[int, int]]

    def to(self, device: torch.device | str) -> ImageList:
        return ImageList(self.tensors.to(device), list(self.image_sizes))


def resize_scale(height: int, width: int, min_size: float, max_size: float) -> float:
    """The factor that brings the shorter side to ``min_size`` unless the longer side would exceed ``max_size``."""
    return min(min_size / min(height, width), max_size / max(height, width))


def resize_boxes(boxes: Tensor, original_size: tuple[int, int], new_size: tuple[int, int]) -> Tensor:
    """Scale xyxy ``boxes`` (N, 4) from an image of ``original_size`` (H, W) to one of ``new_size`` (H', W').

    The ratios are ``H' / H`` and ``W' / W`` in float32 (torchvision's), not the interpolation's scale factor:
    the pixel grid was rounded down, and this maps the image's borders exactly onto each other.
    """
    ratio_h, ratio_w = (
        torch.tensor(new, dtype=torch.float32, device=boxes.device)
        / torch.tensor(old, dtype=torch.float32, device=boxes.device)
        for new, old in zip(new_size, original_size)
    )
    x1, y1, x2, y2 = boxes.unbind(1)
    return torch.stack((x1 * ratio_w, y1 * ratio_h, x2 * ratio_w, y2 * ratio_h), dim=1)


def batch_images(images: Sequence[Tensor], size_divisible: int = 32) -> Tensor:
    """Stack ``(C, H_i, W_i)`` images into ``(B, C, H, W)``, zero-padded at the bottom and right.

    ``H`` and ``W`` are the largest height and width rounded up to a multiple of ``size_divisible``.
    """
    channels = images[0].shape[0]
    height = int(math.ceil(max(img.shape[1] for img in images) / size_divisible) * size_divisible)
    width = int(math.ceil(max(img.shape[2] for img in images) / size_divisible) * size_divisible)
    batch = images[0].new_zeros((len(images), channels, height, width))
    for img, slot in zip(images, batch):
        slot[:, : img.shape[1], : img.shape[2]].copy_(img)
    return batch


class DetectionTransform(nn.Module):
    """Normalize, resize and batch detection inputs; :meth:`postprocess` maps the detections back.

    Args:
        min_size: the target length of the shorter side; a sequence of several (e.g. ``(640, 672, ..., 800)``)
            is multi-scale training: each training image draws one uniformly, evaluation uses the last.
        max_size: the cap on the longer side.
        image_mean: per-channel mean subtracted after the image is read in [0, 1] (ImageNet's for its backbones).
        image_std: per-channel standard deviation divided by.
        size_divisible: the padded batch's height and width are multiples of it.
        fixed_size: ``(height, width)`` every image is resized to, ignoring the aspect ratio; None keeps it.

    It has no parameters or buffers, like torchvision's, so state dicts are unaffected.
    """

    def __init__(
        self,
        min_size: int | Sequence[int],
        max_size: int,
        image_mean: Sequence[float],
        image_std: Sequence[float],
        size_divisible: int = 32,
        fixed_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.min_size = tuple(min_size) if isinstance(min_size, Sequence) else (min_size,)
        if not self.min_size or len(image_mean) != len(image_std) or size_divisible < 1:
            raise ValueError(
                f"need at least one min_size, as many image_std as image_mean and size_divisible >= 1, got "
                f"min_size={min_size}, {len(image_mean)} means, {len(image_std)} stds, size_divisible={size_divisible}"
            )
        self.max_size = max_size
        self.image_mean = tuple(float(m) for m in image_mean)
        self.image_std = tuple(float(s) for s in image_std)
        self.size_divisible = size_divisible
        self.fixed_size = fixed_size

    def forward(
        self, images: Sequence[Tensor], targets: Sequence[dict[str, Tensor]] | None = None
    ) -> tuple[ImageList, list[dict[str, Tensor]] | None]:
        """Images ``[(C, H_i, W_i)]`` (float in [0, 1]) and optional targets -> a padded :class:`ImageList` and
        new target dicts whose ``"boxes"`` (and ``"masks"``, if any) follow the resize."""
        self._check(images, targets)
        resized, new_targets = [], None if targets is None else []
        for i, image in enumerate(images):
            image, target = self.resize(self.normalize(image), None if targets is None else dict(targets[i]))
            resized.append(image)
            if new_targets is not None:
                new_targets.append(target)
        image_sizes = [(int(img.shape[1]), int(img.shape[2])) for img in resized]
        return ImageList(batch_images(resized, self.size_divisible), image_sizes), new_targets

    def _check(self, images: Sequence[Tensor], targets: Sequence[dict[str, Tensor]] | None) -> None:
        if isinstance(images, Tensor) or len(images) == 0:
            raise ValueError("DetectionTransform expects a non-empty list of (C, H, W) image tensors")
        for i, image in enumerate(images):
            if image.dim() != 3 or image.shape[0] != len(self.image_mean) or 0 in image.shape:
                raise ValueError(
                    f"image {i}: expected a ({len(self.image_mean)}, H, W) tensor, got shape {tuple(image.shape)}"
                )
            if not image.is_floating_point():
                raise ValueError(f"image {i}: expected a float image with values in [0, 1], got dtype {image.dtype}")
        if targets is None:
            return
        if len(targets) != len(images):
            raise ValueError(f"got {len(targets)} targets for {len(images)} images")
        for i, target in enumerate(targets):
            boxes = target.get("boxes")
            if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[1] != 4:
                shape = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
                raise ValueError(f"target {i}: 'boxes' must be an (N, 4) tensor, got {shape}")

    def normalize(self, image: Tensor) -> Tensor:
        """``(image - mean) / std`` per channel, in the image's dtype."""
        mean = torch.as_tensor(self.image_mean, dtype=image.dtype, device=image.device)
        std = torch.as_tensor(self.image_std, dtype=image.dtype, device=image.device)
        return (image - mean[:, None, None]) / std[:, None, None]

    def _draw_min_size(self) -> float:
        """Training: one of ``min_size`` uniformly, from torch's global RNG (one draw, even for a single size, as
        torchvision draws, so a seeded run consumes the same random numbers). Evaluation: the last one."""
        if not self.training:
            return float(self.min_size[-1])
        index = int(torch.empty(1).uniform_(0.0, float(len(self.min_size))).item())
        return float(self.min_size[index])

    def resize(self, image: Tensor, target: dict[str, Tensor] | None = None
               ) -> tuple[Tensor, dict[str, Tensor] | None]:
        """Resize one normalized ``(C, H, W)`` image; ``target`` (a dict this method may overwrite) follows."""
        height, width = image.shape[-2:]
        if self.fixed_size is not None:
            size, scale = list(self.fixed_size), None
        else:
            size, scale = None, resize_scale(height, width, self._draw_min_size(), float(self.max_size))
        # recompute_scale_factor: the output is floor(side * scale) pixels and the kernel then samples with the
        # exact ratio old / new side, which is what the boxes are scaled by below.
        recompute = None if scale is None else True
        image = F.interpolate(image[None], size=size, scale_factor=scale, mode="bilinear", align_corners=False,
                              recompute_scale_factor=recompute)[0]
        if target is None:
            return image, None
        target["boxes"] = resize_boxes(target["boxes"], (height, width), (image.shape[1], image.shape[2]))
        if "masks" in target:  # (N, H, W) instance masks: nearest neighbour keeps them binary
            masks = F.interpolate(target["masks"][:, None].float(), size=size, scale_factor=scale,
                                  recompute_scale_factor=recompute)
            target["masks"] = masks[:, 0].to(torch.uint8)
        return image, target

    def postprocess(
        self,
        detections: Sequence[dict[str, Tensor]],
        image_sizes: Sequence[tuple[int, int]],
        original_sizes: Sequence[tuple[int, int]],
    ) -> list[dict[str, Tensor]]:
        """New detection dicts whose ``"boxes"`` go from the resized image (``image_sizes``) back to the original
        one (``original_sizes``), both ``(height, width)``; every other entry is passed through."""
        return [
            {**det, "boxes": resize_boxes(det["boxes"], resized, original)}
            for det, resized, original in zip(detections, image_sizes, original_sizes)
        ]

    def extra_repr(self) -> str:
        return (f"min_size={self.min_size}, max_size={self.max_size}, mean={self.image_mean}, std={self.image_std}, "
                f"size_divisible={self.size_divisible}, fixed_size={self.fixed_size}")
