"""MobileNet V3 (Large and Small).

Howard et al., "Searching for MobileNetV3", arXiv:1905.02244 (ICCV 2019).

Key idea: the MobileNetV2 inverted residual ("bneck", Sec. 5), found per layer by platform-aware NAS and
NetAdapt (Sec. 4), plus three hand-made changes:
* **h-swish** (Sec. 5.2): h-swish(x) = x·ReLU6(x + 3)/6, a piecewise-linear swish, used only in the deeper
  half of the network (the NL column, "HS"), where the resolution and so its cost is lower; ReLU ("RE")
  in the early layers.
* **Squeeze-and-excite inside the bottleneck** (Sec. 5.3), after the depthwise conv, with the reduced width
  fixed to 1/4 of the expansion width (rounded to a multiple of 8) and an h-sigmoid gate.
* **Efficient last stage** (Sec. 5.1, Fig. 5): the 1x1 conv to 960 (576) channels is followed by global
  pooling and then two 1x1 convs *without BN* (1280 / 1024 and k), so the expensive head works on 1x1 maps.

Deviations from the paper (all as in torchvision and timm, whose weights load here unchanged):
* Table 2 marks an SE module on the last 1x1 conv (576) of MobileNetV3-Small; the reference models do not
  have it (their parameter count, 2,542,856, leaves no room for it), and neither do we.
* The two head "conv2d 1x1, NBN" layers act on a pooled 1x1 map, so they are ``nn.Linear`` here.
* BatchNorm eps 1e-3 by default, the TF reference and torchvision value; timm's models use 1e-5. eps changes
  outputs, so ``load_weights`` gives the model its source's eps (``SOURCE_BN_EPS``). Momentum defaults
  to PyTorch's 0.1, not the reference's 0.01: 0.01 suits its 600-epoch schedule, but on short runs the running
  statistics lag the weights so far that eval accuracy collapses (a 3-epoch Fashion-MNIST run: 9.5 % with
  0.01, 83 % after re-estimating the statistics). ``bn_momentum=0.01`` reproduces torchvision's training.
* ``alpha`` (width multiplier) scales every layer, the head included, with ``make_divisible(c·α, 8)``,
  torchvision's rule; only α = 1.0 is registered, since the paper's 0.75 models (Table 3) and timm's scale
  differently and we have no reference to verify them against.
* ``small_input=True`` makes the stem conv and the first stride-2 bneck stride 1 (8x instead of 32x
  downsampling) for 28x28 / 32x32 images.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import torch.nn as nn
from torch import Tensor

from ..layers import (
    ConvNormAct,
    HardSigmoid,
    HardSwish,
    InvertedResidual,
    SqueezeExcite,
    drop_path_rates,
    make_divisible,
)
from ..registry import Paper, register_model
from ..weights import register_converter
from ._base import ImageClassifier
from ._mobile_common import (
    adopt_bn_eps,
    init_mobile_weights,
    rename_modules,
    set_batchnorm,
    timm_block_map,
    timm_stage_index,
    torchvision_mbconv_map,
)
from .features import FeatureLevel, chain_levels

MOBILENET_V3_PAPER = Paper("Searching for MobileNetV3", "1905.02244", 2019)
RE, HS = nn.ReLU, HardSwish  # the NL column of Tables 1 and 2


class BneckRow(NamedTuple):
    """One bneck row of Tables 1/2: kernel k, expansion width exp, output width out, SE, nonlinearity, stride."""

    k: int
    exp: int
    out: int
    se: bool
    nl: Callable[..., nn.Module]
    s: int


# Table 1: MobileNetV3-Large. Stem "conv2d, 16, HS, s2" before; "conv2d 1x1, 960, HS", pool,
# "conv2d 1x1 NBN, 1280, HS", "conv2d 1x1 NBN, k" after.
TABLE_1_LARGE: tuple[BneckRow, ...] = (
    BneckRow(3, 16, 16, False, RE, 1),    # 112² x 16
    BneckRow(3, 64, 24, False, RE, 2),    # 112² x 16 -> 56²
    BneckRow(3, 72, 24, False, RE, 1),
    BneckRow(5, 72, 40, True, RE, 2),     # 56² x 24 -> 28²
    BneckRow(5, 120, 40, True, RE, 1),
    BneckRow(5, 120, 40, True, RE, 1),
    BneckRow(3, 240, 80, False, HS, 2),   # 28² x 40 -> 14²
    BneckRow(3, 200, 80, False, HS, 1),
    BneckRow(3, 184, 80, False, HS, 1),
    BneckRow(3, 184, 80, False, HS, 1),
    BneckRow(3, 480, 112, True, HS, 1),
    BneckRow(3, 672, 112, True, HS, 1),
    BneckRow(5, 672, 160, True, HS, 2),   # 14² x 112 -> 7²
    BneckRow(5, 960, 160, True, HS, 1),
    BneckRow(5, 960, 160, True, HS, 1),
)
# Table 2: MobileNetV3-Small. Stem "conv2d 3x3, 16, HS, s2" before; "conv2d 1x1, 576, HS", pool,
# "conv2d 1x1 NBN, 1024, HS", "conv2d 1x1 NBN, k" after.
TABLE_2_SMALL: tuple[BneckRow, ...] = (
    BneckRow(3, 16, 16, True, RE, 2),     # 112² x 16 -> 56²
    BneckRow(3, 72, 24, False, RE, 2),    # 56² -> 28²
    BneckRow(3, 88, 24, False, RE, 1),
    BneckRow(5, 96, 40, True, HS, 2),     # 28² -> 14²
    BneckRow(5, 240, 40, True, HS, 1),
    BneckRow(5, 240, 40, True, HS, 1),
    BneckRow(5, 120, 48, True, HS, 1),
    BneckRow(5, 144, 48, True, HS, 1),
    BneckRow(5, 288, 96, True, HS, 2),    # 14² -> 7²
    BneckRow(5, 576, 96, True, HS, 1),
    BneckRow(5, 576, 96, True, HS, 1),
)


@dataclass
class MobileNetV3Config:
    """MobileNet V3 hyper-parameters: the bneck table, stem/last-conv/head widths and width multiplier α."""

    table: tuple[BneckRow, ...] = TABLE_1_LARGE
    stem_chs: int = 16
    last_conv_chs: int = 960  # "conv2d 1x1" before pooling: 960 (Large), 576 (Small)
    head_chs: int = 1280  # "conv2d 1x1, NBN" after pooling: 1280 (Large), 1024 (Small)
    alpha: float = 1.0
    num_classes: int = 1000
    in_chans: int = 3
    drop_rate: float = 0.2  # dropout before the last layer (torchvision, timm)
    drop_path_rate: float = 0.0
    small_input: bool = False
    bn_eps: float = 1e-3  # TF reference and torchvision; timm uses 1e-5 (see module docstring)
    bn_momentum: float = 0.1  # torchvision trains with 0.01 over 600 epochs (see module docstring)


def se_width(exp: int) -> int:
    """Reduced SE width: 1/4 of the expansion layer, rounded to a multiple of 8 (Sec. 5.3)."""
    return make_divisible(exp // 4, 8)


class MobileNetV3(ImageClassifier):
    """MobileNet V3: stem, one bneck per table row (``blocks[i]``), last conv, pool, hidden FC + h-swish, FC."""
    head_names, first_conv_name = ("classifier",), "stem.conv"  # what fine-tuning replaces / adapts

    def __init__(self, cfg: MobileNetV3Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.in_chans, self.num_classes, self.small_input = cfg.in_chans, cfg.num_classes, cfg.small_input

        def width(c: int) -> int:
            return make_divisible(c * cfg.alpha, 8)

        in_chs = width(cfg.stem_chs)
        self.stem = ConvNormAct(cfg.in_chans, in_chs, 3, 1 if cfg.small_input else 2, act=HS, bn_eps=cfg.bn_eps)
        blocks, first_s2 = [], True
        dpr = drop_path_rates(cfg.drop_path_rate, len(cfg.table), endpoint=False)
        for i, row in enumerate(cfg.table):
            stride = row.s
            if cfg.small_input and stride == 2 and first_s2:
                stride, first_s2 = 1, False
            exp = width(row.exp)
            # SE gate: h-sigmoid (Sec. 5.3); its hidden layer uses ReLU in every reference implementation.
            se = partial(SqueezeExcite, rd_channels=se_width(exp), act=nn.ReLU, gate=HardSigmoid) if row.se else None
            blocks.append(InvertedResidual(in_chs, width(row.out), row.k, stride, mid_chs=exp, act=row.nl,
                                           se_layer=se, bn_eps=cfg.bn_eps,
                                           drop_path=dpr[i]))
            in_chs = width(row.out)
        self.blocks = nn.Sequential(*blocks)
        self.last_conv = ConvNormAct(in_chs, width(cfg.last_conv_chs), 1, act=HS, bn_eps=cfg.bn_eps)
        self.num_features = width(cfg.head_chs)  # what forward_head(pre_logits=True) returns
        self.min_input_size = (8, 8) if cfg.small_input else (32, 32)  # total stride
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.head_fc = nn.Linear(width(cfg.last_conv_chs), self.num_features)  # "conv2d 1x1, NBN" on a 1x1 map
        self.head_act = HS()
        self.drop = nn.Dropout(cfg.drop_rate)
        self.classifier = nn.Linear(self.num_features, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        set_batchnorm(self, cfg.bn_eps, cfg.bn_momentum)
        init_mobile_weights(self, fc_init="normal")  # torchvision's MobileNetV3 init

    def forward_features(self, x: Tensor) -> Tensor:
        return self.last_conv(self.blocks(self.stem(x)))  # (B, 960, H/32, W/32)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.global_pool(x).flatten(1)  # (B, C): pooling *before* the head convs (Fig. 5)
        x = self.head_act(self.head_fc(x))  # (B, 1280)
        return x if pre_logits else self.classifier(self.drop(x))

    def feature_levels(self) -> list[FeatureLevel]:
        """The stem with the first bnecks, then the end of each resolution of Table 1/2, the last with the 1x1
        conv before pooling, as forward_features (timm's too; features_only)."""
        chain = [("stem", 2, self.stem.conv.out_channels)]
        chain += [(f"blocks.{i}", row.s, b.project.conv.out_channels)
                  for i, (row, b) in enumerate(zip(self.cfg.table, self.blocks))]
        chain.append(("last_conv", 1, self.last_conv.conv.out_channels))
        return chain_levels(self, chain)


# ------------------------------------------------------------------------------------------ weight converters
# BatchNorm eps of each source's model: not stored in the state dict, but it changes eval outputs, so each
# converter gives it to the model (torchvision: norm_layer=partial(nn.BatchNorm2d, eps=0.001, ...); timm: the
# nn.BatchNorm2d default, except its tf_ ports, which also pad "SAME" and are not supported).
SOURCE_BN_EPS = {"torchvision": 1e-3, "timm": 1e-5}


# torchvision `mobilenet_v3_large` / `_small`: flat `features`; each bneck holds its layers in `.block`, in
# order [expand (if exp != in)], dw, [SE], project, each conv layer a Sequential(conv, bn, act):
#   stem                       <- features.0.{0,1}
#   blocks.i expand/dw/project <- features.{i+1}.block.{n}.{0,1}   (n counts the present layers)
#   blocks.i se.fc1 / se.fc2   <- features.{i+1}.block.{n}.fc1 / fc2
#   last_conv                  <- features.{len+1}.{0,1}
#   head_fc / classifier       <- classifier.0 / classifier.3    (1: Hardswish, 2: Dropout)
@register_converter("mobilenetv3", "torchvision")
def _from_torchvision(sd: dict, model: MobileNetV3) -> dict:
    adopt_bn_eps(model, SOURCE_BN_EPS["torchvision"])
    mapping = {"stem.conv": "features.0.0", "stem.bn": "features.0.1",
               "head_fc": "classifier.0", "classifier": "classifier.3"}
    for i, block in enumerate(model.blocks):
        mapping.update(torchvision_mbconv_map(f"blocks.{i}", f"features.{i + 1}.block", block))
    k = len(model.blocks) + 1
    mapping.update({"last_conv.conv": f"features.{k}.0", "last_conv.bn": f"features.{k}.1"})
    return rename_modules(sd, model, mapping)


# timm `mobilenetv3_large_100` / `_small_100`: conv_stem/bn1; blocks.{stage}.{j} with a stage per run of equal
# output width (Large 1,2,3,4,2,3; Small 1,2,3,2,3), the first bneck a DepthwiseSeparableConv, the last conv a
# ConvBnAct stage of its own (blocks.{last}.0.conv / .bn1); the hidden head layer is a 1x1 conv with bias
# (`conv_head`, reshaped to our Linear), then `classifier`.
@register_converter("mobilenetv3", "timm")
def _from_timm(sd: dict, model: MobileNetV3) -> dict:
    adopt_bn_eps(model, SOURCE_BN_EPS["timm"])
    mapping = {"stem.conv": "conv_stem", "stem.bn": "bn1", "head_fc": "conv_head", "classifier": "classifier"}
    positions = timm_stage_index([b.project.conv.out_channels for b in model.blocks])
    for i, (block, (stage, j)) in enumerate(zip(model.blocks, positions)):
        mapping.update(timm_block_map(f"blocks.{i}", f"blocks.{stage}.{j}", block))
    last = positions[-1][0] + 1
    mapping.update({"last_conv.conv": f"blocks.{last}.0.conv", "last_conv.bn": f"blocks.{last}.0.bn1"})
    return rename_modules(sd, model, mapping, conv1x1_as_linear=["head_fc"])


# ----------------------------------------------------------------------------------------- registered models
def _large(alpha: float, **kw) -> MobileNetV3:
    return MobileNetV3(MobileNetV3Config(table=TABLE_1_LARGE, last_conv_chs=960, head_chs=1280, alpha=alpha, **kw))


def _small(alpha: float, **kw) -> MobileNetV3:
    return MobileNetV3(MobileNetV3Config(table=TABLE_2_SMALL, last_conv_chs=576, head_chs=1024, alpha=alpha, **kw))


@register_model(family="mobilenetv3", paper=MOBILENET_V3_PAPER, ref_params=5_483_032, ref_source="torchvision")
def mobilenetv3_large_100(**kw) -> MobileNetV3:
    return _large(1.0, **kw)


@register_model(family="mobilenetv3", paper=MOBILENET_V3_PAPER, ref_params=2_542_856, ref_source="torchvision")
def mobilenetv3_small_100(**kw) -> MobileNetV3:
    return _small(1.0, **kw)

