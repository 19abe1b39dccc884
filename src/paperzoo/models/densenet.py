"""DenseNet-BC: DenseNet-121, -169 and -201.

Huang et al., "Densely Connected Convolutional Networks", arXiv:1608.06993 (CVPR 2017).

Key idea: inside a dense block, layer l receives the concatenation of the feature maps of *all* preceding
layers, x_l = H_l([x_0, x_1, ..., x_{l-1}]) (Eq. 2), and adds only k new channels (the growth rate). Features
are reused instead of re-learned, so the network is narrow (k = 32) yet deep. H_l is the bottleneck
BN-ReLU-Conv(1x1, 4k)-BN-ReLU-Conv(3x3, k) ("DenseNet-B", Sec. 3); between blocks a transition layer
BN-ReLU-Conv(1x1)-AvgPool(2x2) halves the resolution and compresses the channels by theta = 0.5
("DenseNet-C"). Table 1 gives the ImageNet layouts.

Deviations from the paper:
* The ImageNet stem is followed by BN-ReLU before the max-pool and a final BN-ReLU closes the last block
  (pre-activation layers need it); the paper's text leaves both implicit, the reference Torch code and
  torchvision/timm have them, and their weights load here.
* ``small_input=True`` replaces the 7x7/2 conv + 3x3/2 max-pool stem by one 3x3/1 conv (the paper's CIFAR
  stem, Sec. 3 "Implementation Details", keeping the 2k channels of DenseNet-BC), so 28x28 and 32x32 images
  keep their resolution into the first block.
* ``memory_efficient=True`` recomputes each layer's concatenation + BN + ReLU + 1x1 conv in the backward pass
  (activation checkpointing, Pleiss et al., "Memory-Efficient Implementation of DenseNets",
  arXiv:1707.06990) instead of storing the O(L^2) concatenations of a block; outputs and gradients are
  unchanged.
* ``conv_drop_rate`` is the paper's dropout after every convolution except the first (Sec. 4.2, used there
  only for CIFAR/SVHN without augmentation); ``drop_rate`` is the usual dropout before the classifier.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from torch import Tensor

from ..registry import Paper, register_model
from ..weights import fill_bn_counters, register_converter
from ._base import ImageClassifier
from .features import FeatureLevel, chain_levels

DENSENET_PAPER = Paper("Densely Connected Convolutional Networks", "1608.06993", 2017)


class DenseLayer(nn.Module):
    """H_l of DenseNet-B: BN-ReLU-Conv(1x1, bn_size*k)-BN-ReLU-Conv(3x3, k) on the concatenated inputs."""

    def __init__(self, in_chs: int, k: int, bn_size: int = 4, drop_rate: float = 0.0,
                 memory_efficient: bool = False) -> None:
        super().__init__()
        mid = bn_size * k  # "each 1x1 convolution produce 4k feature-maps" (Sec. 3, Bottleneck layers)
        self.bn1 = nn.BatchNorm2d(in_chs)
        self.conv1 = nn.Conv2d(in_chs, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, k, 3, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.memory_efficient = memory_efficient

    def bottleneck(self, *features: Tensor, recompute: bool = False) -> Tensor:
        x = torch.cat(features, 1)  # [x_0, x_1, ..., x_{l-1}] (Eq. 2): (B, C_0 + (l-1)k, H, W)
        if recompute:  # same batch statistics; momentum 0 leaves the running averages (updated once) alone
            bn = self.bn1
            x = F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, True, 0.0, bn.eps)
        else:
            x = self.bn1(x)
        x = self.conv1(F.relu(x))
        return F.dropout(x, self.drop_rate, self.training) if self.drop_rate > 0 else x

    def forward(self, features: list[Tensor]) -> Tensor:
        if self.memory_efficient and self.training and any(f.requires_grad for f in features):
            # Do not keep the concatenation and its BN output for backward; recompute them there. The
            # checkpoint replays the RNG, so dropout masks match; the replay must not update BN statistics.
            calls = []

            def run(*feats: Tensor) -> Tensor:
                calls.append(None)
                return self.bottleneck(*feats, recompute=len(calls) > 1)

            x = cp.checkpoint(run, *features, use_reentrant=False)
        else:
            x = self.bottleneck(*features)
        x = self.conv2(F.relu(self.bn2(x)))  # the k new feature maps: (B, k, H, W)
        return F.dropout(x, self.drop_rate, self.training) if self.drop_rate > 0 else x


class DenseBlock(nn.Module):
    """``num_layers`` dense layers; the output holds the block input plus k channels per layer."""

    def __init__(self, num_layers: int, in_chs: int, k: int, bn_size: int = 4, drop_rate: float = 0.0,
                 memory_efficient: bool = False) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            DenseLayer(in_chs + i * k, k, bn_size, drop_rate, memory_efficient) for i in range(num_layers)
        )
        self.out_chs = in_chs + num_layers * k

    def forward(self, x: Tensor) -> Tensor:
        # Keep the list of maps and concatenate lazily inside each layer: no growing buffer is copied
        # from layer to layer, and checkpointed layers can drop their concatenation.
        features = [x]
        for layer in self.layers:
            features.append(layer(features))
        return torch.cat(features, 1)  # (B, C_0 + L*k, H, W)


class Transition(nn.Sequential):
    """BN-ReLU-Conv(1x1, theta*m)-AvgPool(2x2, stride 2) between dense blocks (Sec. 3, Transition layers)."""

    def __init__(self, in_chs: int, out_chs: int, drop_rate: float = 0.0) -> None:
        super().__init__(OrderedDict([
            ("bn", nn.BatchNorm2d(in_chs)),
            ("relu", nn.ReLU(inplace=True)),
            ("conv", nn.Conv2d(in_chs, out_chs, 1, bias=False)),
            ("drop", nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()),
            ("pool", nn.AvgPool2d(2, 2)),
        ]))


@dataclass
class DenseNetConfig:
    """DenseNet-BC hyper-parameters in the paper's symbols (Table 1, Sec. 3)."""

    block_layers: tuple[int, ...] = (6, 12, 24, 16)  # dense layers in Dense Block (1)..(4), Table 1
    k: int = 32  # growth rate
    bn_size: int = 4  # bottleneck width = bn_size * k
    theta: float = 0.5  # compression of the transition layers
    stem_chs: int = 64  # 2k output channels of the first convolution (DenseNet-BC)
    num_classes: int = 1000
    in_chans: int = 3
    small_input: bool = False
    conv_drop_rate: float = 0.0
    drop_rate: float = 0.0
    memory_efficient: bool = False


class DenseNet(ImageClassifier):
    """DenseNet-BC for ImageNet (Table 1); CIFAR-style stem with ``small_input``."""
    head_names, first_conv_name = ("fc",), "stem.conv"  # what fine-tuning replaces / adapts

    def __init__(self, cfg: DenseNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.in_chans, self.num_classes, self.small_input = cfg.in_chans, cfg.num_classes, cfg.small_input
        c = cfg.stem_chs
        if cfg.small_input:  # one 3x3 conv, stride 1 (the paper's CIFAR stem)
            self.stem = nn.Sequential(OrderedDict([
                ("conv", nn.Conv2d(cfg.in_chans, c, 3, 1, 1, bias=False)),
                ("bn", nn.BatchNorm2d(c)),
                ("relu", nn.ReLU(inplace=True)),
            ]))
        else:  # Convolution 7x7 conv, stride 2; Pooling 3x3 max pool, stride 2 (Table 1)
            self.stem = nn.Sequential(OrderedDict([
                ("conv", nn.Conv2d(cfg.in_chans, c, 7, 2, 3, bias=False)),
                ("bn", nn.BatchNorm2d(c)),
                ("relu", nn.ReLU(inplace=True)),
                ("pool", nn.MaxPool2d(3, 2, 1)),
            ]))
        n_blocks = len(cfg.block_layers)
        # Each transition floors H/2 (2x2 average pool), so the last block needs >= 1 pixel:
        # small stem: H >= 2^(n-1); ImageNet stem: 7x7/2 conv and 3x3/2 pool (both ceil) before that.
        deepest = 2 ** (n_blocks - 1)
        self.min_input_size = (deepest, deepest) if cfg.small_input else ((4 * deepest - 3,) * 2)

        chs = c
        for i, num_layers in enumerate(cfg.block_layers):  # Dense Block (1) .. (4)
            block = DenseBlock(num_layers, chs, cfg.k, cfg.bn_size, cfg.conv_drop_rate, cfg.memory_efficient)
            self.add_module(f"block{i + 1}", block)
            chs = block.out_chs
            if i < n_blocks - 1:  # Transition Layer (1) .. (3)
                out = int(cfg.theta * chs)  # floor(theta * m) output channels
                self.add_module(f"transition{i + 1}", Transition(chs, out, cfg.conv_drop_rate))
                chs = out
        self.bn_final = nn.BatchNorm2d(chs)
        self.num_features = chs
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(cfg.drop_rate)
        self.fc = nn.Linear(chs, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        # He init for convs (the paper follows He et al. [10] via fb.resnet.torch), BN to identity,
        # zero classifier bias, as the reference Torch code and torchvision do.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def stages(self) -> list[nn.Module]:
        """Dense blocks and transitions in order: block1, transition1, ..., blockN."""
        n = len(self.cfg.block_layers)
        out: list[nn.Module] = []
        for i in range(1, n + 1):
            out.append(getattr(self, f"block{i}"))
            if i < n:
                out.append(getattr(self, f"transition{i}"))
        return out

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for stage in self.stages():
            x = stage(x)
        return F.relu(self.bn_final(x))  # (B, C, H/32, W/32)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.global_pool(x).flatten(1)  # (B, C)
        return x if pre_logits else self.fc(self.drop(x))

    def feature_levels(self) -> list[FeatureLevel]:
        """Stem conv (after its ReLU), then each dense block with the pooling before it (the stem's max pool,
        a transition); the last ends with the final BN + ReLU, as forward_features (features_only)."""
        c = self.stem.conv.out_channels
        chain = [(f"stem.{n}", 2 if n in ("conv", "pool") else 1, c) for n in self.stem._modules]
        for i in range(1, len(self.cfg.block_layers) + 1):
            if i > 1:
                chain.append((f"transition{i - 1}", 2, getattr(self, f"transition{i - 1}").conv.out_channels))
            chain.append((f"block{i}", 1, getattr(self, f"block{i}").out_chs))
        chain += [("bn_final", 1, self.num_features), (F.relu, 1, self.num_features)]
        return chain_levels(self, chain)


# ------------------------------------------------------------------------------------------ weight loading
# torchvision and timm share one layout (timm's DenseNet started as a copy of torchvision's):
#   features.conv0 / norm0                          -> stem.conv / stem.bn
#   features.denseblock{b}.denselayer{l}.norm1 ...  -> block{b}.layers.{l-1}.bn1 / conv1 / bn2 / conv2
#   features.transition{t}.norm / conv              -> transition{t}.bn / conv
#   features.norm5                                  -> bn_final
#   classifier                                      -> fc
# torchvision's original checkpoints (2017) name the dense-layer modules "norm.1", "conv.1", ...; those are
# renamed first, exactly as torchvision's own loader does. Old checkpoints also lack BN's num_batches_tracked.
_LEGACY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.([12])\.(weight|bias|running_mean|running_var)$")
_RULES = [
    (re.compile(r"^features\.conv0\."), "stem.conv."),
    (re.compile(r"^features\.norm0\."), "stem.bn."),
    (re.compile(r"^features\.denseblock(\d+)\.denselayer(\d+)\.norm([12])\."),
     lambda m: f"block{m[1]}.layers.{int(m[2]) - 1}.bn{m[3]}."),
    (re.compile(r"^features\.denseblock(\d+)\.denselayer(\d+)\.conv([12])\."),
     lambda m: f"block{m[1]}.layers.{int(m[2]) - 1}.conv{m[3]}."),
    (re.compile(r"^features\.transition(\d+)\.norm\."), r"transition\1.bn."),
    (re.compile(r"^features\.transition(\d+)\.conv\."), r"transition\1.conv."),
    (re.compile(r"^features\.norm5\."), "bn_final."),
    (re.compile(r"^classifier\."), "fc."),
]


def _rename(key: str) -> str:
    key = _LEGACY.sub(r"\1\2.\3", key)  # "norm.1.weight" -> "norm1.weight"
    for pattern, repl in _RULES:
        new, n = pattern.subn(repl, key, count=1)
        if n:
            return new
    return key  # left as is: strict loading reports it as unexpected


@register_converter("densenet", "torchvision")
@register_converter("densenet", "timm")
def convert_torchvision(sd: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    return fill_bn_counters({_rename(k): v for k, v in sd.items()}, model)


# ----------------------------------------------------------------------------------------- registered models
def _densenet(layers: tuple[int, ...], /, **kw) -> DenseNet:
    # an explicit ``block_layers=`` override wins (tiny configs for tests and experiments)
    return DenseNet(DenseNetConfig(**{"block_layers": layers, **kw}))


# Reference counts: torchvision at 224x224, 1000 classes.
@register_model(family="densenet", paper=DENSENET_PAPER, ref_params=7_978_856, ref_source="torchvision")
def densenet121(**kw) -> DenseNet:
    return _densenet((6, 12, 24, 16), **kw)


@register_model(family="densenet", paper=DENSENET_PAPER, ref_params=14_149_480, ref_source="torchvision")
def densenet169(**kw) -> DenseNet:
    return _densenet((6, 12, 32, 32), **kw)


@register_model(family="densenet", paper=DENSENET_PAPER, ref_params=20_013_928, ref_source="torchvision")
def densenet201(**kw) -> DenseNet:
    return _densenet((6, 12, 48, 32), **kw)
