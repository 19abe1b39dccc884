"""Where a vision transformer looks: per-head attention maps of one layer and attention rollout.

* ViT: row [CLS] of a layer's attention (B, heads, 1 + N, 1 + N), without the [CLS] column, reshaped to the
  patch grid and stretched over the image, one panel per head (models pooling by mean use the average query).
* Attention rollout (Abnar & Zuidema, "Quantifying Attention Flow in Transformers", arXiv:2005.00928, Sec. 3):
  with residual connections, each layer's token mixing is approximated by A' = 0.5·mean_heads(A) + 0.5·I,
  rows renormalised; rollout = A'_L · ... · A'_1, and its [CLS] row says how much each patch contributed.
  Its assumptions (equal residual/attention mixing, heads averaged, values, MLPs and norms ignored) make it a
  picture of attention flow, not an attribution of the prediction: the caption says so on every figure.
* Swin: a block's window attention, averaged over the queries of each window, gives per head how much
  attention each token receives inside its window; the windows are put back together, the cyclic shift is
  undone and padding cropped, giving one map per head over the block's feature map. (Rollout does not apply:
  the windows and patch merging change the token set from stage to stage.)

Heads share one colour scale (0 to the largest weight shown), so a faint head looks faint; ``per_head_scale``
stretches each head to its own maximum instead, and the figure then says that the heads are not comparable.
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .common import new_figure, save_figure

ROLLOUT_CAVEAT = ("Rollout (Abnar & Zuidema 2020) multiplies, layer by layer, 0.5·I + 0.5·(attention averaged "
                  "over heads): it assumes the residual path and attention mix equally, averages the heads away, "
                  "ignores the values, MLPs and norms, and shows how attention flows, not which pixels caused the "
                  "prediction (it is not an attribution).")
SWIN_CAVEAT = ("Swin: attention each token receives from the queries of its own window, averaged over them; "
               "windows attend independently (shifted windows in every second block), so compare values within "
               "a window. No rollout: windows and patch merging change the tokens from stage to stage.")


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


def _layer_index(layer: int, depth: int) -> int:
    """``layer`` (negative counts from the end) as a 0-based block index, checked."""
    if not -depth <= layer < depth:
        raise ValueError(f"layer {layer} out of range: the model has {depth} blocks (0..{depth - 1}, or -1 for "
                         "the last)")
    return layer % depth


def _vit_head_maps(model: nn.Module, x: Tensor, layer: int) -> tuple[Tensor, Tensor, str]:
    """(per-head maps (heads, gh, gw), rollout (gh, gw), the layer's label)."""
    maps = model.attention_maps(x)  # L x (B, heads, T, T)
    idx = _layer_index(layer, len(maps))
    prefix = model.num_prefix_tokens
    with torch.no_grad():
        gh, gw = model.patch_embed(x).shape[1:3]  # (B, gh, gw, D): the patch grid of this input
    a = maps[idx][0]  # (heads, T, T)
    per_head = a[:, 0, prefix:] if prefix else a.mean(1)  # (heads, N)
    rollout = attention_rollout(maps, prefix)[0]  # (N,)
    return per_head.reshape(-1, gh, gw), rollout.reshape(gh, gw), f"layer {idx} (of 0–{len(maps) - 1})"


def _swin_stage(depths: Sequence[int], idx: int) -> int:
    """The 1-based stage that block ``idx`` (0-based over all stages) belongs to."""
    ends = torch.tensor(list(depths)).cumsum(0)
    return int((ends <= idx).sum()) + 1


def _swin_head_maps(model: nn.Module, x: Tensor, layer: int) -> tuple[Tensor, str]:
    """(per-head maps (heads, H, W) of the block's feature map, the layer's label)."""
    maps = model.attention_maps(x)
    idx = _layer_index(layer, len(maps))
    m = maps[idx]
    w = m.weights[0]  # (nWh, nWw, heads, N, N)
    nwh, nww, heads, n, _ = w.shape
    wh, ww = m.window
    received = w.mean(-2)  # (nWh, nWw, heads, N): attention each key token receives, averaged over queries
    received = received.view(nwh, nww, heads, wh, ww).permute(2, 0, 3, 1, 4)  # (heads, nWh, wh, nWw, ww)
    full = received.reshape(heads, nwh * wh, nww * ww)  # (heads, Hp, Wp): windows put back together
    full = torch.roll(full, shifts=m.shift, dims=(1, 2))  # undo the cyclic shift
    windows = "shifted windows" if any(m.shift) else "regular windows"
    label = (f"layer {idx} (of 0–{len(maps) - 1}; stage {_swin_stage(model.cfg.depths, idx)}, {windows})")
    return full[:, : m.size[0], : m.size[1]], label  # crop the padding: (heads, H, W)


def _show_image(ax, image: Tensor, gray: bool = False) -> None:
    img = image.permute(1, 2, 0).numpy()  # (C, H, W) -> (H, W, C)
    if gray or img.shape[-1] == 1:
        ax.imshow(img.mean(-1), cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(img)
    ax.set(xticks=[], yticks=[])


def _overlay(ax, image: Tensor, heat: Tensor, title: str, vmax: float):
    """``heat`` stretched over ``image`` on the colour scale [0, vmax]."""
    h, w = image.shape[1:]
    up = F.interpolate(heat[None, None].float(), size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    _show_image(ax, image, gray=True)  # a gray backdrop: the only colours are the scale's
    im = ax.imshow(up.numpy(), cmap="viridis", alpha=0.6, vmin=0, vmax=vmax)
    ax.set_title(title, fontsize=9)
    return im


def plot_attention(model: nn.Module, x: Tensor, image: Tensor, path: str | os.PathLike, layer: int = -1,
                   max_heads: int = 12, per_head_scale: bool = False) -> Path:
    """Per-head maps of ``layer`` (and, for ViT, the rollout) over ``image`` (C, H, W) in [0, 1].

    Args:
        layer: 0-based block index over the whole model (negative counts from the end).
        max_heads: draw at most this many heads (the first ones).
        per_head_scale: stretch each head to its own maximum (shapes stand out, magnitudes are lost); by
            default all heads share one scale, 0 to the largest weight drawn.
    """
    if not hasattr(model, "attention_maps"):
        raise ValueError(f"{type(model).__name__} has no attention maps (use a ViT or Swin model)")
    is_swin = hasattr(model.cfg, "window_size")
    if is_swin:
        (heads, label), rollout = _swin_head_maps(model, x, layer), None
    else:
        heads, rollout, label = _vit_head_maps(model, x, layer)
    heads = heads[:max_heads]
    panels = 1 + len(heads) + (rollout is not None)
    cols = min(panels, 5)
    rows = math.ceil(panels / cols)
    fig, axes = new_figure(cols, rows, size=(3.2 * cols + 1.2, 3.0 * rows + 1.6), layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    flat = list(axes.flat)
    flat[0].axis("on")
    _show_image(flat[0], image)
    flat[0].set_title("input", fontsize=9)
    shared = heads.max().clamp(min=1e-12).item()
    short = label.split(" (")[0]
    im = None
    for k, hm in enumerate(heads):
        flat[1 + k].axis("on")
        scaled = hm / hm.max().clamp(min=1e-12) if per_head_scale else hm
        im = _overlay(flat[1 + k], image, scaled, f"{short}, head {k}", 1.0 if per_head_scale else shared)
    what = "mean attention received in its window" if is_swin else "attention weight from [CLS]"
    head_axes = flat[1: 1 + len(heads)]
    fig.colorbar(im, ax=head_axes, shrink=0.8,
                 label="fraction of each head's own max" if per_head_scale else what)
    if rollout is not None:
        ax = flat[1 + len(heads)]
        ax.axis("on")
        im_r = _overlay(ax, image, rollout, "attention rollout (all layers)", rollout.max().clamp(min=1e-12).item())
        fig.colorbar(im_r, ax=ax, shrink=0.8, label="rollout score (own scale)")
    kind = "Swin window attention received" if is_swin else "ViT [CLS] attention"
    name = getattr(model, "model_name", "") or type(model).__name__
    scale = ("each head on its OWN colour scale: colours are not comparable across heads" if per_head_scale
             else "heads share one colour scale")
    fig.suptitle(f"{kind}: {name}, {label}\n{scale}", fontsize=11)
    caveat = SWIN_CAVEAT if is_swin else ROLLOUT_CAVEAT
    fig.supxlabel(textwrap.fill(caveat, width=int(14 * (3.2 * cols + 1.2))), fontsize=8, color="0.25")
    return save_figure(fig, path)
