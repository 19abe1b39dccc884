"""ShuffleNet V1 and V2.

* Zhang et al., "ShuffleNet: An Extremely Efficient Convolutional Neural Network for Mobile Devices",
  arXiv:1707.01083 (CVPR 2018). Table 1 (architecture), Fig. 2 (units), Sec. 3.1 (channel shuffle).
* Ma et al., "ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture Design", arXiv:1807.11164
  (ECCV 2018). Table 5 (architecture), Fig. 3 (c)/(d) (units).

Key ideas. V1: the 1x1 convolutions dominate the cost of a bottleneck, so make them *group* convolutions
(g groups: g times fewer weights and mult-adds) and, because stacked group convs never mix information
across groups, *shuffle* the channels between them (reshape (g, n) -> transpose -> flatten, Fig. 1c).
V2: measured speed depends on memory access as well as FLOPs (guidelines G1-G4, Sec. 2), so drop group
convs and the element-wise add: *split* the channels in two halves, send one through the branch
(1x1 -> 3x3 depthwise -> 1x1, equal widths) and the other through untouched, *concatenate*, then shuffle
with 2 groups so the halves mix in the next unit.

Deviations:
* V1 has no common reference implementation. We follow the paper's text and Table 1 (bottleneck width =
  1/4 of the unit's output width, Sec. 3.3; no group conv in the first 1x1 of Stage 2; stride-2 units
  concatenate a 3x3/2 average-pooled shortcut, Fig. 2c) and the authors' released code
  (megvii-model/ShuffleNet-Series) where the paper is silent: ReLU after the first 1x1 only, not after the
  depthwise conv (Sec. 3.2); the channel shuffle is applied whenever g > 1. Our multiply-adds at 224x224
  match Table 1's complexity within 5% (tested). The classifier has a bias (the released code has none).
* V1 width ``s`` ("ShuffleNet sx", Sec. 4.1) rounds each stage width to a multiple of 4g, so that the
  bottleneck (width/4) splits into g groups, and the stem width 24s to a multiple of g (the authors' code
  scales the stem too); the paper does not say how it rounds. 0.5x lands within 5% of Table 2's 38
  MFLOPs for g <= 4 (g = 8: +6.5%); see docs/models/cnn/shufflenet.md.
* V2 is laid out as torchvision's ``shufflenet_v2_x*`` (whose weights load with ``source="torchvision"``).
* Init: the authors' code (normal(0, 0.01) for the stem conv and the classifier, normal(0, 1/fan-in
  channels) for other convs, BN bias 1e-4); torchvision keeps PyTorch defaults for V2.
* ``small_input=True`` makes the stem conv stride 1 and drops the max-pool, so a 32x32 image reaches
  Stage 2 at 32x32 and leaves Stage 4 at 4x4 (total stride 8 instead of 32).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch import Tensor

from ..layers import ChannelShuffle, ConvNormAct, channel_shuffle, make_divisible
from ..registry import Paper, register_model
from ..weights import register_converter
from ._base import ImageClassifier
from .features import FeatureLevel, chain_levels

V1_PAPER = Paper("ShuffleNet: An Extremely Efficient Convolutional Neural Network for Mobile Devices",
                 "1707.01083", 2018)
V2_PAPER = Paper("ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture Design",
                 "1807.11164", 2018)

# Table 1 of the V1 paper: output channels of Stage 2, 3, 4 for ShuffleNet 1x, one row per group count g,
# and the complexity (MFLOPs = million multiply-adds) printed under each column.
V1_TABLE1_STAGE_OUT: dict[int, tuple[int, int, int]] = {
    1: (144, 288, 576),
    2: (200, 400, 800),
    3: (240, 480, 960),
    4: (272, 544, 1088),
    8: (384, 768, 1536),
}
V1_TABLE1_MFLOPS: dict[int, int] = {1: 143, 2: 140, 3: 137, 4: 133, 8: 137}

# Table 5 of the V2 paper: output channels of Stage 2, 3, 4 and Conv5 for each width multiplier.
V2_TABLE5_CHANNELS: dict[str, tuple[int, int, int, int]] = {
    "0.5": (48, 96, 192, 1024),
    "1.0": (116, 232, 464, 1024),
    "1.5": (176, 352, 704, 1024),
    "2.0": (244, 488, 976, 2048),
}
STAGE_REPEATS = (4, 8, 4)  # both papers: one stride-2 unit, then 3 / 7 / 3 stride-1 units


def _init_weights(model: nn.Module) -> None:
    """The authors' init (megvii-model/ShuffleNet-Series, ``_initialize_weights``, V1 and V2 alike)."""
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            std = 0.01 if name.startswith("conv1") else 1.0 / m.weight.shape[1]  # shape[1] = in_chs / groups
            nn.init.normal_(m.weight, 0.0, std)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.constant_(m.bias, 1e-4)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


def _stem(in_chans: int, out_chs: int, small_input: bool) -> tuple[ConvNormAct, nn.Module]:
    """Conv1 3x3/2 + MaxPool 3x3/2 (both Tables); stride 1 and no pool for small inputs."""
    conv1 = ConvNormAct(in_chans, out_chs, 3, stride=1 if small_input else 2)
    return conv1, nn.Identity() if small_input else nn.MaxPool2d(3, 2, 1)


def _shufflenet_levels(model: nn.Module, widths: tuple[int, ...], tail: list) -> list[FeatureLevel]:
    """Conv1, the max-pooled map, then Stages 2-4 of ``widths`` channels (``tail``: V2's Conv5 ends the
    last), one level per stride of Table 1 / 5 (features_only)."""
    c = model.conv1.conv.out_channels
    stages = [(f"stage{i}", 2, w) for i, w in zip((2, 3, 4), widths)]
    return chain_levels(model, [("conv1", 2, c), ("maxpool", 2, c), *stages, *tail])


# ------------------------------------------------------------------------------------------ ShuffleNet V1
class ShuffleV1Unit(nn.Module):
    """ShuffleNet unit, Fig. 2 (b) for stride 1 and (c) for stride 2.

    1x1 GConv -> BN -> ReLU -> channel shuffle -> 3x3 DWConv (stride) -> BN -> 1x1 GConv -> BN, then
    ``ReLU(x + branch)`` (stride 1) or ``ReLU(concat(AvgPool3x3/2(x), branch))`` (stride 2: the concat
    widens the output "with little extra computation cost").
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int, g: int, group_first_pw: bool = True) -> None:
        super().__init__()
        self.stride = stride
        mid = out_chs // 4  # bottleneck width = 1/4 of the output channels (Sec. 3.3)
        branch_out = out_chs - in_chs if stride == 2 else out_chs  # the pooled shortcut fills the rest
        # "we do not apply group convolution on the first pointwise layer [of Stage 2] because the number
        # of input channels is relatively small" (Table 1 note)
        self.gconv1 = ConvNormAct(in_chs, mid, 1, groups=g if group_first_pw else 1)
        self.shuffle = ChannelShuffle(g) if g > 1 else nn.Identity()
        # no ReLU after the depthwise conv (Sec. 3.2, following Xception)
        self.dwconv = ConvNormAct(mid, mid, 3, stride, groups=mid, act=None)
        self.gconv2 = ConvNormAct(mid, branch_out, 1, groups=g, act=None)
        self.shortcut = nn.AvgPool2d(3, 2, 1) if stride == 2 else nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.gconv2(self.dwconv(self.shuffle(self.gconv1(x))))
        if self.stride == 1:
            return self.relu(out + x)
        return self.relu(torch.cat([self.shortcut(x), out], dim=1))  # (B, C_in + C_branch, H/2, W/2)


@dataclass
class ShuffleNetV1Config:
    """ShuffleNet V1 hyper-parameters (Table 1). ``stage_out`` defaults to Table 1's row for ``g``."""

    g: int = 3  # groups of the pointwise convolutions
    s: float = 1.0  # width multiplier "ShuffleNet sx" (Sec. 4.1)
    stage_out: tuple[int, int, int] | None = None
    stage_repeats: tuple[int, int, int] = STAGE_REPEATS
    stem_chs: int = 24  # Conv1 of Table 1
    num_classes: int = 1000
    in_chans: int = 3
    small_input: bool = False
    drop_rate: float = 0.0  # dropout before the classifier


class ShuffleNetV1(ImageClassifier):
    """ShuffleNet V1 (Table 1 of arXiv:1707.01083)."""
    head_names, first_conv_name = ("fc",), "conv1.conv"  # what fine-tuning replaces / adapts

    def __init__(self, cfg: ShuffleNetV1Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.in_chans, self.num_classes, self.small_input = cfg.in_chans, cfg.num_classes, cfg.small_input
        if cfg.stage_out is None and cfg.g not in V1_TABLE1_STAGE_OUT:
            raise ValueError(f"ShuffleNet V1: g must be one of {sorted(V1_TABLE1_STAGE_OUT)} (Table 1), "
                             f"got {cfg.g}")
        widths = cfg.stage_out or V1_TABLE1_STAGE_OUT[cfg.g]
        stem_chs = cfg.stem_chs
        if cfg.s != 1.0:  # stage widths to multiples of 4g (bottleneck = width/4 in g groups), stem to g
            widths = tuple(make_divisible(c * cfg.s, 4 * cfg.g) for c in widths)
            stem_chs = make_divisible(cfg.stem_chs * cfg.s, cfg.g)
        self.conv1, self.maxpool = _stem(cfg.in_chans, stem_chs, cfg.small_input)
        # total stride 32 (8 with small_input): the smallest input whose Stage 4 map is at least 1x1
        self.min_input_size = (8, 8) if cfg.small_input else (32, 32)

        in_chs = stem_chs
        for i, (out_chs, n) in enumerate(zip(widths, cfg.stage_repeats)):  # Stage 2, 3, 4
            units = [ShuffleV1Unit(in_chs, out_chs, 2, cfg.g, group_first_pw=i > 0)]
            units += [ShuffleV1Unit(out_chs, out_chs, 1, cfg.g) for _ in range(n - 1)]
            self.add_module(f"stage{i + 2}", nn.Sequential(*units))
            in_chs = out_chs
        self.stage_widths = widths
        self.num_features = in_chs
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(cfg.drop_rate)
        self.fc = nn.Linear(in_chs, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        _init_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.conv1(x))
        return self.stage4(self.stage3(self.stage2(x)))  # (B, C, H/32, W/32)

    def feature_levels(self) -> list[FeatureLevel]:
        return _shufflenet_levels(self, self.stage_widths, [])

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.global_pool(x).flatten(1)  # (B, C)
        return x if pre_logits else self.fc(self.drop(x))


# ------------------------------------------------------------------------------------------ ShuffleNet V2
class ShuffleV2Unit(nn.Module):
    """ShuffleNet V2 unit, Fig. 3 (c) basic unit (stride 1) and (d) down-sampling unit (stride 2).

    (c): split the channels in halves; the left half is the identity (G1/G4: no add, equal widths), the
    right goes through 1x1 -> 3x3 DW -> 1x1; concat; shuffle with 2 groups.
    (d): no split; both branches see the whole input and stride 2, so the output width doubles.
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        branch = out_chs // 2
        if stride == 1 and in_chs != 2 * branch:
            raise ValueError(f"a stride-1 ShuffleNet V2 unit keeps its width; got {in_chs} -> {out_chs}")
        self.branch1: nn.Module | None = None
        if stride == 2:  # left branch of Fig. 3d: 3x3 DW/2 -> BN -> 1x1 -> BN -> ReLU
            self.branch1 = nn.Sequential(
                ConvNormAct(in_chs, in_chs, 3, stride, groups=in_chs, act=None),
                ConvNormAct(in_chs, branch, 1),
            )
        self.branch2 = nn.Sequential(  # right branch: 1x1 -> BN -> ReLU -> 3x3 DW -> BN -> 1x1 -> BN -> ReLU
            ConvNormAct(in_chs if stride == 2 else branch, branch, 1),
            ConvNormAct(branch, branch, 3, stride, groups=branch, act=None),
            ConvNormAct(branch, branch, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.branch1 is None:
            x1, x2 = x.chunk(2, dim=1)  # channel split: (B, C/2, H, W) each
            out = torch.cat([x1, self.branch2(x2)], dim=1)  # (B, C, H, W)
        else:
            out = torch.cat([self.branch1(x), self.branch2(x)], dim=1)  # (B, C_out, H/2, W/2)
        return channel_shuffle(out, 2)


@dataclass
class ShuffleNetV2Config:
    """ShuffleNet V2 hyper-parameters: ``channels`` = (Stage 2, Stage 3, Stage 4, Conv5) of Table 5."""

    channels: tuple[int, int, int, int] = V2_TABLE5_CHANNELS["1.0"]
    stage_repeats: tuple[int, int, int] = STAGE_REPEATS
    stem_chs: int = 24
    num_classes: int = 1000
    in_chans: int = 3
    small_input: bool = False
    drop_rate: float = 0.0


class ShuffleNetV2(ImageClassifier):
    """ShuffleNet V2 (Table 5 of arXiv:1807.11164)."""
    head_names, first_conv_name = ("fc",), "conv1.conv"  # what fine-tuning replaces / adapts

    def __init__(self, cfg: ShuffleNetV2Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.in_chans, self.num_classes, self.small_input = cfg.in_chans, cfg.num_classes, cfg.small_input
        self.conv1, self.maxpool = _stem(cfg.in_chans, cfg.stem_chs, cfg.small_input)
        self.min_input_size = (8, 8) if cfg.small_input else (32, 32)
        in_chs = cfg.stem_chs
        for i, (out_chs, n) in enumerate(zip(cfg.channels[:3], cfg.stage_repeats)):  # Stage 2, 3, 4
            units = [ShuffleV2Unit(in_chs, out_chs, 2)]
            units += [ShuffleV2Unit(out_chs, out_chs, 1) for _ in range(n - 1)]
            self.add_module(f"stage{i + 2}", nn.Sequential(*units))
            in_chs = out_chs
        self.conv5 = ConvNormAct(in_chs, cfg.channels[3], 1)
        self.num_features = cfg.channels[3]
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(cfg.drop_rate)
        self.fc = nn.Linear(self.num_features, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        _init_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.conv1(x))
        x = self.stage4(self.stage3(self.stage2(x)))
        return self.conv5(x)  # (B, 1024 or 2048, H/32, W/32)

    def feature_levels(self) -> list[FeatureLevel]:
        return _shufflenet_levels(self, self.cfg.channels[:3], [("conv5", 1, self.num_features)])

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.global_pool(x).flatten(1)  # (B, C)
        return x if pre_logits else self.fc(self.drop(x))


# ------------------------------------------------------------------------------------ weight conversion
# torchvision's ShuffleNetV2 keeps each conv and BN as a flat nn.Sequential index; ours nest them in
# ConvNormAct (conv/bn/act). ReLUs (no parameters) take indices in theirs, hence the gaps.
_TV_SEQ_INDEX = {
    "branch1": {0: "0.conv", 1: "0.bn", 2: "1.conv", 3: "1.bn"},
    "branch2": {0: "0.conv", 1: "0.bn", 3: "1.conv", 4: "1.bn", 5: "2.conv", 6: "2.bn"},
    "conv1": {0: "conv", 1: "bn"},
    "conv5": {0: "conv", 1: "bn"},
}
_TV_KEY = re.compile(
    r"^(?P<prefix>(?:stage\d\.\d+\.)?)(?P<seq>branch1|branch2|conv1|conv5)\.(?P<idx>\d+)\.(?P<rest>.+)$"
)


def _tv_key_to_ours(key: str) -> str:
    m = _TV_KEY.match(key)
    if m is None:  # fc.weight / fc.bias and unknown keys pass through (strict loading reports the latter)
        return key
    idx = int(m["idx"])
    ours = _TV_SEQ_INDEX[m["seq"]].get(idx)
    if ours is None:
        return key
    return f"{m['prefix']}{m['seq']}.{ours}.{m['rest']}"


@register_converter("shufflenet_v2", "torchvision")
def _from_torchvision_v2(sd: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """torchvision ``shufflenet_v2_x*`` -> ours (see docs/models/cnn/shufflenet.md for the table)."""
    return {_tv_key_to_ours(k): v for k, v in sd.items()}


# ----------------------------------------------------------------------------------- registered models
def _v1(g: int, **kw) -> ShuffleNetV1:
    return ShuffleNetV1(ShuffleNetV1Config(g=g, **kw))


def _v2(width: str, **kw) -> ShuffleNetV2:
    return ShuffleNetV2(ShuffleNetV2Config(channels=V2_TABLE5_CHANNELS[width], **kw))


# V1: no common reference implementation, so no reference count; docs/models/cnn/shufflenet.md lists
# params and MFLOPs beside Table 1/2 of the paper, and tests/models/test_shufflenet.py checks the MFLOPs.
@register_model(family="shufflenet_v1", paper=V1_PAPER)
def shufflenet_v1_g1(**kw) -> ShuffleNetV1:
    return _v1(1, **kw)


@register_model(family="shufflenet_v1", paper=V1_PAPER)
def shufflenet_v1_g2(**kw) -> ShuffleNetV1:
    return _v1(2, **kw)


@register_model(family="shufflenet_v1", paper=V1_PAPER)
def shufflenet_v1_g3(**kw) -> ShuffleNetV1:
    return _v1(3, **kw)


@register_model(family="shufflenet_v1", paper=V1_PAPER)
def shufflenet_v1_g4(**kw) -> ShuffleNetV1:
    return _v1(4, **kw)


@register_model(family="shufflenet_v1", paper=V1_PAPER)
def shufflenet_v1_g8(**kw) -> ShuffleNetV1:
    return _v1(8, **kw)


# V2 reference counts: torchvision shufflenet_v2_x0_5 .. x2_0 at 1000 classes.
@register_model(family="shufflenet_v2", paper=V2_PAPER, ref_params=1_366_792, ref_source="torchvision")
def shufflenet_v2_x0_5(**kw) -> ShuffleNetV2:
    return _v2("0.5", **kw)


@register_model(family="shufflenet_v2", paper=V2_PAPER, ref_params=2_278_604, ref_source="torchvision")
def shufflenet_v2_x1_0(**kw) -> ShuffleNetV2:
    return _v2("1.0", **kw)


@register_model(family="shufflenet_v2", paper=V2_PAPER, ref_params=3_503_624, ref_source="torchvision")
def shufflenet_v2_x1_5(**kw) -> ShuffleNetV2:
    return _v2("1.5", **kw)


@register_model(family="shufflenet_v2", paper=V2_PAPER, ref_params=7_393_996, ref_source="torchvision")
def shufflenet_v2_x2_0(**kw) -> ShuffleNetV2:
    return _v2("2.0", **kw)
