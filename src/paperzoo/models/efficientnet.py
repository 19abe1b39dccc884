"""EfficientNet-B0 to B7.

Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks", arXiv:1905.11946
(ICML 2019).

Key idea: **compound scaling** (Sec. 3.3). Scaling a network's depth, width or input resolution alone
saturates quickly; scaling all three together with one coefficient φ works better:

    depth d = α^φ,  width w = β^φ,  resolution r = γ^φ,  s.t. α·β²·γ² ≈ 2,  α, β, γ ≥ 1     (Eq. 3)

so FLOPs (∝ d·w²·r²) grow by about 2^φ. A grid search on the baseline gave α = 1.2, β = 1.1, γ = 1.15.
The baseline B0 (Table 1) was found by MnasNet-style NAS: MBConv blocks (the MobileNetV2 inverted
residual with a squeeze-and-excitation module and swish activations). B1-B7 are *derived* from B0 here:
each stage's channels are ``make_divisible(c·w, 8)`` and its repeats ``ceil(n·d)`` (the rounding of the
reference code), with the published per-model (w, d, resolution, dropout) below; nothing per model is typed.

Deviations and choices (all as in torchvision / timm, whose weights load here unchanged):
* The published (w, d) of B1-B7 are those of the reference code, which rounded α^φ, β^φ by hand (e.g. B7
  has d = 3.1 where 1.2^φ with β^φ = 2.0 would give 3.8); Eq. 3 is kept in ``compound_coefficients``.
* SE reduced width = max(1, int(0.25 · block input channels)), not of the expanded width; swish inside SE.
* Stochastic depth ("drop connect", rate 0.2) grows linearly with the block index: rate·i/N for block i of N.
* BatchNorm: the TF reference uses eps 1e-3 and momentum 0.01 (PyTorch convention). torchvision's B0-B4
  use the PyTorch defaults (1e-5, 0.1) and its B5-B7 (ported from TF) 1e-3 / 0.01; timm's ``efficientnet_bX``
  use 1e-5 / 0.1 for all. Our eps defaults follow torchvision per model (``source_bn_eps``); eps changes
  outputs, so ``load_weights`` gives the model its source's. Momentum only affects training: we default to
  0.1 for every model (0.01 lets the running statistics lag far behind the weights on short schedules; pass
  ``bn_momentum=0.01`` for the reference's).
* Symmetric padding (k-1)/2, not TF's asymmetric "SAME" padding. timm's ``tf_efficientnet_bX`` ports pad
  "SAME" (and use eps 1e-3): their weights load but do not reproduce their outputs; use ``efficientnet_bX``.
* ``small_input=True`` makes the stem and the first stride-2 stage (MBConv6, 3x3, 24 channels) stride 1,
  8x instead of 32x downsampling, for 28x28 / 32x32 images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import torch.nn as nn
from torch import Tensor

from ..layers import ConvNormAct, InvertedResidual, SqueezeExcite, drop_path_rates, make_divisible
from ..registry import Paper, register_model
from ..weights import register_converter
from ._base import ImageClassifier
from ._mobile_common import (
    adopt_bn_eps,
    init_mobile_weights,
    rename_modules,
    set_batchnorm,
    timm_mbconv_mapping,
    torchvision_mbconv_map,
)
from .features import FeatureLevel, chain_levels

EFFICIENTNET_PAPER = Paper("EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks",
                           "1905.11946", 2019)


class StageRow(NamedTuple):
    """One MBConv row of Table 1: expansion t ("MBConv6"), kernel k, stride s, channels c, layers n."""

    t: int
    k: int
    s: int
    c: int
    n: int


# Table 1: EfficientNet-B0. Stage 1 (Conv3x3, 224², 32 ch) is the stem; stage 9 (Conv1x1 & Pooling & FC, 1280)
# the head. Strides are not in the table; they are where the resolution column halves.
TABLE_1_B0: tuple[StageRow, ...] = (
    StageRow(1, 3, 1, 16, 1),   # stage 2: MBConv1, k3x3   112² -> 112²
    StageRow(6, 3, 2, 24, 2),   # stage 3: MBConv6, k3x3   112² -> 56²
    StageRow(6, 5, 2, 40, 2),   # stage 4: MBConv6, k5x5   56² -> 28²
    StageRow(6, 3, 2, 80, 3),   # stage 5: MBConv6, k3x3   28² -> 14²
    StageRow(6, 5, 1, 112, 3),  # stage 6: MBConv6, k5x5   14² -> 14²
    StageRow(6, 5, 2, 192, 4),  # stage 7: MBConv6, k5x5   14² -> 7²
    StageRow(6, 3, 1, 320, 1),  # stage 8: MBConv6, k3x3   7² -> 7²
)
STEM_CHANNELS, HEAD_CHANNELS = 32, 1280

#: (width w, depth d, resolution, dropout) of each model, as published with the reference implementation.
COMPOUND_COEFFICIENTS: dict[str, tuple[float, float, int, float]] = {
    "b0": (1.0, 1.0, 224, 0.2),
    "b1": (1.0, 1.1, 240, 0.2),
    "b2": (1.1, 1.2, 260, 0.3),
    "b3": (1.2, 1.4, 300, 0.3),
    "b4": (1.4, 1.8, 380, 0.4),
    "b5": (1.6, 2.2, 456, 0.4),
    "b6": (1.8, 2.6, 528, 0.5),
    "b7": (2.0, 3.1, 600, 0.5),
}


def compound_coefficients(phi: float, alpha: float = 1.2, beta: float = 1.1, gamma: float = 1.15
                          ) -> tuple[float, float, float]:
    """Eq. 3: (depth d = α^φ, width w = β^φ, resolution factor r = γ^φ) for compound coefficient φ."""
    return alpha**phi, beta**phi, gamma**phi


def scale_width(c: int, w: float) -> int:
    """Channels under width coefficient w: nearest multiple of 8, never 10 % below c·w (reference rounding)."""
    return make_divisible(c * w, 8)


def scale_depth(n: int, d: float) -> int:
    """Repeats under depth coefficient d: rounded up (reference rounding)."""
    return int(math.ceil(n * d))


@dataclass
class EfficientNetConfig:
    """EfficientNet hyper-parameters: B0's table plus the compound-scaling coefficients (w, d)."""

    width: float = 1.0  # w = β^φ
    depth: float = 1.0  # d = α^φ
    table: tuple[StageRow, ...] = TABLE_1_B0
    num_classes: int = 1000
    in_chans: int = 3
    drop_rate: float = 0.2  # dropout before the classifier
    drop_path_rate: float = 0.2  # stochastic depth ("drop_connect_rate" of the reference code)
    se_ratio: float = 0.25  # SE reduced width relative to the block *input* channels
    small_input: bool = False
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1

    def stages(self) -> list[StageRow]:
        """The scaled table: B0's rows with channels ``scale_width(c, w)`` and repeats ``scale_depth(n, d)``."""
        return [r._replace(c=scale_width(r.c, self.width), n=scale_depth(r.n, self.depth)) for r in self.table]


class EfficientNet(ImageClassifier):
    """EfficientNet: stem, seven MBConv stages (``stages[i][j]``), 1x1 head conv, pool, dropout, FC."""
    head_names, first_conv_name = ("classifier",), "stem.conv"  # what fine-tuning replaces / adapts

    def __init__(self, cfg: EfficientNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.in_chans, self.num_classes, self.small_input = cfg.in_chans, cfg.num_classes, cfg.small_input
        in_chs = scale_width(STEM_CHANNELS, cfg.width)
        self.stem = ConvNormAct(cfg.in_chans, in_chs, 3, 1 if cfg.small_input else 2, act=nn.SiLU,
                                bn_eps=cfg.bn_eps)
        rows = cfg.stages()
        # stochastic depth grows with the block index: rate·i/N, the reference's rule (endpoint=False)
        dpr = iter(drop_path_rates(cfg.drop_path_rate, sum(r.n for r in rows), endpoint=False))
        stages, first_s2 = [], True
        for row in rows:
            stride = row.s
            if cfg.small_input and stride == 2 and first_s2:
                stride, first_s2 = 1, False
            blocks = []
            for j in range(row.n):
                rd = max(1, int(in_chs * cfg.se_ratio))
                se = partial(SqueezeExcite, rd_channels=rd, act=nn.SiLU, gate=nn.Sigmoid)
                blocks.append(InvertedResidual(
                    in_chs, row.c, row.k, stride if j == 0 else 1,
                    mid_chs=scale_width(in_chs, row.t),  # t·C_in, rounded as the reference does
                    act=nn.SiLU, se_layer=se, bn_eps=cfg.bn_eps, drop_path=next(dpr)))
                in_chs = row.c
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.num_features = scale_width(HEAD_CHANNELS, cfg.width)
        self.head = ConvNormAct(in_chs, self.num_features, 1, act=nn.SiLU, bn_eps=cfg.bn_eps)
        self.min_input_size = (8, 8) if cfg.small_input else (32, 32)  # total stride
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(cfg.drop_rate)
        self.classifier = nn.Linear(self.num_features, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        set_batchnorm(self, cfg.bn_eps, cfg.bn_momentum)
        init_mobile_weights(self, fc_init="uniform")  # torchvision's EfficientNet init (after the TF reference)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.head(self.stages(self.stem(x)))  # (B, 1280·w, H/32, W/32)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.global_pool(x).flatten(1)  # (B, C)
        return x if pre_logits else self.classifier(self.drop(x))

    def feature_levels(self) -> list[FeatureLevel]:
        """The stem with stage 2, then the end of each resolution of Table 1; the 1x1 head conv is not a level
        (as timm; features_only)."""
        chain = [("stem", 2, self.stem.conv.out_channels)]
        chain += [(f"stages.{i}", row.s, row.c) for i, row in enumerate(self.cfg.stages())]
        return chain_levels(self, chain)


# ------------------------------------------------------------------------------------------ weight converters
def source_bn_eps(name: str, source: str) -> float:
    """BatchNorm eps of ``source``'s model ``name`` ("efficientnet_b5", "torchvision" -> 1e-3)."""
    if source == "torchvision" and name.rsplit("_", 1)[-1] in ("b5", "b6", "b7"):
        return 1e-3  # torchvision: norm_layer=partial(nn.BatchNorm2d, eps=0.001, momentum=0.01) for B5-B7
    return 1e-5  # the nn.BatchNorm2d default


# torchvision `efficientnet_bX`: features.0 stem, features.{1..7} the stages, features.8 the head conv; each
# MBConv holds [expand (if t != 1)], dw, SE, project in `.block`, each conv layer a Sequential(conv, bn, act):
#   stem                          <- features.0.{0,1}
#   stages.i.j expand/dw/project  <- features.{i+1}.j.block.{n}.{0,1}   (n counts the present layers)
#   stages.i.j se.fc1 / se.fc2    <- features.{i+1}.j.block.{n}.fc1 / fc2
#   head                          <- features.8.{0,1}
#   classifier                    <- classifier.1                      (classifier.0 is the Dropout)
@register_converter("efficientnet", "torchvision")
def _from_torchvision(sd: dict, model: EfficientNet) -> dict:
    adopt_bn_eps(model, source_bn_eps(model.model_name, "torchvision"))
    mapping = {"stem.conv": "features.0.0", "stem.bn": "features.0.1", "classifier": "classifier.1"}
    for i, stage in enumerate(model.stages):
        for j, block in enumerate(stage):
            mapping.update(torchvision_mbconv_map(f"stages.{i}.{j}", f"features.{i + 1}.{j}.block", block))
    k = len(model.stages) + 1
    mapping.update({"head.conv": f"features.{k}.0", "head.bn": f"features.{k}.1"})
    return rename_modules(sd, model, mapping)


# timm `efficientnet_bX`: conv_stem/bn1, blocks.{i}.{j} (a stage per Table 1 row), conv_head/bn2, classifier.
# MBConv1 blocks are DepthwiseSeparableConv (conv_dw, bn1, se, conv_pw, bn2), MBConv6 InvertedResidual
# (conv_pw, bn1, conv_dw, bn2, se, conv_pwl, bn3); SE layers are se.conv_reduce / se.conv_expand.
@register_converter("efficientnet", "timm")
def _from_timm(sd: dict, model: EfficientNet) -> dict:
    adopt_bn_eps(model, source_bn_eps(model.model_name, "timm"))
    return rename_modules(sd, model, timm_mbconv_mapping(model))


# ----------------------------------------------------------------------------------------- registered models
def _efficientnet(variant: str, **kw) -> EfficientNet:
    w, d, _, dropout = COMPOUND_COEFFICIENTS[variant]  # the resolution is the registry's input_size
    kw = {"drop_rate": dropout, "bn_eps": source_bn_eps(f"efficientnet_{variant}", "torchvision"), **kw}
    return EfficientNet(EfficientNetConfig(width=w, depth=d, **kw))


# Reference counts: torchvision at 1000 classes (timm's efficientnet_bX have the same architecture and count).
@register_model(family="efficientnet", paper=EFFICIENTNET_PAPER, input_size=COMPOUND_COEFFICIENTS["b0"][2],
                ref_params=5_288_548, ref_source="torchvision")
def efficientnet_b0(**kw) -> EfficientNet:
    return _efficientnet("b0", **kw)


@register_model(family="efficientnet", paper=EFFICIENTNET_PAPER, input_size=COMPOUND_COEFFICIENTS["b1"][2],
                ref_params=7_794_184, ref_source="torchvision")
def efficientnet_b1(**kw) -> EfficientNet:
    return _efficientnet("b1", **kw)


@register_model(family="efficientnet", paper=EFFICIENTNET_PAPER, input_size=COMPOUND_COEFFICIENTS["b2"][2],
                ref_params=9_109_994, ref_source="torchvision")
def efficientnet_b2(**kw) -> EfficientNet:
    return _efficientnet("b2", **kw)


@register_model(family="efficientnet", paper=EFFICIENTNET_PAPER, input_size=COMPOUND_COEFFICIENTS["b3"][2],
                ref_params=12_233_232, ref_source="torchvision")
def efficientnet_b3(**kw) -> EfficientNet:
    return _efficientnet("b3", **kw)


@register_model(family="efficientnet", paper=EFFICIENTNET_PAPER, input_size=COMPOUND_COEFFICIENTS["b4"][2],
                ref_params=19_341_616, ref_source="torchvision")
def efficientnet_b4(**kw) -> EfficientNet:
    return _efficientnet("b4", **kw)


@register_model(family="efficientnet", paper=EFFICIENTNET_PAPER, input_size=COMPOUND_COEFFICIENTS["b5"][2],
                ref_params=30_389_784, ref_source="torchvision")
def efficientnet_b5(**kw) -> EfficientNet:
    return _efficientnet("b5", **kw)


@register_model(family="efficientnet", paper=EFFICIENTNET_PAPER, input_size=COMPOUND_COEFFICIENTS["b6"][2],
                ref_params=43_040_704, ref_source="torchvision")
def efficientnet_b6(**kw) -> EfficientNet:
    return _efficientnet("b6", **kw)


@register_model(family="efficientnet", paper=EFFICIENTNET_PAPER, input_size=COMPOUND_COEFFICIENTS["b7"][2],
                ref_params=66_347_960, ref_source="torchvision")
def efficientnet_b7(**kw) -> EfficientNet:
    return _efficientnet("b7", **kw)
