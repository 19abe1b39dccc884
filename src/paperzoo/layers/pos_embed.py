"""Position information for attention, which is otherwise permutation-invariant.

* Sinusoidal encoding (Vaswani et al., "Attention Is All You Need", arXiv:1706.03762, Sec. 3.5):
  PE(pos, 2i) = sin(pos / 10000^(2i/d_model)),  PE(pos, 2i+1) = cos(pos / 10000^(2i/d_model)).
* Learned absolute embeddings (BERT / ViT, arXiv:2010.11929 Sec. 3.1: "standard learnable 1D position
  embeddings"), resized to a new patch grid by 2-D bicubic interpolation (ViT Sec. 3.2, "we perform 2D
  interpolation of the pre-trained position embeddings, according to their location in the original image").
* 2-D relative position bias (Swin, arXiv:2103.14030 Sec. 3.3, Eq. 4): a learned table B̂ of
  (2M-1) x (2M-1) entries per head, indexed by the (dy, dx) offset of every query/key pair in an M x M window,
  added to QKᵀ/√d. The table can be bicubically resized to another window size (Swin Sec. 3.3: "the learnt
  relative position bias in pre-training can be also used to initialize the model for fine-tuning with a
  different window size through bi-cubic interpolation").
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .helpers import to_2tuple

__all__ = [
    "sinusoidal_position_encoding",
    "SinusoidalPositionalEncoding",
    "LearnedPositionEmbedding",
    "resize_pos_embed",
    "relative_position_index",
    "RelativePositionBias",
    "resize_rel_pos_bias_table",
]


def sinusoidal_position_encoding(num_positions: int, dim: int, base: float = 10000.0,
                                 dtype: torch.dtype = torch.float32, device: torch.device | None = None) -> Tensor:
    """(num_positions, dim) table of Sec. 3.5: even channels sin, odd channels cos, wavelengths 2π .. 2π·base."""
    if dim % 2:
        raise ValueError(f"sinusoidal encoding needs an even dim, got {dim}")
    pos = torch.arange(num_positions, dtype=torch.float64, device=device)[:, None]  # (N, 1)
    inv_freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64, device=device) * (-math.log(base) / dim))
    angle = pos * inv_freq  # (N, d/2): pos / base^(2i/d)
    pe = torch.empty(num_positions, dim, dtype=torch.float64, device=device)
    pe[:, 0::2] = torch.sin(angle)
    pe[:, 1::2] = torch.cos(angle)
    return pe.to(dtype)


class SinusoidalPositionalEncoding(nn.Module):
    """Adds the fixed encoding to token embeddings (B, N, C); ``offset`` is the position of the first token
    (decoding with a KV cache). The table grows on demand, so there is no hard length limit."""

    def __init__(self, dim: int, max_len: int = 512, base: float = 10000.0) -> None:
        super().__init__()
        self.dim, self.base = dim, base
        # not persistent: it is a function of (max_len, dim), so checkpoints need not carry it
        self.register_buffer("pe", sinusoidal_position_encoding(max_len, dim, base), persistent=False)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        n = offset + x.shape[1]
        if n > self.pe.shape[0]:
            self.pe = sinusoidal_position_encoding(max(n, 2 * self.pe.shape[0]), self.dim, self.base,
                                                   device=self.pe.device)
        return x + self.pe[offset:n].to(x.dtype)  # (N, C) broadcasts over B


class LearnedPositionEmbedding(nn.Module):
    """One learned vector per position (BERT, ViT), added to the tokens (B, N, C)."""

    def __init__(self, num_positions: int, dim: int, std: float = 0.02) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, num_positions, dim))  # (1, N, C)
        nn.init.trunc_normal_(self.weight, std=std)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        n = offset + x.shape[1]
        if n > self.weight.shape[1]:
            raise ValueError(f"sequence of {n} positions exceeds the {self.weight.shape[1]} learned positions")
        return x + self.weight[:, offset:n]


def resize_pos_embed(pos_embed: Tensor, new_grid: int | tuple[int, int], old_grid: tuple[int, int] | None = None,
                     num_prefix_tokens: int = 1, mode: str = "bicubic") -> Tensor:
    """Resize a ViT position embedding (1, prefix + gh*gw, C) to the grid ``new_grid`` (ViT Sec. 3.2).

    The prefix tokens ([CLS], ...) keep their embeddings; the patch embeddings are viewed as a (gh, gw) image
    of C channels and interpolated. ``old_grid`` defaults to a square grid. Differentiable, so a model may
    call it on every forward when the input size changes.
    """
    nh, nw = to_2tuple(new_grid)
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    n, c = grid.shape[1], grid.shape[2]
    if old_grid is None:
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"cannot infer a square grid from {n} position embeddings; pass old_grid")
        old_grid = (side, side)
    gh, gw = old_grid
    if gh * gw != n:
        raise ValueError(f"old_grid {gh}x{gw} does not match the {n} patch position embeddings")
    if (gh, gw) == (nh, nw):
        return pos_embed
    grid = grid.reshape(1, gh, gw, c).permute(0, 3, 1, 2)  # (1, N, C) -> (1, C, gh, gw)
    grid = F.interpolate(grid.float(), size=(nh, nw), mode=mode, align_corners=False).to(pos_embed.dtype)
    grid = grid.permute(0, 2, 3, 1).reshape(1, nh * nw, c)  # (1, C, nh, nw) -> (1, N', C)
    return torch.cat([prefix, grid], dim=1)


def relative_position_index(window: int | tuple[int, int], table_window: int | tuple[int, int] | None = None
                            ) -> Tensor:
    """(N, N) long tensor, N = wh·ww: row of the relative-bias table for each (query, key) pair (Eq. 4).

    The table has (2·Th - 1)(2·Tw - 1) rows, one per offset (dy, dx) with dy in [-(Th-1), Th-1]; the row of an
    offset is (dy + Th - 1)·(2·Tw - 1) + (dx + Tw - 1). ``table_window`` (Th, Tw) defaults to ``window``; a
    smaller window (Swin on a feature map smaller than M) indexes the same table, since its offsets are a
    subset.
    """
    wh, ww = to_2tuple(window)
    th, tw = to_2tuple(table_window if table_window is not None else window)
    if wh > th or ww > tw:
        raise ValueError(f"window {wh}x{ww} is larger than the table's window {th}x{tw}")
    ar_h, ar_w = torch.arange(wh, device="cpu"), torch.arange(ww, device="cpu")
    coords = torch.stack(torch.meshgrid(ar_h, ar_w, indexing="ij")).flatten(1)  # (2, N): (y, x) of each token
    rel = coords[:, :, None] - coords[:, None, :]  # (2, N, N): (dy, dx) of query i minus key j
    return (rel[0] + th - 1) * (2 * tw - 1) + (rel[1] + tw - 1)  # (N, N)


class RelativePositionBias(nn.Module):
    """Swin's learned bias B̂ ((2M-1)², heads) and the (heads, N, N) bias B it gives for a window (Eq. 4)."""

    def __init__(self, window: int | tuple[int, int], num_heads: int, std: float = 0.02) -> None:
        super().__init__()
        self.window = to_2tuple(window)
        wh, ww = self.window
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * wh - 1) * (2 * ww - 1), num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=std)
        # The index is a function of the window size, so it is neither stored in checkpoints nor a buffer
        # (a buffer would be lost by meta-device init + to_empty); it is built on first use per device.
        self._index_cache: dict[tuple, Tensor] = {}

    def index(self, window: tuple[int, int] | None = None) -> Tensor:
        """The (N, N) index for an effective ``window`` <= the table's (cached per window and device)."""
        window = tuple(window or self.window)
        device = self.relative_position_bias_table.device
        idx = self._index_cache.get((window, device))
        if idx is None:
            with torch.inference_mode(False):  # built under inference_mode, it must still serve training
                idx = relative_position_index(window, self.window).to(device)
            self._index_cache[(window, device)] = idx
        return idx

    def forward(self, window: tuple[int, int] | None = None) -> Tensor:
        idx = self.index(window)
        n = idx.shape[0]
        bias = self.relative_position_bias_table[idx.reshape(-1)].view(n, n, -1)  # (N, N, heads)
        return bias.permute(2, 0, 1)  # (N, N, heads) -> (heads, N, N)


def resize_rel_pos_bias_table(table: Tensor, new_window: int | tuple[int, int],
                              old_window: int | tuple[int, int] | None = None) -> Tensor:
    """Bicubically resize a ((2Wh-1)(2Ww-1), heads) table to ``new_window`` (Swin Sec. 3.3)."""
    nh, nw = to_2tuple(new_window)
    n, heads = table.shape
    if old_window is None:
        side = math.isqrt(n)
        if side * side != n or side % 2 == 0:
            raise ValueError(f"cannot infer a square window from a table of {n} rows; pass old_window")
        old_window = ((side + 1) // 2, (side + 1) // 2)
    oh, ow = to_2tuple(old_window)
    if (2 * oh - 1) * (2 * ow - 1) != n:
        raise ValueError(f"table of {n} rows does not fit window {oh}x{ow}")
    if (oh, ow) == (nh, nw):
        return table
    grid = table.T.reshape(1, heads, 2 * oh - 1, 2 * ow - 1)  # (N, heads) -> (1, heads, 2Wh-1, 2Ww-1)
    grid = F.interpolate(grid.float(), size=(2 * nh - 1, 2 * nw - 1), mode="bicubic", align_corners=False)
    return grid.reshape(heads, -1).T.to(table.dtype).contiguous()  # (1, heads, h', w') -> (N', heads)
