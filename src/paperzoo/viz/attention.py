"""Where a vision transformer looks: per-head attention maps of one layer and attention rollout.

* ViT: row [CLS] of a layer's attention (B, heads, 1 + N, 1 + N), without the [CLS] column, reshaped to the
  patch grid and stretched over the image, one panel per head (models pooling by mean use the average query).
* Attention rollout (Abnar & Zuidema, "Quantifying Attention Flow in Transformers", arXiv:2005.00928, Sec. 3):
  with residual connections, each layer's token mixing is approximated by A' = 0.5·mean_heads(A) + 0.5·I,
  rows renormalised; rollout = A'_L · ... · A'_1, and its [CLS] row says how much each patch contributed.
* Swin: a block's window attention, averaged over the queries of each window, gives per head how much
  attention each token receives inside its window; the windows are put back together, the cyclic shift is
  undone and padding cropped, giving one map per head over the block's feature map. (Rollout does not apply:
  the windows and patch merging change the token set from stage to stage.)
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .common import new_figure, save_figure


def attention_rollout(maps: Sequence[Tensor], prefix: int = 1) -> Tensor:
    """Rollout of ViT attention maps (each (B, heads, T, T)) -> (B, gh*gw) scores of the patch tokens."""
    b, _, t, _ = maps[0].shape
    eye = torch.eye(t, dtype=maps[0].dtype)
    roll = eye.expand(b, t, t).clone()
    for a in maps:
        a = 0.5 * a.mean(1) + 0.5 * eye  # (B, T, T): attention plus the residual path
        a = a / a.sum(-1, keepdim=True)
        roll = a @ roll
    if prefix:
        return roll[:, 0, prefix:]  # what [CLS] gathered from each patch
    return roll.mean(1)  # no [CLS]: average over query tokens


def _vit_head_maps(model: nn.Module, x: Tensor, layer: int) -> tuple[Tensor, Tensor, tuple[int, int]]:
    maps = model.attention_maps(x)  # L x (B, heads, T, T)
    if not -len(maps) <= layer < len(maps):
        raise ValueError(f"layer {layer} out of range: the model has {len(maps)} blocks")
    prefix = model.num_prefix_tokens
    with torch.no_grad():
        gh, gw = model.patch_embed(x).shape[1:3]  # (B, gh, gw, D): the patch grid of this input
    a = maps[layer][0]  # (heads, T, T)
    per_head = a[:, 0, prefix:] if prefix else a[:, :, :].mean(1)  # (heads, N)
    rollout = attention_rollout(maps, prefix)[0]  # (N,)
    return per_head.reshape(-1, gh, gw), rollout.reshape(gh, gw), (gh, gw)


def _swin_head_maps(model: nn.Module, x: Tensor, layer: int) -> Tensor:
    maps = model.attention_maps(x)
    if not -len(maps) <= layer < len(maps):
        raise ValueError(f"layer {layer} out of range: the model has {len(maps)} blocks")
    m = maps[layer]
    w = m.weights[0]  # (nWh, nWw, heads, N, N)
    nwh, nww, heads, n, _ = w.shape
    wh, ww = m.window
    received = w.mean(-2)  # (nWh, nWw, heads, N): attention each key token receives, averaged over queries
    received = received.view(nwh, nww, heads, wh, ww).permute(2, 0, 3, 1, 4)  # (heads, nWh, wh, nWw, ww)
    full = received.reshape(heads, nwh * wh, nww * ww)  # (heads, Hp, Wp): windows put back together
    full = torch.roll(full, shifts=m.shift, dims=(1, 2))  # undo the cyclic shift
    return full[:, : m.size[0], : m.size[1]]  # crop the padding: (heads, H, W)


def _overlay(ax, image: Tensor, heat: Tensor, title: str):
    h, w = image.shape[1:]
    up = F.interpolate(heat[None, None].float(), size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    img = image.permute(1, 2, 0).numpy()  # (C, H, W) -> (H, W, C)
    ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None)
    im = ax.imshow(up.numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    return im


def plot_attention(model: nn.Module, x: Tensor, image: Tensor, path: str | os.PathLike, layer: int = -1,
                   max_heads: int = 12) -> Path:
    """Per-head maps of ``layer`` (and, for ViT, the rollout) over ``image`` (C, H, W) in [0, 1]."""
    if not hasattr(model, "attention_maps"):
        raise ValueError(f"{type(model).__name__} has no attention maps (use a ViT or Swin model)")
    is_swin = hasattr(model.cfg, "window_size")
    if is_swin:
        heads, rollout = _swin_head_maps(model, x, layer), None
    else:
        heads, rollout, _ = _vit_head_maps(model, x, layer)
    heads = heads[:max_heads]
    panels = 1 + len(heads) + (rollout is not None)
    cols = min(panels, 5)
    rows = math.ceil(panels / cols)
    fig, axes = new_figure(cols, rows, size=(3.0 * cols + 1, 3.0 * rows + 0.6))
    for ax in axes.flat:
        ax.axis("off")
    ax0 = axes.flat[0]
    ax0.axis("on")
    img = image.permute(1, 2, 0).numpy()
    ax0.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None)
    ax0.set(title="input", xticks=[], yticks=[])
    im = None
    for k, hm in enumerate(heads):
        ax = axes.flat[1 + k]
        ax.axis("on")
        im = _overlay(ax, image, hm / hm.max().clamp(min=1e-12), f"layer {layer}, head {k}")
    if rollout is not None:
        ax = axes.flat[1 + len(heads)]
        ax.axis("on")
        im = _overlay(ax, image, rollout / rollout.max().clamp(min=1e-12), "attention rollout (all layers)")
    fig.colorbar(im, ax=list(axes.flat), shrink=0.6, label="attention (normalised per panel)")
    kind = "Swin window attention received" if is_swin else "ViT [CLS] attention"
    fig.suptitle(f"{kind}: {getattr(model, 'model_name', '') or type(model).__name__}")
    return save_figure(fig, path)
