"""Vision Transformer (ViT).

Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale",
arXiv:2010.11929 (ICLR 2021).

Key idea: cut the image into P x P patches, embed each linearly (Eq. 1), prepend a learned [CLS] token, add
learned position embeddings, and run a standard pre-norm Transformer encoder (Eq. 2-3); the classifier reads
the final [CLS] token through LayerNorm (Eq. 4). No convolutions beyond the patch embedding, and no
image-specific inductive bias beyond the patch grid and the position interpolation.

Deviations from the paper (as in timm, whose weights load here unchanged):
* The classifier is one linear layer; the paper's pre-training head has an extra tanh hidden layer
  (Sec. 3.1), available as ``head_hidden``.
* LayerNorm eps = 1e-6 (the official JAX code); weights init truncated-normal(0.02) as timm.
* Any input size works: the learned position embedding is bicubically interpolated to the input's patch
  grid on the fly (the paper does this once for fine-tuning at a higher resolution, Sec. 3.2), and sides that
  are not multiples of P are zero-padded bottom/right (``pad_input=True``, default) or refused with a
  ValueError naming the sizes (``pad_input=False``).
* ``small_input=True`` turns any variant into a 28x28/32x32 model: patch size min(P, 4) and a 32x32 reference
  grid (8x8 patches), interpolated to 7x7 for 28x28 inputs.
* ``pool="mean"`` averages the normalised patch tokens instead of reading [CLS] (the paper's "GAP"
  variant, Appendix D.3).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
from torch import Tensor

from ..layers import DropPath, Mlp, MultiHeadAttention, PatchEmbed, drop_path_rates, resize_pos_embed, to_2tuple
from ..registry import Paper, register_model
from ..weights import register_converter
from ._base import ImageClassifier

VIT_PAPER = Paper("An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale", "2010.11929", 2021)


@dataclass
class ViTConfig:
    """ViT hyper-parameters in the paper's symbols (Table 1: Layers L, Hidden size D, MLP size, Heads)."""

    img_size: int | tuple[int, int] = 224  # the size the position embedding is laid out for
    patch_size: int = 16  # P
    in_chans: int = 3
    num_classes: int = 1000
    embed_dim: int = 768  # D
    depth: int = 12  # L
    num_heads: int = 12  # heads; head dim D / heads
    mlp_ratio: float = 4.0  # MLP size / D
    qkv_bias: bool = True
    pool: str = "cls"  # "cls" (Eq. 4) or "mean"
    class_token: bool = True
    head_hidden: int | None = None  # pre-training head: Linear(D, head_hidden) + tanh (Sec. 3.1)
    drop_rate: float = 0.0  # dropout after dense layers and the position embedding (Appendix B.1)
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    pad_input: bool = True  # pad sides that are not multiples of P (else raise)
    small_input: bool = False


class Block(nn.Module):
    """Pre-norm encoder block: z' = MSA(LN(z)) + z (Eq. 2); z = MLP(LN(z')) + z' (Eq. 3)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, drop: float,
                 attn_drop: float, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = MultiHeadAttention(dim, num_heads, dropout=attn_drop, bias=qkv_bias)
        self.attn_drop_out = nn.Dropout(drop)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        y, weights = self.attn(self.norm1(x), need_weights=need_weights)  # weights (B, heads, N, N)
        x = x + self.drop_path(self.attn_drop_out(y))  # Eq. 2
        x = x + self.drop_path(self.mlp(self.norm2(x)))  # Eq. 3
        return x, weights


class VisionTransformer(ImageClassifier):
    """ViT (Sec. 3.1, Fig. 1). ``forward_features`` returns the normalised tokens (B, 1 + N, D)."""
    head_names, first_conv_name = ("head",), "patch_embed.proj"  # what fine-tuning replaces / adapts

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        if cfg.small_input and max(to_2tuple(cfg.img_size)) > 32:
            cfg = replace(cfg, img_size=32, patch_size=min(cfg.patch_size, 4))
        if cfg.pool not in ("cls", "mean"):
            raise ValueError(f"pool must be 'cls' or 'mean', got {cfg.pool!r}")
        if cfg.pool == "cls" and not cfg.class_token:
            raise ValueError("pool='cls' needs class_token=True")
        self.cfg = cfg
        self.in_chans, self.num_classes, self.small_input = cfg.in_chans, cfg.num_classes, cfg.small_input
        d, p = cfg.embed_dim, cfg.patch_size
        self.min_input_size = (p, p)
        self.patch_embed = PatchEmbed(p, cfg.in_chans, d, pad=cfg.pad_input)  # E of Eq. 1
        ih, iw = to_2tuple(cfg.img_size)
        self.grid_size = (ih // p, iw // p)  # (gh, gw) the position embedding is laid out for
        self.num_prefix_tokens = 1 if cfg.class_token else 0
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d)) if cfg.class_token else None  # x_class
        n = self.grid_size[0] * self.grid_size[1]
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_prefix_tokens + n, d))  # E_pos
        self.pos_drop = nn.Dropout(cfg.drop_rate)
        dpr = drop_path_rates(cfg.drop_path_rate, cfg.depth)
        self.blocks = nn.ModuleList(
            Block(d, cfg.num_heads, cfg.mlp_ratio, cfg.qkv_bias, cfg.drop_rate, cfg.attn_drop_rate, dpr[i])
            for i in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(d, eps=1e-6)  # LN of Eq. 4
        if cfg.head_hidden:
            self.pre_logits = nn.Sequential(OrderedDict(fc=nn.Linear(d, cfg.head_hidden), act=nn.Tanh()))
            self.num_features = cfg.head_hidden
        else:
            self.pre_logits = nn.Identity()
            self.num_features = d
        self.head_drop = nn.Dropout(cfg.drop_rate)
        self.head = nn.Linear(self.num_features, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        # timm's ViT init: truncated normal(0.02) for dense layers and position embedding, tiny [CLS].
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear | nn.Conv2d):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def pos_embed_for(self, grid: tuple[int, int]) -> Tensor:
        """The position embedding for a (gh, gw) patch grid, interpolated when it differs from the stored one."""
        if grid == self.grid_size:
            return self.pos_embed
        return resize_pos_embed(self.pos_embed, grid, self.grid_size, self.num_prefix_tokens)

    def forward_features(self, x: Tensor, return_attention: bool = False
                         ) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Tokens (B, prefix + N, D) after the final LayerNorm; with ``return_attention`` also every block's
        attention weights, a list of L tensors (B, heads, prefix + N, prefix + N) from the explicit path."""
        x = self.patch_embed(x)  # (B, gh, gw, D)
        grid = (x.shape[1], x.shape[2])
        x = x.flatten(1, 2)  # (B, gh, gw, D) -> (B, N, D): patches in raster order
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, 1 + N, D)
        x = self.pos_drop(x + self.pos_embed_for(grid))  # z_0 of Eq. 1
        maps = []
        for blk in self.blocks:
            x, w = blk(x, need_weights=return_attention)
            if return_attention:
                maps.append(w)
        x = self.norm(x)
        return (x, maps) if return_attention else x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        if self.cfg.pool == "cls":
            x = x[:, 0]  # y = LN(z_L^0), Eq. 4: (B, D)
        else:
            x = x[:, self.num_prefix_tokens:].mean(dim=1)  # (B, N, D) -> (B, D)
        x = self.pre_logits(x)
        return x if pre_logits else self.head(self.head_drop(x))

    def attention_maps(self, x: Tensor) -> list[Tensor]:
        """Every block's attention weights for ``x``: L tensors (B, heads, prefix + N, prefix + N); row 0 of
        each is where [CLS] looks. Runs without gradients."""
        self.check_input(x)
        with torch.no_grad():
            return self.forward_features(x, return_attention=True)[1]


def _vit(kw: dict, **defaults) -> VisionTransformer:
    # the variant's table row, overridable field by field (e.g. depth=2 for a quick test, img_size=384)
    return VisionTransformer(ViTConfig(**{**defaults, **kw}))


# ----------------------------------------------------------------------------------------------- weights
def _resize_pos_embed_in(sd: dict[str, Tensor], model: VisionTransformer) -> dict[str, Tensor]:
    """Interpolate a checkpoint's position embedding to the model's grid (checkpoints at another size)."""
    pe = sd.get("pos_embed")
    if pe is not None and pe.shape != model.pos_embed.shape and pe.shape[-1] == model.pos_embed.shape[-1]:
        sd["pos_embed"] = resize_pos_embed(pe, model.grid_size, None, model.num_prefix_tokens)
    return sd


@register_converter("vit", "paperzoo")
def _from_paperzoo(sd: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    return _resize_pos_embed_in(sd, model)


@register_converter("vit", "timm")
def _from_timm(sd: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """timm's ViT names differ only in the attention projections: ``attn.qkv`` is our fused ``attn.in_proj``
    (same [Wq; Wk; Wv] row layout) and ``attn.proj`` is ``attn.out_proj`` (Wᴼ)."""
    out = {}
    for k, v in sd.items():
        k = k.replace(".attn.qkv.", ".attn.in_proj.").replace(".attn.proj.", ".attn.out_proj.")
        out[k] = v
    return _resize_pos_embed_in(out, model)


# torchvision `vit_b_16` .. `vit_h_14` (torchvision.models.vision_transformer): the same encoder, other names.
#   class_token / encoder.pos_embedding / conv_proj            -> cls_token / pos_embed / patch_embed.proj
#   encoder.layers.encoder_layer_{i}.ln_1 / ln_2               -> blocks.{i}.norm1 / norm2
#   ...self_attention.in_proj_weight / in_proj_bias / out_proj -> blocks.{i}.attn.in_proj.weight / .bias / out_proj
#   ...mlp.0 / mlp.3 (mlp.linear_1 / linear_2 before torchvision 0.13, as in its hosted ViT files)
#                                                              -> blocks.{i}.mlp.fc1 / fc2
#   encoder.ln / heads.pre_logits / heads.head                 -> norm / pre_logits.fc / head
# nn.MultiheadAttention stacks [Wq; Wk; Wv] in in_proj_weight as our in_proj does; LayerNorm eps 1e-6 and exact
# GELU on both sides, so nothing but names changes. SWAG checkpoints (384/512/518 px) load into a model built
# with that img_size, or have their position table interpolated to the model's grid.
_TORCHVISION_VIT_KEYS = [(re.compile(a), b) for a, b in (
    (r"^class_token$", "cls_token"),
    (r"^encoder\.pos_embedding$", "pos_embed"),
    (r"^conv_proj\.", "patch_embed.proj."),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.ln_([12])\.", r"blocks.\1.norm\2."),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.self_attention\.in_proj_(weight|bias)$", r"blocks.\1.attn.in_proj.\2"),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.self_attention\.out_proj\.", r"blocks.\1.attn.out_proj."),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.mlp\.(?:0|linear_1)\.", r"blocks.\1.mlp.fc1."),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.mlp\.(?:3|linear_2)\.", r"blocks.\1.mlp.fc2."),
    (r"^encoder\.ln\.", "norm."),
    (r"^heads\.pre_logits\.", "pre_logits.fc."),
    (r"^heads\.head\.", "head."),
)]


@register_converter("vit", "torchvision")
def _from_torchvision(sd: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    out = {}
    for k, v in sd.items():
        for pattern, repl in _TORCHVISION_VIT_KEYS:
            k, n = pattern.subn(repl, k)
            if n:
                break
        out[k] = v  # a key no rule names stays as it is, and strict loading reports it
    return _resize_pos_embed_in(out, model)


# ----------------------------------------------------------------------------------------- registered models
# Table 1 of the paper (Ti and S from DeiT, arXiv:2012.12877). Reference counts: timm, 224x224, 1000 classes.
@register_model(family="vit", paper=VIT_PAPER, ref_params=5_717_416, ref_source="timm")
def vit_tiny_patch16_224(**kw) -> VisionTransformer:
    return _vit(kw, patch_size=16, embed_dim=192, depth=12, num_heads=3)


@register_model(family="vit", paper=VIT_PAPER, ref_params=22_050_664, ref_source="timm")
def vit_small_patch16_224(**kw) -> VisionTransformer:
    return _vit(kw, patch_size=16, embed_dim=384, depth=12, num_heads=6)


@register_model(family="vit", paper=VIT_PAPER, ref_params=86_567_656, ref_source="timm")
def vit_base_patch16_224(**kw) -> VisionTransformer:
    return _vit(kw, patch_size=16, embed_dim=768, depth=12, num_heads=12)


@register_model(family="vit", paper=VIT_PAPER, ref_params=88_224_232, ref_source="timm")
def vit_base_patch32_224(**kw) -> VisionTransformer:
    return _vit(kw, patch_size=32, embed_dim=768, depth=12, num_heads=12)


@register_model(family="vit", paper=VIT_PAPER, ref_params=304_326_632, ref_source="timm")
def vit_large_patch16_224(**kw) -> VisionTransformer:
    return _vit(kw, patch_size=16, embed_dim=1024, depth=24, num_heads=16)


@register_model(family="vit", paper=VIT_PAPER, ref_params=306_535_400, ref_source="torchvision (vit_l_32)")
def vit_large_patch32_224(**kw) -> VisionTransformer:
    return _vit(kw, patch_size=32, embed_dim=1024, depth=24, num_heads=16)


# timm's default vit_huge_patch14_224 (the in21k tag) has no head: 630,764,800 + 1280 * 1000 + 1000 = ours.
@register_model(family="vit", paper=VIT_PAPER, ref_params=632_045_800,
                ref_source="timm (630,764,800 without its 1000-class head)")
def vit_huge_patch14_224(**kw) -> VisionTransformer:
    return _vit(kw, patch_size=14, embed_dim=1280, depth=32, num_heads=16)


# Small-image configs (no paper reference): 4x4 patches, so a 32x32 image is 8x8 = 64 tokens (+ [CLS]).
@register_model(family="vit", paper=VIT_PAPER, input_size=32, tags=("small",))
def vit_tiny_patch4_32(**kw) -> VisionTransformer:
    return _vit(kw, img_size=32, patch_size=4, embed_dim=192, depth=12, num_heads=3)


@register_model(family="vit", paper=VIT_PAPER, input_size=32, tags=("small",))
def vit_small_patch4_32(**kw) -> VisionTransformer:
    return _vit(kw, img_size=32, patch_size=4, embed_dim=384, depth=12, num_heads=6)


@register_model(family="vit", paper=VIT_PAPER, input_size=28, tags=("small",))
def vit_tiny_patch4_28(**kw) -> VisionTransformer:
    return _vit(kw, img_size=28, patch_size=4, embed_dim=192, depth=12, num_heads=3)
