"""Pictures of DALL-E's image tokens and of generated images (docs/models/dalle.md).

* :func:`plot_tokens` — ``paperzoo viz tokens``: an image, the grid of codes the discrete VAE's encoder gives it
  (Ramesh et al. 2021, Sec. 2.1: each cell is the argmax of the encoder's logits over the codebook), and the
  decoder's reconstruction from those codes alone, side by side.
* :func:`image_grid` / :func:`save_image_grid` — a batch of [0, 1] images tiled into one plain PNG, pixel for
  pixel (nearest-neighbour upscaled), as ``paperzoo dalle generate`` writes its samples.
* :func:`plot_prompt_grid` — one row of samples per prompt with the prompt as its label (the benchmark's figure).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .common import font_for, new_figure, save_figure


def image_grid(images: Tensor, nrow: int | None = None, pad: int = 2, scale: int = 1) -> np.ndarray:
    """Tile ``images`` (N, C, H, W) in [0, 1] into one uint8 array (rows, cols) or (rows, cols, 3), ``nrow``
    images per row (default: a square-ish grid), ``pad`` pixels of mid-grey between them, each pixel repeated
    ``scale`` times in both directions."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, 1 or 3, H, W), got {tuple(images.shape)}")
    n, c, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    canvas = torch.full((c, rows * (h + pad) + pad, nrow * (w + pad) + pad), 0.5)
    for k in range(n):  # a loop over whole images, not pixels
        r, q = divmod(k, nrow)
        top, left = pad + r * (h + pad), pad + q * (w + pad)
        canvas[:, top:top + h, left:left + w] = images[k].detach().float().clamp(0, 1).cpu()
    canvas = canvas.repeat_interleave(scale, 1).repeat_interleave(scale, 2)  # (C, scale*rows, scale*cols)
    out = (canvas * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()  # (rows, cols, C)
    return out[..., 0] if c == 1 else out


def save_image_grid(images: Tensor, path: str | os.PathLike, nrow: int | None = None, scale: int = 4) -> Path:
    """:func:`image_grid` written as a PNG (folders created); returns the path."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image_grid(images, nrow, scale=scale)).save(path, format="PNG")
    return path


def code_colours(vocab_size: int) -> np.ndarray:
    """One RGB colour per code (vocab_size, 3): hues spread over the circle in a shuffled, seeded order, so
    neighbouring code indices (which mean nothing alike) get unlike colours."""
    import matplotlib

    perm = np.random.default_rng(0).permutation(vocab_size)
    hsv = np.stack([perm / vocab_size, np.full(vocab_size, 0.65), np.full(vocab_size, 0.95)], axis=1)
    return matplotlib.colors.hsv_to_rgb(hsv)


@torch.no_grad()
def plot_tokens(model: torch.nn.Module, image: Tensor, path: str | os.PathLike, title: str | None = None) -> Path:
    """Image | its token grid (codes coloured, numbered where the grid is small) | the reconstruction.

    ``model`` is a ``paperzoo.dalle.DiscreteVAE`` in eval mode; ``image`` (C, H, W) in [0, 1]."""
    x = image[None].float()  # (1, C, H, W)
    codes = model.tokens(x)[0]  # (h, w) int64
    recon = model.decode(codes[None])[0].clamp(0, 1)  # (C, H, W)
    mse = float((recon - image).pow(2).mean())
    h, w = codes.shape
    fig, axes = new_figure(3, 1, size=(13.0, 4.8))
    for ax, img, name in ((axes[0, 0], image, "image"), (axes[0, 2], recon, f"reconstruction (MSE {mse:.4f})")):
        ax.imshow(_to_display(img), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set(title=name, xticks=[], yticks=[])
    ax = axes[0, 1]
    ax.imshow(code_colours(model.vocab_size)[codes.numpy()], interpolation="nearest")  # (h, w, 3)
    if h * w <= 256:  # the code number in every cell while it stays legible
        for i in range(h):
            for j in range(w):
                ax.text(j, i, str(int(codes[i, j])), ha="center", va="center", fontsize=7 if h <= 8 else 5)
    used = len(torch.unique(codes))
    ax.set(title=f"{h}x{w} tokens ({used} distinct of {model.vocab_size} codes)", xlabel="token column",
           ylabel="token row")
    fig.suptitle(title or "discrete VAE: image -> tokens -> image")
    return save_figure(fig, path)


def _to_display(image: Tensor) -> np.ndarray:
    """(C, H, W) -> (H, W) for one channel, (H, W, 3) for three."""
    arr = image.detach().float().clamp(0, 1).cpu().numpy()
    return arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)


def plot_prompt_grid(prompts: Sequence[str], samples: Sequence[Tensor], path: str | os.PathLike,
                     title: str = "", labels: Sequence[str] | None = None) -> Path:
    """One row per prompt: its samples (K, C, H, W) tiled left to right, the prompt (and ``labels[i]``, e.g. the
    share the classifier agreed with) written to the left. Korean prompts get a font that has Hangul."""
    import matplotlib.pyplot as plt

    texts = [p if labels is None else f"{p}\n{labels[i]}" for i, p in enumerate(prompts)]
    family = font_for(list(texts))
    width = max(s.shape[0] for s in samples)
    fig, axes = plt.subplots(len(prompts), 1, figsize=(2.6 + 0.55 * width, 0.75 * len(prompts) + 0.6),
                             squeeze=False)
    for ax, text, imgs in zip(axes[:, 0], texts, samples):
        ax.imshow(image_grid(imgs, nrow=width, pad=1), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(text, rotation=0, ha="right", va="center", fontsize=8,
                      **({"fontfamily": family} if family else {}))
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)
