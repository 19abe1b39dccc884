"""Swin Transformer.

Liu et al., "Swin Transformer: Hierarchical Vision Transformer using Shifted Windows", arXiv:2103.14030
(ICCV 2021).

Key idea: self-attention inside non-overlapping M x M windows (W-MSA) costs O(M² · HW) instead of O((HW)²)
(Eq. 1-2); alternating blocks shift the window grid by ⌊M/2⌋ (SW-MSA, Fig. 2) so information crosses window
borders. The shift is computed as a *cyclic* shift of the feature map (``torch.roll``) so the number of
windows stays the same, plus a mask that stops a window from mixing pieces that were not adjacent before the
roll (Fig. 4, :func:`swin_shift_mask`). Each attention adds a learned relative position bias (Eq. 4), and
patch merging halves the resolution and doubles the width between stages (Fig. 3), giving a CNN-like
pyramid: strides 4, 8, 16, 32.

Deviations from the paper (none change the parameters; timm, official and torchvision weights load):
* Any input size: feature maps whose sides are not multiples of the window are zero-padded bottom/right
  *before* the cyclic shift (as the official detection code does), and the padding tokens are masked out as
  keys, so padding never changes the real tokens' outputs (timm lets them see the zero padding). Odd sides
  before patch merging are zero-padded too. A window larger than the feature map shrinks to the map's side
  and that side is not shifted (per side, as timm). Masks are cached per feature-map size.
* ``forward_features`` returns (B, C, H/32, W/32) like the CNNs (a permuted view of the channels-last map).
* ``small_input=True``: patch 2 and window 4, so a 32x32 image gives 16x16 tokens in stage 1.
* Patch merging sits at the start of stages 2-4 as in Fig. 3 (the official code keeps it at the end of
  stages 1-3; the timm converter maps both layouts).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..layers import (
    DropPath,
    Mlp,
    PatchEmbed,
    RelativePositionBias,
    drop_path_rates,
    resize_rel_pos_bias_table,
    scaled_dot_product_attention,
    to_2tuple,
)
from ..registry import Paper, register_model
from ..weights import register_converter
from ._base import ImageClassifier
from .features import FeatureLevel

SWIN_PAPER = Paper("Swin Transformer: Hierarchical Vision Transformer using Shifted Windows", "2103.14030", 2021)


def window_partition(x: Tensor, window: tuple[int, int]) -> Tensor:
    """(B, H, W, C) -> (B·nW, wh·ww, C), windows in raster order; H, W must be multiples of the window."""
    b, h, w, c = x.shape
    wh, ww = window
    x = x.view(b, h // wh, wh, w // ww, ww, c)  # (B, H/wh, wh, W/ww, ww, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, wh * ww, c)  # -> (B·nW, wh·ww, C)


def window_reverse(windows: Tensor, window: tuple[int, int], h: int, w: int) -> Tensor:
    """(B·nW, wh·ww, C) -> (B, H, W, C), the inverse of :func:`window_partition`."""
    wh, ww = window
    c = windows.shape[-1]
    x = windows.view(-1, h // wh, w // ww, wh, ww, c)  # (B, H/wh, W/ww, wh, ww, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, h, w, c)  # -> (B, H, W, C)


def swin_shift_regions(h: int, w: int, window: int | tuple[int, int], shift: int | tuple[int, int]) -> Tensor:
    """(H, W) region labels of a feature map *after* the cyclic shift by ``-shift`` (Fig. 4).

    Along each axis the rolled map has three bands: [0, H-M) never shares a window with wrapped rows,
    [H-M, H-s) are the last original rows, [H-s, H) the first rows wrapped around from the top. The 3 x 3
    band combinations give labels 0..8; tokens may attend to each other only within one label.
    """
    (wh, ww), (sh, sw) = to_2tuple(window), to_2tuple(shift)
    if h % wh or w % ww:
        raise ValueError(f"feature map {h}x{w} is not a multiple of the window {wh}x{ww}; pad it first")
    if not (0 <= sh < wh and 0 <= sw < ww):
        raise ValueError(f"shift {sh}x{sw} must be in [0, window) = [0, {wh})x[0, {ww})")
    rows = torch.zeros(h, dtype=torch.long, device="cpu")
    rows[h - wh:h - sh], rows[h - sh:] = 1, 2  # bands along H (empty when the shift is 0)
    cols = torch.zeros(w, dtype=torch.long, device="cpu")
    cols[w - ww:w - sw], cols[w - sw:] = 1, 2
    return rows[:, None] * 3 + cols[None, :]  # (H, W)


def swin_shift_mask(h: int, w: int, window: int | tuple[int, int], shift: int | tuple[int, int]) -> Tensor:
    """Bool (nW, N, N), N = wh·ww: True where token i of window k may attend to token j (same region).

    Windows and tokens are in raster order of the *shifted* map, as :func:`window_partition` yields them.
    """
    win = to_2tuple(window)
    regions = swin_shift_regions(h, w, win, shift)
    labels = window_partition(regions[None, :, :, None], win).squeeze(-1)  # (nW, N)
    return labels[:, :, None] == labels[:, None, :]  # (nW, N, N)


class WindowAttentionMap(NamedTuple):
    """One block's attention weights with the geometry needed to place them on the image."""

    weights: Tensor  # (B, nW_h, nW_w, heads, N, N), windows of the shifted, padded map
    window: tuple[int, int]  # (wh, ww); N = wh·ww
    shift: tuple[int, int]  # cyclic shift applied before partitioning
    padded_size: tuple[int, int]  # (Hp, Wp) of the map that was partitioned
    size: tuple[int, int]  # (H, W) of the block's input


@dataclass
class SwinConfig:
    """Swin hyper-parameters in the paper's symbols (Sec. 3.3 "Architecture Variants")."""

    img_size: int | tuple[int, int] = 224  # nominal input size (Swin has no absolute position table)
    patch_size: int = 4  # patch partition: 4x4 patches (Sec. 3.1)
    in_chans: int = 3
    num_classes: int = 1000
    embed_dim: int = 96  # C, channels of stage 1
    depths: tuple[int, ...] = (2, 2, 6, 2)  # layer numbers per stage
    num_heads: tuple[int, ...] = (3, 6, 12, 24)  # head dim d = 32 throughout
    window_size: int = 7  # M
    mlp_ratio: float = 4.0  # α
    qkv_bias: bool = True
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.1  # stochastic depth, linear over blocks
    small_input: bool = False


class WindowAttention(nn.Module):
    """(S)W-MSA: multi-head self-attention inside each window with relative position bias (Eq. 4),
    computed for all windows of the batch in **one** SDPA call."""

    def __init__(self, dim: int, num_heads: int, window: int, qkv_bias: bool, attn_drop: float,
                 proj_drop: float) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.attn_drop = num_heads, dim // num_heads, attn_drop
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.rel_pos = RelativePositionBias(window, num_heads)  # B̂: ((2M-1)², heads)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor, num_windows: int, window: tuple[int, int], mask: Tensor | None = None,
                need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        """x: (B·nW, N, C); mask: additive (nW, N, N) or None. Returns (B·nW, N, C), weights (B, nW, heads, N, N)."""
        bw, n, c = x.shape
        b, nw, h, d = bw // num_windows, num_windows, self.num_heads, self.head_dim
        # heads of all windows side by side so the (nW, heads, N, N) bias+mask broadcasts over the batch
        qkv = self.qkv(x).view(b, nw, n, 3, h, d).permute(3, 0, 1, 4, 2, 5)  # (3, B, nW, heads, N, d)
        q, k, v = qkv.reshape(3, b, nw * h, n, d).unbind(0)  # each (B, nW·heads, N, d)
        bias = self.rel_pos(window)  # (heads, N, N)
        attn_mask = bias.expand(nw, h, n, n) if mask is None else bias + mask[:, None]  # (nW, heads, N, N)
        out, weights = scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask.reshape(1, nw * h, n, n).to(q.dtype),
            dropout_p=self.attn_drop if self.training else 0.0, need_weights=need_weights,
        )  # softmax(QKᵀ/√d + B + mask) V, Eq. 4
        out = out.view(b, nw, h, n, d).transpose(2, 3).reshape(bw, n, c)  # (B, nW·heads, N, d) -> (B·nW, N, C)
        if weights is not None:
            weights = weights.view(b, nw, h, n, n)  # (B, nW, heads, N, N)
        return self.proj_drop(self.proj(out)), weights


class SwinBlock(nn.Module):
    """Swin Transformer block (Fig. 3b, Eq. 3): W-MSA when ``shift == 0``, SW-MSA otherwise."""

    def __init__(self, dim: int, num_heads: int, window: int, shift: int, mlp_ratio: float, qkv_bias: bool,
                 drop: float, attn_drop: float, drop_path: float) -> None:
        super().__init__()
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, window, qkv_bias, attn_drop, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self._mask_cache: dict[tuple, Tensor | None] = {}

    def window_and_shift(self, h: int, w: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """Effective window and shift for an h x w map: a side not larger than M is one window, unshifted."""
        m, s = self.window, self.shift
        return (min(h, m), min(w, m)), (0 if h <= m else s, 0 if w <= m else s)

    def attn_mask(self, h: int, w: int, device: torch.device) -> Tensor | None:
        """Additive (nW, N, N) mask for an h x w input: shift regions and padding keys get -inf.
        Built once per (h, w, device) and cached."""
        key = (h, w, device)
        if key not in self._mask_cache:
            with torch.inference_mode(False):  # a mask first built under inference_mode must serve training too
                self._mask_cache[key] = self._build_mask(h, w, device)
        return self._mask_cache[key]

    def _build_mask(self, h: int, w: int, device: torch.device) -> Tensor | None:
        (wh, ww), (sh, sw) = self.window_and_shift(h, w)
        hp, wp = h + (-h % wh), w + (-w % ww)
        if not (sh or sw or hp > h or wp > w):
            return None  # nothing to mask: plain window attention
        allowed = swin_shift_mask(hp, wp, (wh, ww), (sh, sw))  # (nW, N, N)
        pad = torch.ones(hp, wp, dtype=torch.bool, device="cpu")
        pad[:h, :w] = False
        pad = torch.roll(pad, (-sh, -sw), dims=(0, 1))  # where the padding sits after the shift
        pad = window_partition(pad[None, :, :, None], (wh, ww)).squeeze(-1)  # (nW, N)
        # a padding query still sees itself, so no row is empty (an empty row is NaN)
        eye = torch.eye(wh * ww, dtype=torch.bool, device="cpu")
        allowed = (allowed & ~pad[:, None, :]) | eye
        mask = torch.zeros(allowed.shape, device="cpu").masked_fill(~allowed, float("-inf"))
        return mask.to(device)

    def forward(self, x: Tensor, need_weights: bool = False) -> tuple[Tensor, WindowAttentionMap | None]:
        b, h, w, c = x.shape  # (B, H, W, C)
        (wh, ww), (sh, sw) = self.window_and_shift(h, w)
        hp, wp = h + (-h % wh), w + (-w % ww)
        shortcut = x
        x = self.norm1(x)
        if hp > h or wp > w:
            x = F.pad(x, (0, 0, 0, wp - w, 0, hp - h))  # (B, Hp, Wp, C), zeros bottom/right
        if sh or sw:
            x = torch.roll(x, shifts=(-sh, -sw), dims=(1, 2))  # cyclic shift towards the top-left (Fig. 4)
        num_windows = (hp // wh) * (wp // ww)
        out, weights = self.attn(window_partition(x, (wh, ww)), num_windows, (wh, ww),
                                 self.attn_mask(h, w, x.device), need_weights)
        x = window_reverse(out, (wh, ww), hp, wp)  # (B, Hp, Wp, C)
        if sh or sw:
            x = torch.roll(x, shifts=(sh, sw), dims=(1, 2))  # undo the shift
        if hp > h or wp > w:
            x = x[:, :h, :w]
        x = shortcut + self.drop_path(x)  # ẑ^l = (S)W-MSA(LN(z^{l-1})) + z^{l-1}, Eq. 3
        x = x + self.drop_path(self.mlp(self.norm2(x)))  # z^l = MLP(LN(ẑ^l)) + ẑ^l
        if weights is None:
            return x, None
        grid_weights = weights.view(b, hp // wh, wp // ww, *weights.shape[2:])  # (B, nW_h, nW_w, heads, N, N)
        return x, WindowAttentionMap(grid_weights, (wh, ww), (sh, sw), (hp, wp), (h, w))


class PatchMerging(nn.Module):
    """Concatenate each 2x2 group of neighbours (4C), LayerNorm, linear 4C -> 2C (Sec. 3.1)."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, out_dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        b, h, w, c = x.shape  # (B, H, W, C)
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))  # odd side: one zero row/column bottom/right
            h, w = h + h % 2, w + w % 2
        # (B, H/2, 2, W/2, 2, C) -> (B, H/2, W/2, 2[w], 2[h], C): neighbour order (0,0), (1,0), (0,1), (1,1)
        x = x.view(b, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 4, 2, 5).flatten(3)  # (B, H/2, W/2, 4C)
        return self.reduction(self.norm(x))  # (B, H/2, W/2, 2C)


class SwinStage(nn.Module):
    """Patch merging (stages 2-4) followed by ``depth`` blocks alternating W-MSA and SW-MSA."""

    def __init__(self, in_dim: int, dim: int, depth: int, num_heads: int, window: int, downsample: bool,
                 drop_path: list[float], cfg: SwinConfig) -> None:
        super().__init__()
        self.downsample = PatchMerging(in_dim, dim) if downsample else nn.Identity()
        self.blocks = nn.ModuleList(
            SwinBlock(dim, num_heads, window, 0 if i % 2 == 0 else window // 2, cfg.mlp_ratio, cfg.qkv_bias,
                      cfg.drop_rate, cfg.attn_drop_rate, drop_path[i])
            for i in range(depth)
        )

    def forward(self, x: Tensor, maps: list | None = None) -> Tensor:
        x = self.downsample(x)
        for blk in self.blocks:
            x, w = blk(x, need_weights=maps is not None)
            if maps is not None:
                maps.append(w)
        return x


class SwinTransformer(ImageClassifier):
    """Swin Transformer (Fig. 3a)."""
    head_names, first_conv_name = ("head",), "patch_embed.proj"  # what fine-tuning replaces / adapts

    def __init__(self, cfg: SwinConfig) -> None:
        super().__init__()
        if cfg.small_input and max(to_2tuple(cfg.img_size)) > 32:
            cfg = replace(cfg, img_size=32, patch_size=min(cfg.patch_size, 2), window_size=min(cfg.window_size, 4))
        if len(cfg.depths) != len(cfg.num_heads):
            raise ValueError(f"depths {cfg.depths} and num_heads {cfg.num_heads} must have one entry per stage")
        self.cfg = cfg
        self.in_chans, self.num_classes, self.small_input = cfg.in_chans, cfg.num_classes, cfg.small_input
        n_stages = len(cfg.depths)
        side = cfg.patch_size * 2 ** (n_stages - 1)
        self.min_input_size = (side, side)  # one token left in the last stage
        # patch partition + linear embedding, as one strided conv, then LayerNorm (Sec. 3.1)
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.in_chans, cfg.embed_dim, norm=True, pad=True)
        self.pos_drop = nn.Dropout(cfg.drop_rate)
        dpr = drop_path_rates(cfg.drop_path_rate, sum(cfg.depths))
        self.layers = nn.ModuleList()
        dim, start = cfg.embed_dim, 0
        for i, (depth, heads) in enumerate(zip(cfg.depths, cfg.num_heads)):
            out_dim = cfg.embed_dim * 2**i  # C, 2C, 4C, 8C
            self.layers.append(SwinStage(dim, out_dim, depth, heads, cfg.window_size, i > 0,
                                         dpr[start:start + depth], cfg))
            dim, start = out_dim, start + depth
        self.num_features = dim
        self.norm = nn.LayerNorm(dim)
        self.head_drop = nn.Dropout(cfg.drop_rate)
        self.head = nn.Linear(dim, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        # as the official code: truncated normal(0.02) for linear layers, zero biases (tables: in the layer)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor, return_attention: bool = False
                         ) -> Tensor | tuple[Tensor, list[WindowAttentionMap]]:
        """(B, C_last, H/32, W/32) features; with ``return_attention`` also one :class:`WindowAttentionMap`
        per block (all stages, in order), computed by the explicit attention path."""
        maps: list | None = [] if return_attention else None
        x = self.pos_drop(self.patch_embed(x))  # (B, H/4, W/4, C)
        for stage in self.layers:
            x = stage(x, maps)
        x = self.norm(x).permute(0, 3, 1, 2)  # (B, H, W, C) -> (B, C, H, W), a view
        return (x, maps) if return_attention else x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = x.mean(dim=(2, 3))  # global average pooling: (B, C)
        return x if pre_logits else self.head(self.head_drop(x))

    def feature_levels(self) -> list[FeatureLevel]:
        """Each stage's output, channels-last inside and returned as (B, C, H, W): strides P, 2P, 4P, 8P (4 .. 32)
        without the final LayerNorm, which belongs to the classifier (as timm's features; features_only)."""
        p, c = self.cfg.patch_size, self.cfg.embed_dim
        first = ("patch_embed", "pos_drop", "layers.0")
        return [FeatureLevel(first if i == 0 else (f"layers.{i}",), c * 2**i, p * 2**i, channels_last=True)
                for i in range(len(self.layers))]

    def attention_maps(self, x: Tensor) -> list[WindowAttentionMap]:
        """Every block's window attention for ``x`` (no gradients); see :class:`WindowAttentionMap`."""
        self.check_input(x)
        with torch.no_grad():
            return self.forward_features(x, return_attention=True)[1]


def _swin(kw: dict, **defaults) -> SwinTransformer:
    return SwinTransformer(SwinConfig(**{**defaults, **kw}))


# ----------------------------------------------------------------------------------------------- weights
def _resize_tables(sd: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Bicubically resize relative-position tables trained with another window size (Sec. 3.3)."""
    own = model.state_dict()
    for k, v in sd.items():
        if k.endswith("relative_position_bias_table") and k in own and own[k].shape != v.shape \
                and v.shape[1] == own[k].shape[1]:
            side = int(round(own[k].shape[0] ** 0.5))  # 2M - 1
            sd[k] = resize_rel_pos_bias_table(v, (side + 1) // 2)
    return sd


@register_converter("swin", "paperzoo")
def _from_paperzoo(sd: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    return _resize_tables(sd, model)


@register_converter("swin", "timm")
def _from_timm(sd: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """timm (>= 0.9 and older) and official Swin checkpoints -> ours.

    * ``attn.relative_position_bias_table`` -> ``attn.rel_pos.relative_position_bias_table``;
    * ``relative_position_index`` / ``attn_mask`` buffers are dropped (rebuilt from the sizes);
    * old layout (official, timm < 0.9): ``layers.i.downsample`` ends stage i -> ours starts stage i + 1;
    * ``head.fc`` (timm >= 0.9) -> ``head``.
    """
    old_layout = any(k.startswith("layers.0.downsample.") for k in sd)
    out = {}
    for k, v in sd.items():
        if k.endswith(("relative_position_index", "attn_mask")):
            continue
        m = re.match(r"layers\.(\d+)\.downsample\.(.+)", k)
        if m and old_layout:
            k = f"layers.{int(m[1]) + 1}.downsample.{m[2]}"
        k = k.replace(".attn.relative_position_bias_table", ".attn.rel_pos.relative_position_bias_table")
        if k.startswith("head.fc."):
            k = "head." + k[len("head.fc."):]
        out[k] = v
    return _resize_tables(out, model)


# torchvision `swin_t` / `swin_s` / `swin_b` (v1): one flat `features` Sequential, patch merging between stages.
#   features.0.0 / features.0.2                 -> patch_embed.proj / patch_embed.norm  (features.0.1: a Permute)
#   features.{2i+1}.{j}.*                       -> layers.{i}.blocks.{j}.*
#       attn.relative_position_bias_table       -> attn.rel_pos.relative_position_bias_table
#       mlp.0 / mlp.3                           -> mlp.fc1 / mlp.fc2  (1: GELU, 2 and 4: Dropout)
#   features.{2i}.{norm,reduction}, i = 1, 2, 3 -> layers.{i}.downsample.*  (the merging that opens stage i)
#   norm / head                                 -> norm / head
# relative_position_index buffers are dropped (rebuilt from the window). Its patch merging concatenates the
# 2x2 neighbours in our order, x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2], x[1::2, 1::2], and its LayerNorms
# use the default eps. Outputs equal torchvision's when every stage's map is a multiple of the window (224:
# 56, 28, 14, 7); elsewhere torchvision lets windows attend to the zero padding that ours masks out, and pads
# a map smaller than the window where ours shrinks the window (see the module docstring).
_TV_STAGE = re.compile(r"^features\.(\d+)\.(.+)$")
_TV_EMBED = {"0": "proj", "2": "norm"}


@register_converter("swin", "torchvision")
def _from_torchvision(sd: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    out = {}
    for k, v in sd.items():
        if k.endswith("relative_position_index"):
            continue
        m = _TV_STAGE.match(k)
        if m and m[1] == "0":  # features.0 = (Conv2d, Permute, LayerNorm)
            idx, rest = m[2].split(".", 1)
            k = f"patch_embed.{_TV_EMBED.get(idx, idx)}.{rest}"
        elif m and int(m[1]) % 2:  # a stage's blocks: features.{2i+1}.{j}
            k = f"layers.{int(m[1]) // 2}.blocks.{m[2]}"
        elif m:  # patch merging: features.{2i}
            k = f"layers.{int(m[1]) // 2}.downsample.{m[2]}"
        k = k.replace(".attn.relative_position_bias_table", ".attn.rel_pos.relative_position_bias_table")
        out[k.replace(".mlp.0.", ".mlp.fc1.").replace(".mlp.3.", ".mlp.fc2.")] = v
    return _resize_tables(out, model)


# ----------------------------------------------------------------------------------------- registered models
# Sec. 3.3 variants; stochastic depth 0.2 / 0.3 / 0.5 for T / S / B (Sec. 4.1). Counts: timm, 224, 1000 classes.
@register_model(family="swin", paper=SWIN_PAPER, ref_params=28_288_354, ref_source="timm")
def swin_tiny_patch4_window7_224(**kw) -> SwinTransformer:
    return _swin(kw, embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.2)


@register_model(family="swin", paper=SWIN_PAPER, ref_params=49_606_258, ref_source="timm")
def swin_small_patch4_window7_224(**kw) -> SwinTransformer:
    return _swin(kw, embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.3)


@register_model(family="swin", paper=SWIN_PAPER, ref_params=87_768_224, ref_source="timm")
def swin_base_patch4_window7_224(**kw) -> SwinTransformer:
    return _swin(kw, embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), drop_path_rate=0.5)


@register_model(family="swin", paper=SWIN_PAPER, ref_params=196_532_476, ref_source="timm")
def swin_large_patch4_window7_224(**kw) -> SwinTransformer:
    return _swin(kw, embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48))


# Small-image configs (no paper reference): 2x2 patches; a 32x32 image is 16x16 tokens, windows of 4x4.
@register_model(family="swin", paper=SWIN_PAPER, input_size=32, tags=("small",))
def swin_tiny_patch2_window4_32(**kw) -> SwinTransformer:
    return _swin(kw, img_size=32, patch_size=2, window_size=4, embed_dim=96, depths=(2, 2, 6, 2),
                 num_heads=(3, 6, 12, 24))


@register_model(family="swin", paper=SWIN_PAPER, input_size=28, tags=("small",))
def swin_tiny_patch2_window7_28(**kw) -> SwinTransformer:
    return _swin(kw, img_size=28, patch_size=2, window_size=7, embed_dim=96, depths=(2, 2, 6, 2),
                 num_heads=(3, 6, 12, 24))
