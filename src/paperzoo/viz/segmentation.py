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

__all__ = ["voc_palette", "colorize", "overlay_mask", "save_mask_png", "plot_segmentation", "plot_any_input_size"]

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


def plot_any_input_size(model: torch.nn.Module, images: Sequence[Tensor], out: str | os.PathLike, *,
                        mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                        fc_model: torch.nn.Module | None = None, title: str | None = None) -> Path:
    """The notes' Q3 in one figure: one fully convolutional ``model`` run on ``images`` of different sizes.

    Each column is one image ((3, H, W) in [0, 1]; normalised by ``mean``/``std`` for the model) above its
    predicted class map, both drawn at one pixel scale and captioned with the sizes in and out. With ``fc_model``
    (a network with a fully connected head, e.g. :class:`~paperzoo.segmentation.fcn.FullyConnectedSegmenter`)
    each column also says whether that network ran on the size or what it raised.
    """
    widths, tallest = [int(im.shape[-1]) for im in images], max(int(im.shape[-2]) for im in images)
    fig, axes = new_figure(ncols=len(images), nrows=2, size=(0.028 * sum(widths) + 0.6, 0.056 * tallest + 1.4),
                           gridspec_kw={"width_ratios": widths})
    was_training = model.training
    model.eval()
    for col, image in enumerate(images):
        x = image[None].float()
        if mean is not None and std is not None:
            x = (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
        with torch.no_grad():
            scores = model(x)["out"]  # (1, K, H, W): the same H x W as the input, whatever it is
        h, w = image.shape[-2:]
        k = scores.shape[1]
        panels = [(image.permute(1, 2, 0).clamp(0, 1), f"input {h}x{w}"),
                  (colorize(scores[0].argmax(0)), f"class map of {k} x {scores.shape[2]}x{scores.shape[3]} scores")]
        for row, (picture, caption) in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(picture.cpu().numpy(), extent=(0, w, h, 0))
            ax.set_xlim(0, w)
            ax.set_ylim(tallest, 0)  # every panel spans the tallest image: one pixel scale across the figure
            ax.set_title(caption, fontsize=8)
            ax.set_axis_off()
        if fc_model is not None:
            ax.text(0.5, -0.04, _fc_verdict(fc_model, x), transform=axes[1, col].transAxes, ha="center", va="top",
                    fontsize=7, wrap=True)
    model.train(was_training)
    fig.suptitle(title or "one fully convolutional network, three input sizes", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, out)


def _fc_verdict(fc_model: torch.nn.Module, x: Tensor) -> str:
    """What a network with a fully connected head does with input ``x``: a one-line verdict for a caption."""
    was_training = fc_model.training
    try:
        with torch.no_grad():
            fc_model.eval()(x)
        return "fully connected head: runs"
    except (ValueError, RuntimeError) as e:
        built = getattr(fc_model, "input_size", None)
        return "fully connected head: " + (f"refused (built for {built[0]}x{built[1]})" if built else
                                           f"{type(e).__name__}")
    finally:
        fc_model.train(was_training)
