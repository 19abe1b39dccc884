"""MobileNet V1.

Howard et al., "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision Applications",
arXiv:1704.04861 (2017).

Key idea: replace every standard 3x3 convolution by a *depthwise separable* one, a 3x3 depthwise conv (one
filter per input channel) followed by a 1x1 pointwise conv, each with BN and a nonlinearity (Fig. 3). For M
input and N output channels this costs 1/N + 1/9 of the multiply-adds of the standard conv (Eq. 5); the
network is a plain stack of 13 such layers (Table 1). The width multiplier α thins every layer to αM -> αN
channels, cutting cost by roughly α² (Sec. 3.3, Eq. 6).

Deviations from the paper (all as in timm's ``mobilenetv1_100``, whose weights load here unchanged):
* ReLU6 instead of ReLU after every BN: the released TF-slim reference and timm use ReLU6
  (``MobileNetV1Config(act=nn.ReLU)`` gives the paper's Fig. 3).
* Channels under a width multiplier are rounded with ``make_divisible(αc, 8)``; for the registered α
  (0.25/0.5/0.75/1.0) this equals the paper's αc exactly.
* The last depthwise layer of Table 1 is listed as "Conv dw / s2" on a 7x7 input; it is stride 1 in the
  reference code and in every released model (its output is still 7x7), so we use stride 1.
* ``small_input=True`` makes the stem conv and the first stride-2 layer (conv dw / s2, 64 -> 128) stride 1,
  so the network downsamples 8x instead of 32x and 28x28 / 32x32 images end in a 4x4 map.
* Optional dropout (``drop_rate``) before the classifier; the paper does not use any.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch.nn as nn
from torch import Tensor

from ..layers import ConvNormAct, DepthwiseSeparableConv, make_divisible
from ..registry import Paper, register_model
from ..weights import register_converter
from ._base import ImageClassifier
from ._mobile_common import adopt_bn_eps, rename_modules, set_batchnorm, timm_stage_index
from .features import FeatureLevel, chain_levels

MOBILENET_V1_PAPER = Paper(
    "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision Applications", "1704.04861", 2017)


class DSRow(NamedTuple):
    """One 'Conv dw / s' + 'Conv 1x1' pair of Table 1: depthwise stride ``s``, pointwise output ``c``."""

    s: int
    c: int


# Table 1 (body architecture). The first row, "Conv / s2, 3x3x3x32", is the stem; then 13 dw/pw pairs.
TABLE_1: tuple[DSRow, ...] = (
    DSRow(1, 64),     # Conv dw / s1, 3x3x32;   Conv / s1, 1x1x32x64      112² -> 112²
    DSRow(2, 128),    # Conv dw / s2, 3x3x64;   Conv / s1, 1x1x64x128     112² -> 56²
    DSRow(1, 128),    # Conv dw / s1, 3x3x128;  Conv / s1, 1x1x128x128
    DSRow(2, 256),    # Conv dw / s2, 3x3x128;  Conv / s1, 1x1x128x256    56² -> 28²
    DSRow(1, 256),    # Conv dw / s1, 3x3x256;  Conv / s1, 1x1x256x256
    DSRow(2, 512),    # Conv dw / s2, 3x3x256;  Conv / s1, 1x1x256x512    28² -> 14²
    *(DSRow(1, 512),) * 5,  # 5x: Conv dw / s1, 3x3x512; Conv / s1, 1x1x512x512
    DSRow(2, 1024),   # Conv dw / s2, 3x3x512;  Conv / s1, 1x1x512x1024   14² -> 7²
    DSRow(1, 1024),   # Conv dw / s2 (sic, s1 in practice), 3x3x1024; Conv / s1, 1x1x1024x1024
)
STEM_CHANNELS = 32  # Conv / s2, 3x3x3x32


@dataclass
class MobileNetV1Config:
    """MobileNet V1 hyper-parameters; ``alpha`` is the width multiplier of Sec. 3.3."""

    alpha: float = 1.0
    num_classes: int = 1000
    in_chans: int = 3
    act: Callable[..., nn.Module] = nn.ReLU6
    drop_rate: float = 0.0
    small_input: bool = False
    bn_eps: float = 1e-5  # PyTorch default, as timm
    bn_momentum: float = 0.1


class MobileNetV1(ImageClassifier):
    """MobileNet V1: a 3x3 stem conv and 13 depthwise separable layers (Table 1), avg pool, FC."""
    head_names, first_conv_name = ("classifier",), "stem.conv"  # what fine-tuning replaces / adapts

    def __init__(self, cfg: MobileNetV1Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.in_chans, self.num_classes, self.small_input = cfg.in_chans, cfg.num_classes, cfg.small_input

        def width(c: int) -> int:  # αM, αN (Sec. 3.3)
            return make_divisible(c * cfg.alpha, 8)

        stem_stride = 1 if cfg.small_input else 2
        self.stem = ConvNormAct(cfg.in_chans, width(STEM_CHANNELS), 3, stem_stride, act=cfg.act, bn_eps=cfg.bn_eps)
        blocks, in_chs, first_s2 = [], width(STEM_CHANNELS), True
        for row in TABLE_1:
            stride = row.s
            if cfg.small_input and stride == 2 and first_s2:
                stride, first_s2 = 1, False  # keep resolution for 28x28 / 32x32 inputs
            blocks.append(DepthwiseSeparableConv(in_chs, width(row.c), 3, stride, act=cfg.act, pw_act=cfg.act,
                                                 bn_eps=cfg.bn_eps))
            in_chs = width(row.c)
        self.blocks = nn.Sequential(*blocks)
        self.num_features = in_chs
        self.min_input_size = (8, 8) if cfg.small_input else (32, 32)  # total stride: the last map is >= 1x1
        self.global_pool = nn.AdaptiveAvgPool2d(1)  # "Avg Pool / s1, Pool 7x7"
        self.drop = nn.Dropout(cfg.drop_rate)
        self.classifier = nn.Linear(in_chs, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        set_batchnorm(self, cfg.bn_eps, cfg.bn_momentum)
        self._init_weights()

    def _init_weights(self) -> None:
        # As timm's efficientnet_init_weights (the reference whose weights we load): He-normal convs with
        # fan-out = k·k·out / groups (so depthwise filters get gain for their true fan-out), BN to identity,
        # FC uniform(±1/sqrt(fan_out)).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0.0, (2.0 / fan_out) ** 0.5)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / m.out_features**0.5
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.blocks(self.stem(x))  # (B, C, H/32, W/32)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.global_pool(x).flatten(1)  # (B, C)
        return x if pre_logits else self.classifier(self.drop(x))

    def feature_levels(self) -> list[FeatureLevel]:
        """The stem with the first layer, then the end of each resolution of Table 1 (features_only)."""
        chain = [("stem", 2, self.stem.conv.out_channels)]
        chain += [(f"blocks.{i}", row.s, b.pw.conv.out_channels)
                  for i, (row, b) in enumerate(zip(TABLE_1, self.blocks))]
        return chain_levels(self, chain)


# ------------------------------------------------------------------------------------------- weight converter
# timm `mobilenetv1_100` (an EfficientNet-class model; torchvision has no MobileNet V1):
#   stem.conv / stem.bn            <- conv_stem / bn1
#   blocks.{i}.dw.conv / dw.bn     <- blocks.{stage}.{j}.conv_dw / bn1     (stage = run of equal widths:
#   blocks.{i}.pw.conv / pw.bn     <- blocks.{stage}.{j}.conv_pw / bn2      1, 2, 2, 6, 2 blocks)
#   classifier                     <- classifier
@register_converter("mobilenetv1", "timm")
def _from_timm(sd: dict, model: MobileNetV1) -> dict:
    adopt_bn_eps(model, 1e-5)  # timm's mobilenetv1_X uses the nn.BatchNorm2d default
    mapping = {"stem.conv": "conv_stem", "stem.bn": "bn1", "classifier": "classifier"}
    outs = [b.pw.conv.out_channels for b in model.blocks]
    for i, (stage, j) in enumerate(timm_stage_index(outs)):
        src = f"blocks.{stage}.{j}"
        mapping.update({f"blocks.{i}.dw.conv": f"{src}.conv_dw", f"blocks.{i}.dw.bn": f"{src}.bn1",
                        f"blocks.{i}.pw.conv": f"{src}.conv_pw", f"blocks.{i}.pw.bn": f"{src}.bn2"})
    return rename_modules(sd, model, mapping)


# ----------------------------------------------------------------------------------------- registered models
def _mobilenet_v1(alpha: float, **kw) -> MobileNetV1:
    return MobileNetV1(MobileNetV1Config(alpha=alpha, **kw))


@register_model(family="mobilenetv1", paper=MOBILENET_V1_PAPER, ref_params=4_231_976, ref_source="timm")
def mobilenetv1_100(**kw) -> MobileNetV1:
    return _mobilenet_v1(1.0, **kw)


@register_model(family="mobilenetv1", paper=MOBILENET_V1_PAPER)
def mobilenetv1_075(**kw) -> MobileNetV1:
    return _mobilenet_v1(0.75, **kw)


@register_model(family="mobilenetv1", paper=MOBILENET_V1_PAPER)
def mobilenetv1_050(**kw) -> MobileNetV1:
    return _mobilenet_v1(0.5, **kw)


@register_model(family="mobilenetv1", paper=MOBILENET_V1_PAPER)
def mobilenetv1_025(**kw) -> MobileNetV1:
    return _mobilenet_v1(0.25, **kw)
