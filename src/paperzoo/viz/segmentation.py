"""Segmentation pictures: class maps drawn over their images, and class maps as palette PNGs.

Colours follow Pascal VOC's colour map (the devkit's ``labelcolormap``: the bits of the class index spread over
the high bits of R, G and B), so class 1 is dark red, class 2 dark green, ... and the ignore value 255 is pale
khaki; a mask PNG written here opens in any viewer in the colours VOC's own ``SegmentationClass`` PNGs use.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from .common import new_figure, save_figure

__all__ = ["voc_palette", "colorize", "overlay_mask", "save_mask_png", "plot_segmentation"]

_IGNORE = 255


def voc_palette(n: int = 256) -> Tensor:
    """VOC's colour map: uint8 ``(n, 3)``; bit ``3j + c`` of the class index sets bit ``7 - j`` of channel c."""
    index = torch.arange(n)
    colours = torch.zeros(n, 3, dtype=torch.int64)
    for j in range(8):  # 8 rounds of 3 bits cover indices up to 2^24 (loop over bits, not pixels)
        for c in range(3):
            bit = (index >> (3 * j + c)) & 1
            colours[:, c] |= bit << (7 - j)
    return colours.to(torch.uint8)


def colorize(mask: Tensor) -> Tensor:
    """Class map ``(H, W)`` -> uint8 RGB ``(H, W, 3)`` in VOC's colours."""
    return voc_palette()[mask.long().clamp(0, 255)]


def overlay_mask(image: Tensor, mask: Tensor, alpha: float = 0.55) -> Tensor:
    """``image`` ``(3, H, W)`` in [0, 1] with the classes of ``mask`` blended in at ``alpha``; background (0) and
    ignored (255) pixels are left as they are. Returns float ``(H, W, 3)`` in [0, 1]."""
    rgb = image.permute(1, 2, 0).clamp(0, 1).float()  # (H, W, 3)
    colour = colorize(mask).float() / 255
    paint = ((mask > 0) & (mask != _IGNORE))[..., None]  # (H, W, 1)
    return torch.where(paint, (1 - alpha) * rgb + alpha * colour, rgb)


def save_mask_png(mask: Tensor, path: str | os.PathLike) -> Path:
    """Write a class map as a palette ("P") PNG: pixel values are the classes, colours VOC's."""
    from PIL import Image

    if int(mask.min()) < 0 or int(mask.max()) > 255:
        raise ValueError(f"a palette PNG holds classes 0..255, got {int(mask.min())}..{int(mask.max())}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(mask.to(torch.uint8).cpu().numpy(), mode="P")
    im.putpalette(voc_palette().flatten().tolist())
    im.save(path)
    return path


def plot_segmentation(image: Tensor, mask: Tensor, categories: Sequence[str], out: str | os.PathLike, *,
                      target: Tensor | None = None, title: str | None = None) -> Path:
    """The image, the predicted ``mask`` over it and (if given) the ``target`` over it, side by side, with a
    legend of the classes that occur (colour and name)."""
    from matplotlib.patches import Patch

    panels = [("image", image.permute(1, 2, 0).clamp(0, 1).cpu()), ("prediction", overlay_mask(image, mask))]
    if target is not None:
        panels.append(("ground truth", overlay_mask(image, target)))
    h, w = image.shape[-2:]
    fig, axes = new_figure(ncols=len(panels), size=(3.4 * len(panels), 3.4 * h / w + 0.9))
    for ax, (name, picture) in zip(axes[0], panels):
        ax.imshow(picture.numpy())
        ax.set_title(name, fontsize=9)
        ax.set_axis_off()
    shown = torch.cat([mask.flatten()] + ([target.flatten()] if target is not None else [])).unique().tolist()
    palette = voc_palette().numpy() / 255
    handles = [Patch(facecolor=palette[c], label=categories[c])
               for c in shown if 0 < c < len(categories)]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 5), fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.1 if handles else 0, 1, 1))
    return save_figure(fig, out)
