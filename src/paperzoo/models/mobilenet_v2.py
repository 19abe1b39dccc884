"""MobileNet V2.

Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", arXiv:1801.04381 (CVPR 2018).

Key idea: the *inverted residual with linear bottleneck* (Sec. 3.3, Table 1). A block expands a thin
input (the bottleneck, k channels) by a factor t with a 1x1 conv + ReLU6, filters it with a 3x3 depthwise
conv + ReLU6, and projects back to k' channels with a 1x1 conv and **no** nonlinearity: ReLU on a
low-dimensional manifold destroys information (Sec. 3.2), so the bottleneck stays linear. The shortcut
connects the thin bottlenecks (not the wide expansions as in ResNet) when stride is 1 and widths match.
The network is the stack of Table 2: rows (t, c, n, s) repeat a block n times, the first with stride s.

Deviations from the paper (none affects the architecture of the reference models):
* The width multiplier rounds channels with ``make_divisible(c·α, 8)`` and keeps the last conv at
  ``max(1280, 1280·α)`` channels, as the paper's reference code and torchvision do (Sec. 6.1 mentions
  that the last layer is not thinned for α < 1).
* ``small_input=True`` makes the stem conv and the first stride-2 row (t=6, c=24) stride 1, so the network
  downsamples 8x instead of 32x (as the common CIFAR versions of MobileNetV2 do).
* Optional stochastic depth (``drop_path_rate``) on the residual blocks, off by default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch.nn as nn
from torch import Tensor

from ..layers import ConvNormAct, InvertedResidual, drop_path_rates, make_divisible
from ..registry import Paper, register_model
from ..weights import register_converter
from ._base import ImageClassifier
from ._mobile_common import adopt_bn_eps, init_mobile_weights, rename_modules, set_batchnorm, timm_mbconv_mapping
from .features import FeatureLevel, chain_levels

MOBILENET_V2_PAPER = Paper("MobileNetV2: Inverted Residuals and Linear Bottlenecks", "1801.04381", 2018)


class BottleneckRow(NamedTuple):
    """One row of Table 2: expansion t, output channels c, repeats n, stride s of the first repeat."""

    t: int
    c: int
    n: int
    s: int


# Table 2. "conv2d 3x3, 32, s2" (the stem) comes before, "conv2d 1x1, 1280" (the head) after.
TABLE_2: tuple[BottleneckRow, ...] = (
    BottleneckRow(1, 16, 1, 1),   # 112² x 32  -> 112² x 16
    BottleneckRow(6, 24, 2, 2),   # 112² x 16  -> 56² x 24
    BottleneckRow(6, 32, 3, 2),   # 56² x 24   -> 28² x 32
    BottleneckRow(6, 64, 4, 2),   # 28² x 32   -> 14² x 64
    BottleneckRow(6, 96, 3, 1),   # 14² x 64   -> 14² x 96
    BottleneckRow(6, 160, 3, 2),  # 14² x 96   -> 7² x 160
    BottleneckRow(6, 320, 1, 1),  # 7² x 160   -> 7² x 320
)
STEM_CHANNELS, HEAD_CHANNELS = 32, 1280


@dataclass
class MobileNetV2Config:
    """MobileNet V2 hyper-parameters; ``alpha`` is the width multiplier (Sec. 5.1)."""

    alpha: float = 1.0
    num_classes: int = 1000
    in_chans: int = 3
    drop_rate: float = 0.2  # dropout before the classifier, as torchvision
    drop_path_rate: float = 0.0
    small_input: bool = False
    bn_eps: float = 1e-5  # torchvision and timm both use the PyTorch default here
    bn_momentum: float = 0.1


class MobileNetV2(ImageClassifier):
    """MobileNet V2: stem, the inverted-residual stages of Table 2 (``stages[i][j]``), 1x1 head conv, FC."""
    head_names, first_conv_name = ("classifier",), "stem.conv"  # what fine-tuning replaces / adapts

    def __init__(self, cfg: MobileNetV2Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.in_chans, self.num_classes, self.small_input = cfg.in_chans, cfg.num_classes, cfg.small_input

        def width(c: int) -> int:
            return make_divisible(c * cfg.alpha, 8)

        in_chs = width(STEM_CHANNELS)
        self.stem = ConvNormAct(cfg.in_chans, in_chs, 3, 1 if cfg.small_input else 2, act=nn.ReLU6,
                                bn_eps=cfg.bn_eps)
        dpr = iter(drop_path_rates(cfg.drop_path_rate, sum(r.n for r in TABLE_2), endpoint=False))
        stages, first_s2 = [], True
        for row in TABLE_2:
            stride = row.s
            if cfg.small_input and stride == 2 and first_s2:
                stride, first_s2 = 1, False
            blocks = []
            for j in range(row.n):
                blocks.append(InvertedResidual(
                    in_chs, width(row.c), 3, stride if j == 0 else 1, expand_ratio=row.t, act=nn.ReLU6,
                    bn_eps=cfg.bn_eps, drop_path=next(dpr)))
                in_chs = width(row.c)
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.num_features = make_divisible(HEAD_CHANNELS * max(1.0, cfg.alpha), 8)
        self.head = ConvNormAct(in_chs, self.num_features, 1, act=nn.ReLU6, bn_eps=cfg.bn_eps)
        self.min_input_size = (8, 8) if cfg.small_input else (32, 32)  # total stride
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(cfg.drop_rate)
        self.classifier = nn.Linear(self.num_features, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        set_batchnorm(self, cfg.bn_eps, cfg.bn_momentum)
        init_mobile_weights(self, fc_init="normal")  # torchvision's MobileNetV2 init

    def forward_features(self, x: Tensor) -> Tensor:
        return self.head(self.stages(self.stem(x)))  # (B, 1280, H/32, W/32)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.global_pool(x).flatten(1)  # (B, C)
        return x if pre_logits else self.classifier(self.drop(x))

    def feature_levels(self) -> list[FeatureLevel]:
        """The stem with the first stage, then the end of each resolution of Table 2; the 1x1 head conv is not
        a level (as timm; features_only)."""
        chain = [("stem", 2, self.stem.conv.out_channels)]
        chain += [(f"stages.{i}", row.s, stage[-1].project.conv.out_channels)
                  for i, (row, stage) in enumerate(zip(TABLE_2, self.stages))]
        return chain_levels(self, chain)


# ------------------------------------------------------------------------------------------ weight converters
# torchvision `mobilenet_v2`: one flat `features` Sequential; each InvertedResidual keeps its layers in `.conv`:
#   stem.{conv,bn}                  <- features.0.{0,1}
#   stages.i.j (t = 1)  dw.{conv,bn} <- features.k.conv.0.{0,1};  project.conv/bn <- features.k.conv.1 / conv.2
#   stages.i.j (t > 1)  expand       <- features.k.conv.0.{0,1};  dw <- conv.1.{0,1};  project <- conv.2 / conv.3
#   head.{conv,bn}                  <- features.18.{0,1}          (k = 1 + flat block index)
#   classifier                      <- classifier.1               (classifier.0 is the Dropout)
@register_converter("mobilenetv2", "torchvision")
def _from_torchvision(sd: dict, model: MobileNetV2) -> dict:
    adopt_bn_eps(model, 1e-5)  # torchvision's MobileNetV2 uses the nn.BatchNorm2d default
    mapping = {"stem.conv": "features.0.0", "stem.bn": "features.0.1", "classifier": "classifier.1"}
    k = 1
    for i, stage in enumerate(model.stages):
        for j, block in enumerate(stage):
            ours, src = f"stages.{i}.{j}", f"features.{k}.conv"
            layers = ["expand", "dw"] if isinstance(block.expand, ConvNormAct) else ["dw"]
            for n, name in enumerate(layers):  # ConvNormAct = Sequential(conv, bn, act) in torchvision
                mapping.update({f"{ours}.{name}.conv": f"{src}.{n}.0", f"{ours}.{name}.bn": f"{src}.{n}.1"})
            n = len(layers)  # the projection is a bare Conv2d + BatchNorm2d in the Sequential
            mapping.update({f"{ours}.project.conv": f"{src}.{n}", f"{ours}.project.bn": f"{src}.{n + 1}"})
            k += 1
    mapping.update({"head.conv": f"features.{k}.0", "head.bn": f"features.{k}.1"})
    return rename_modules(sd, model, mapping)


# timm `mobilenetv2_100`: conv_stem/bn1, blocks.{stage}.{j} (a stage per Table 2 row), conv_head/bn2, classifier;
# the t = 1 block is a DepthwiseSeparableConv (conv_dw, bn1, conv_pw, bn2), the others InvertedResidual
# (conv_pw, bn1, conv_dw, bn2, conv_pwl, bn3).
@register_converter("mobilenetv2", "timm")
def _from_timm(sd: dict, model: MobileNetV2) -> dict:
    adopt_bn_eps(model, 1e-5)  # timm's mobilenetv2_X (not its tf_ ports) uses the nn.BatchNorm2d default
    return rename_modules(sd, model, timm_mbconv_mapping(model))


# ----------------------------------------------------------------------------------------- registered models
def _mobilenet_v2(alpha: float, **kw) -> MobileNetV2:
    return MobileNetV2(MobileNetV2Config(alpha=alpha, **kw))


@register_model(family="mobilenetv2", paper=MOBILENET_V2_PAPER, ref_params=3_504_872, ref_source="torchvision")
def mobilenetv2_100(**kw) -> MobileNetV2:
    return _mobilenet_v2(1.0, **kw)


@register_model(family="mobilenetv2", paper=MOBILENET_V2_PAPER)
def mobilenetv2_050(**kw) -> MobileNetV2:
    return _mobilenet_v2(0.5, **kw)


@register_model(family="mobilenetv2", paper=MOBILENET_V2_PAPER)
def mobilenetv2_075(**kw) -> MobileNetV2:
    return _mobilenet_v2(0.75, **kw)


@register_model(family="mobilenetv2", paper=MOBILENET_V2_PAPER)
def mobilenetv2_140(**kw) -> MobileNetV2:
    return _mobilenet_v2(1.4, **kw)
