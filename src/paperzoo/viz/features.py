"""Inside a CNN: the feature maps of one layer, and the channel weights every SE block assigns to an image.

Both work through forward hooks, so any registered model can be inspected without changing its code.
* Feature maps: the output (1, C, H, W) of a named module, one panel per channel (the most active first).
* SE weights: the gate s = σ(W2 δ(W1 z)) of each Squeeze-and-Excitation block (SENet Eq. 3), one row per block;
  SENet Sec. 6.4 shows early blocks weigh channels alike for all classes and late ones become class-specific.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from ..layers.squeeze_excite import SqueezeExcite
from .common import new_figure, save_figure


def _capture(model: nn.Module, modules: dict[str, nn.Module], x: Tensor) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    handles = [m.register_forward_hook(lambda _m, _i, o, n=n: out.__setitem__(n, o.detach()))
               for n, m in modules.items()]
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in handles:
            h.remove()
    return out


def plot_feature_maps(model: nn.Module, image: Tensor, layer: str, path: str | os.PathLike,
                      max_channels: int = 32) -> Path:
    """Channels of ``layer``'s output for ``image`` (1, C, H, W), most active first."""
    named = dict(model.named_modules())
    if layer not in named:
        convs = [n for n, m in named.items() if isinstance(m, nn.Conv2d | nn.Sequential) and n][:15]
        raise ValueError(f"no layer {layer!r} in {type(model).__name__}; e.g. {', '.join(convs)}")
    fmap = _capture(model, {layer: named[layer]}, image)[layer]
    if fmap.dim() != 4:
        raise ValueError(f"layer {layer!r} outputs shape {tuple(fmap.shape)}, not a (B, C, H, W) feature map")
    fmap = fmap[0].float()  # (C, H, W)
    order = fmap.abs().mean((1, 2)).argsort(descending=True)[:max_channels]
    n = len(order)
    cols = min(8, n)
    rows = math.ceil(n / cols)
    fig, axes = new_figure(cols, rows, size=(1.8 * cols + 1.2, 1.8 * rows + 0.8))
    vmax = fmap[order].abs().max().item() or 1.0
    im = None
    for k, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if k < n:
            c = int(order[k])
            im = ax.imshow(fmap[c].numpy(), cmap="magma", vmin=0 if fmap.min() >= 0 else -vmax, vmax=vmax)
            ax.set_title(f"ch {c}", fontsize=8)
        else:
            ax.axis("off")
    fig.suptitle(f"{layer}: {n} of {fmap.shape[0]} channels ({fmap.shape[1]}x{fmap.shape[2]}), most active first")
    fig.supxlabel("width")
    fig.supylabel("height")
    fig.colorbar(im, ax=axes.ravel().tolist(), label="activation", shrink=0.8)
    return save_figure(fig, path)


def se_channel_weights(model: nn.Module, image: Tensor) -> dict[str, Tensor]:
    """The excitation s (C,) of every SE block for ``image``, by module name."""
    se = {n: m.gate for n, m in model.named_modules() if isinstance(m, SqueezeExcite)}
    if not se:
        raise ValueError(f"{type(model).__name__} has no Squeeze-and-Excitation blocks (try seresnet50, "
                         "mobilenetv3_large_100 or efficientnet_b0)")
    return {n.removesuffix(".gate"): v[0].flatten() for n, v in _capture(model, se, image).items()}


def plot_se_weights(model: nn.Module, image: Tensor, path: str | os.PathLike) -> Path:
    weights = se_channel_weights(model, image)
    width = max(len(v) for v in weights.values())
    grid = np.full((len(weights), width), np.nan)
    for i, v in enumerate(weights.values()):
        grid[i, : len(v)] = v.float().numpy()
    fig, axes = new_figure(1, size=(12, 0.28 * len(weights) + 2))
    ax = axes[0, 0]
    im = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    ax.set_yticks(range(len(weights)), list(weights), fontsize=7)
    ax.set(title="Squeeze-and-Excitation channel weights s_c per block", xlabel="channel c", ylabel="SE block")
    fig.colorbar(im, ax=ax, label="excitation s_c (0..1)")
    fig.tight_layout()
    return save_figure(fig, path)
