"""ResNet and SE-ResNet.

* He et al., "Deep Residual Learning for Image Recognition", arXiv:1512.03385 (CVPR 2016).
* Hu et al., "Squeeze-and-Excitation Networks", arXiv:1709.01507 (CVPR 2018): SE-ResNet puts an SE block
  on the residual branch, before the addition (Fig. 3).

Key idea: learn a residual F(x) and output F(x) + x (Eq. 1); the identity shortcut lets gradients and
signals pass through very deep stacks. Projection shortcuts (1x1 conv + BN, option B of Sec. 3.3) are used
only where the shape changes.

Deviations from the paper (all as in torchvision / timm, whose weights load here unchanged):
* Bottleneck downsampling is on the 3x3 conv (stride 2), not the first 1x1 ("ResNet v1.5").
* ``small_input=True`` replaces the 7x7/2 stem and max-pool by a 3x3/1 conv, as CIFAR-style ResNets do, so
  28x28 and 32x32 images keep their resolution into stage 1. ``stem_stride=2`` makes that conv 3x3/2: stage 1
  then runs at half resolution (14x14 for Fashion-MNIST), a quarter of the activations, and the same FLOPs at
  twice the width (measured on the 2-core CPU: no faster at width 32, see BENCHMARKS.md).
* Optional stochastic depth (``drop_path_rate``) and zero-initialised last BN of each block
  (``zero_init_residual``, Goyal et al. arXiv:1706.02677) for training from scratch.
* SE reduction ratio r = 16 (SENet Sec. 6.1), FC layers as 1x1 convs with bias.
* ``replace_stride_with_dilation`` (torchvision's option, for dense prediction: one flag per stage after the
  first): a flagged stage keeps its input's resolution and dilates its 3x3 convolutions by the stride it dropped
  (Chen et al., DeepLab, arXiv:1606.00915, Sec. 3.1), so later layers see the same context at a finer grid.
  ``(False, True, True)`` gives output stride 8, as torchvision's FCN and DeepLabV3 backbones. The weights and
  their shapes do not change; off (the default) the network is exactly the one above.

The CIFAR-10 networks of Sec. 4.2 (ResNet-20/32/44/56/110: 6n+2 layers, three stages of n basic blocks with
16, 32, 64 filters on 32x32 maps, global pool, FC) are registered too, with the paper's parameter-free
option-A shortcuts (strided identity, zero-padded channels). They are what "small_input" means for ResNets at
paper scale, and cheap enough to train on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..layers import DropPath, SqueezeExcite, drop_path_rates
from ..registry import Paper, register_model
from ..weights import fill_bn_counters, register_converter
from ._base import ImageClassifier
from .features import FeatureLevel, chain_levels

RESNET_PAPER = Paper("Deep Residual Learning for Image Recognition", "1512.03385", 2016)
SENET_PAPER = Paper("Squeeze-and-Excitation Networks", "1709.01507", 2018)


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34, Table 1)."""

    expansion = 1

    def __init__(self, in_chs: int, planes: int, stride: int = 1, se_ratio: float | None = None,
                 drop_path: float = 0.0, zero_pad_shortcut: bool = False, dilation: int = 1,
                 first_dilation: int | None = None) -> None:
        super().__init__()
        out_chs = planes * self.expansion
        d1 = first_dilation or dilation  # a stage's first block keeps the previous stage's dilation (as timm)
        self.conv1 = nn.Conv2d(in_chs, planes, 3, stride, d1, dilation=d1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.se = SqueezeExcite(out_chs, rd_ratio=se_ratio) if se_ratio else None
        self.downsample = _shortcut(in_chs, out_chs, stride, zero_pad_shortcut)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.se is not None:
            out = self.se(out)
        return self.relu(self.drop_path(out) + shortcut)  # F(x) + x, Eq. 1


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 -> 1x1 expand (x4) (ResNet-50/101/152, Fig. 5 right)."""

    expansion = 4

    def __init__(self, in_chs: int, planes: int, stride: int = 1, se_ratio: float | None = None,
                 drop_path: float = 0.0, zero_pad_shortcut: bool = False, dilation: int = 1,
                 first_dilation: int | None = None) -> None:
        super().__init__()
        out_chs = planes * self.expansion
        d = first_dilation or dilation  # a stage's first block keeps the previous stage's (as torchvision)
        self.conv1 = nn.Conv2d(in_chs, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, d, dilation=d, bias=False)  # stride here: "v1.5"
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_chs, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_chs)
        self.relu = nn.ReLU(inplace=True)
        self.se = SqueezeExcite(out_chs, rd_ratio=se_ratio) if se_ratio else None
        self.downsample = _shortcut(in_chs, out_chs, stride, zero_pad_shortcut)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.se is not None:
            out = self.se(out)  # SE on the residual branch, before the sum (SENet Fig. 3)
        return self.relu(self.drop_path(out) + shortcut)


class PadShortcut(nn.Module):
    """Option A of Sec. 3.3: identity with stride, extra channels zero-padded (no parameters; used on CIFAR)."""

    def __init__(self, in_chs: int, out_chs: int, stride: int) -> None:
        super().__init__()
        self.stride, self.pad = stride, out_chs - in_chs

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]  # (B, C, H/s, W/s)
        return F.pad(x, (0, 0, 0, 0, 0, self.pad))  # zero channels appended: (B, C + pad, H/s, W/s)


def _shortcut(in_chs: int, out_chs: int, stride: int, zero_pad: bool = False) -> nn.Module | None:
    """Identity when the shape is kept; else a projection (option B, Sec. 3.3) or zero padding (option A)."""
    if stride == 1 and in_chs == out_chs:
        return None
    if zero_pad:
        return PadShortcut(in_chs, out_chs, stride)
    return nn.Sequential(nn.Conv2d(in_chs, out_chs, 1, stride, bias=False), nn.BatchNorm2d(out_chs))


@dataclass
class ResNetConfig:
    """ResNet hyper-parameters. ``layers`` are the blocks per stage conv2_x .. conv5_x of Table 1."""

    block: type[BasicBlock] | type[Bottleneck] = BasicBlock
    layers: tuple[int, ...] = (2, 2, 2, 2)  # 4 stages (ImageNet, Table 1) or 3 (CIFAR, Sec. 4.2)
    num_classes: int = 1000
    in_chans: int = 3
    width: int = 64  # channels of the stem and of conv2_x (before expansion)
    se_ratio: float | None = None  # 1/r of SENet; None = plain ResNet
    small_input: bool = False
    stem_stride: int = 1  # stride of the small-input 3x3 stem (1: CIFAR-style; 2: stage 1 at half resolution)
    drop_rate: float = 0.0  # dropout before the classifier
    drop_path_rate: float = 0.0
    zero_init_residual: bool = False
    zero_pad_shortcut: bool = False  # option A shortcuts (Sec. 3.3), as the paper's CIFAR networks
    # one flag per stage after the first: dilate instead of striding (dense prediction; None = all False)
    replace_stride_with_dilation: tuple[bool, ...] | None = None


class ResNet(ImageClassifier):
    """ResNet (Table 1 of the paper); SE-ResNet when ``cfg.se_ratio`` is set."""
    head_names, first_conv_name = ("fc",), "conv1"  # what fine-tuning replaces / adapts

    def __init__(self, cfg: ResNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.in_chans, self.num_classes, self.small_input = cfg.in_chans, cfg.num_classes, cfg.small_input
        w = cfg.width
        if cfg.stem_stride not in (1, 2):
            raise ValueError(f"stem_stride must be 1 or 2, got {cfg.stem_stride}")
        if cfg.stem_stride != 1 and not cfg.small_input:
            raise ValueError("stem_stride applies to the small-input stem; set small_input=True")
        if cfg.small_input:  # CIFAR-style stem (Sec. 4.2): one 3x3 conv, no pooling, full (or half) resolution
            self.conv1 = nn.Conv2d(cfg.in_chans, w, 3, cfg.stem_stride, 1, bias=False)
            self.maxpool = nn.Identity()
            self.min_input_size = (cfg.stem_stride * 2 ** (len(cfg.layers) - 1),) * 2
        else:  # conv1: 7x7, 64, stride 2; 3x3 max pool, stride 2 (Table 1)
            self.conv1 = nn.Conv2d(cfg.in_chans, w, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            self.min_input_size = (32, 32)
        self.bn1 = nn.BatchNorm2d(w)
        self.relu = nn.ReLU(inplace=True)

        dilate = (False, *_dilation_flags(cfg.replace_stride_with_dilation, len(cfg.layers)))
        dpr = iter(drop_path_rates(cfg.drop_path_rate, sum(cfg.layers)))
        in_chs, dilation = w, 1
        stages = []
        for i, n in enumerate(cfg.layers):  # conv2_x .. conv5_x (Table 1), or the 3 CIFAR stages (Sec. 4.2)
            planes, stride = w * 2**i, 1 if i == 0 else 2
            first_dilation = dilation
            if dilate[i]:  # keep the resolution; the 3x3s look as far as they would have on the strided grid
                dilation, stride = dilation * stride, 1
            blocks = []
            for j in range(n):
                blocks.append(cfg.block(in_chs, planes, stride if j == 0 else 1, cfg.se_ratio, next(dpr),
                                        cfg.zero_pad_shortcut, dilation, first_dilation if j == 0 else dilation))
                in_chs = planes * cfg.block.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            stages.append(f"layer{i + 1}")
        self.stage_names = stages
        self.num_features = in_chs
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(cfg.drop_rate)
        self.fc = nn.Linear(in_chs, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        # He (Kaiming) normal init for convs, fan-out, as in the paper's reference [13] and torchvision.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.cfg.zero_init_residual:  # each block starts as the identity (arXiv:1706.02677, Sec. 5.1)
            for m in self.modules():
                if isinstance(m, BasicBlock | Bottleneck):
                    nn.init.zeros_(m.last_bn().weight)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return x  # (B, C, H/32, W/32) on ImageNet ResNets (H/8 with layer3-4 dilated), (B, 64, H/4, W/4) on CIFAR

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.global_pool(x).flatten(1)  # (B, C)
        return x if pre_logits else self.fc(self.drop(x))

    def feature_levels(self) -> list[FeatureLevel]:
        """Stem (after its ReLU), then each stage, the first with the max pool before it (features_only)."""
        w, e = self.cfg.width, self.cfg.block.expansion
        chain = [("conv1", 2, w), ("bn1", 1, w), ("relu", 1, w), ("maxpool", 2, w)]
        chain += [(name, 1 if i == 0 else 2, w * 2**i * e) for i, name in enumerate(self.stage_names)]
        return chain_levels(self, chain)


def _dilation_flags(flags: tuple[bool, ...] | None, n_stages: int) -> tuple[bool, ...]:
    """Check ``replace_stride_with_dilation``: one bool per stage after the first (layer2..4 of Table 1)."""
    if flags is None:
        return (False,) * (n_stages - 1)
    flags = tuple(flags)
    if len(flags) != n_stages - 1 or not all(isinstance(f, bool) for f in flags):
        raise ValueError(f"replace_stride_with_dilation needs {n_stages - 1} bools (one per stage after the "
                         f"first), got {flags!r}")
    return flags


def _resnet(block: type[BasicBlock] | type[Bottleneck], layers: tuple[int, ...], **kw) -> ResNet:
    return ResNet(ResNetConfig(block=block, layers=layers, **kw))


def _cifar_resnet(n: int, **kw) -> ResNet:
    """6n+2 layers: 3 stages of n basic blocks, 16/32/64 filters, option-A shortcuts (Sec. 4.2)."""
    kw.setdefault("width", 16)
    kw.pop("small_input", None)  # always small-input: the network is designed for 32x32 images
    return _resnet(BasicBlock, (n, n, n), zero_pad_shortcut=True, small_input=True, **kw)


# torchvision and timm name ResNet parameters exactly as we do (conv1/bn1/layerN.i/fc; timm's SE blocks are
# `se.fc1`/`se.fc2`), so both converters are the identity, except that BN counters missing from old
# checkpoints are added; strict loading still checks every key and shape.
def _identity(sd: dict, model: nn.Module) -> dict:
    return fill_bn_counters(sd, model)


for _family in ("resnet", "seresnet"):
    register_converter(_family, "torchvision")(_identity)
    register_converter(_family, "timm")(_identity)


# ----------------------------------------------------------------------------------------- registered models
# Reference counts: torchvision / timm at 224x224, 1000 classes.
@register_model(family="resnet", paper=RESNET_PAPER, ref_params=11_689_512, ref_source="torchvision")
def resnet18(**kw) -> ResNet:
    return _resnet(BasicBlock, (2, 2, 2, 2), **kw)


@register_model(family="resnet", paper=RESNET_PAPER, ref_params=21_797_672, ref_source="torchvision")
def resnet34(**kw) -> ResNet:
    return _resnet(BasicBlock, (3, 4, 6, 3), **kw)


@register_model(family="resnet", paper=RESNET_PAPER, ref_params=25_557_032, ref_source="torchvision")
def resnet50(**kw) -> ResNet:
    return _resnet(Bottleneck, (3, 4, 6, 3), **kw)


@register_model(family="resnet", paper=RESNET_PAPER, ref_params=44_549_160, ref_source="torchvision")
def resnet101(**kw) -> ResNet:
    return _resnet(Bottleneck, (3, 4, 23, 3), **kw)


@register_model(family="resnet", paper=RESNET_PAPER, ref_params=60_192_808, ref_source="torchvision")
def resnet152(**kw) -> ResNet:
    return _resnet(Bottleneck, (3, 8, 36, 3), **kw)


@register_model(family="seresnet", paper=SENET_PAPER, ref_params=28_088_024, ref_source="timm")
def seresnet50(**kw) -> ResNet:
    return _resnet(Bottleneck, (3, 4, 6, 3), se_ratio=1 / 16, **kw)


@register_model(family="seresnet", paper=SENET_PAPER, ref_params=49_326_872, ref_source="timm")
def seresnet101(**kw) -> ResNet:
    return _resnet(Bottleneck, (3, 4, 23, 3), se_ratio=1 / 16, **kw)


# CIFAR-10 networks of Sec. 4.2 / Table 6 (0.27M, 0.46M, 0.66M, 0.85M, 1.7M parameters at 10 classes).
@register_model(family="resnet", paper=RESNET_PAPER, input_size=32, tags=("small",))
def resnet20(**kw) -> ResNet:
    return _cifar_resnet(3, **kw)


@register_model(family="resnet", paper=RESNET_PAPER, input_size=32, tags=("small",))
def resnet32(**kw) -> ResNet:
    return _cifar_resnet(5, **kw)


@register_model(family="resnet", paper=RESNET_PAPER, input_size=32, tags=("small",))
def resnet44(**kw) -> ResNet:
    return _cifar_resnet(7, **kw)


@register_model(family="resnet", paper=RESNET_PAPER, input_size=32, tags=("small",))
def resnet56(**kw) -> ResNet:
    return _cifar_resnet(9, **kw)


@register_model(family="resnet", paper=RESNET_PAPER, input_size=32, tags=("small",))
def resnet110(**kw) -> ResNet:
    return _cifar_resnet(18, **kw)
