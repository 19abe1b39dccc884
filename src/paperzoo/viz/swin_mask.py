"""The Swin cyclic shift and its attention masks, drawn from the functions the model itself uses.

Swin's shifted windows (Liu et al. 2021, Sec. 3.2, Fig. 4) roll the feature map by (-s, -s) so that the
windows of the next block straddle the previous block's window borders. After the roll, the bottom and right
bands hold tokens that wrapped around from the top and left; a window may contain tokens that were not
neighbours, so attention between different *regions* is masked. Panels:

1. the map before the shift, each token coloured by the region it will belong to;
2. the map after ``torch.roll``, with the window grid: windows at the border mix 2 or 4 regions;
3. one panel per window: its N x N mask (token i may attend to token j only within a region), which is
   exactly ``paperzoo.models.swin.swin_shift_mask`` (the mask the model adds to its attention scores).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from matplotlib.colors import ListedColormap

from ..layers.helpers import to_2tuple
from ..models.swin import swin_shift_mask, swin_shift_regions
from .common import save_figure

REGION_COLOURS = ["#e8e8e8", "#f4a582", "#92c5de", "#b8e186", "#fdb863", "#c2a5cf", "#80cdc1", "#f1b6da",
                  "#dfc27d"]


def plot_swin_mask(path: str | os.PathLike, h: int = 8, w: int = 8, window: int = 4, shift: int | None = None,
                   max_windows: int = 16) -> Path:
    wh, ww = to_2tuple(window)
    sh, sw = to_2tuple(shift if shift is not None else window // 2)
    regions = swin_shift_regions(h, w, (wh, ww), (sh, sw))  # (H, W) after the shift
    before = torch.roll(regions, shifts=(sh, sw), dims=(0, 1))  # undo the roll: where each token started
    masks = swin_shift_mask(h, w, (wh, ww), (sh, sw))  # (nW, N, N)
    n_win = masks.shape[0]
    shown = min(n_win, max_windows)
    cols = math.ceil(math.sqrt(shown))
    rows = math.ceil(shown / cols)
    cmap = ListedColormap(REGION_COLOURS)

    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(10 + 3.0 * cols, max(5.0, 3.0 * rows + 1.2)))
    gs = fig.add_gridspec(rows, 2 + cols, width_ratios=[max(rows, 1.5) * 1.3] * 2 + [1] * cols, wspace=0.45)
    map_axes = [fig.add_subplot(gs[:, 0]), fig.add_subplot(gs[:, 1])]
    for ax, grid, title in ((map_axes[0], before, "before the shift: regions"),
                            (map_axes[1], regions, f"after torch.roll by (-{sh}, -{sw})")):
        ax.imshow(grid.numpy(), cmap=cmap, vmin=-0.5, vmax=8.5)
        if h * w <= 400:
            for i in range(h):
                for j in range(w):
                    ax.text(j, i, str(int(grid[i, j])), ha="center", va="center", fontsize=7)
        ax.set(title=title, xlabel="token column", ylabel="token row")
        ax.set_xticks(np.arange(-0.5, w, ww), labels=[])
        ax.set_yticks(np.arange(-0.5, h, wh), labels=[])
        ax.grid(color="black", linewidth=2 if grid is regions else 0.5)
    labels = swin_window_labels(regions, (wh, ww))  # (nW, N)
    mask_axes = []
    mask_im = None
    for k in range(shown):
        ax = fig.add_subplot(gs[k // cols, 2 + k % cols])
        mask_axes.append(ax)
        mask_im = ax.imshow(masks[k].numpy().astype(float), cmap="Greys_r", vmin=0, vmax=1,
                            interpolation="nearest")
        mixed = len(torch.unique(labels[k]))
        ax.set_title(f"window {k}: {mixed} region{'s' if mixed > 1 else ''}", fontsize=8)
        ax.set_xlabel("key j", fontsize=8)
        ax.set_ylabel("query i", fontsize=8)
        ax.tick_params(labelsize=6)
    fig.colorbar(mask_im, ax=mask_axes, shrink=0.7, label="may attend (white) / blocked (black)")
    fig.suptitle(f"Swin shifted-window attention mask: {h}x{w} map, window {wh}x{ww}, shift {sh}x{sw} "
                 f"({shown} of {n_win} windows)")
    return save_figure(fig, path)


def swin_window_labels(regions: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """Region label of every token of every window: (nW, N), windows in raster order."""
    from ..models.swin import window_partition

    return window_partition(regions[None, :, :, None], window).squeeze(-1)
