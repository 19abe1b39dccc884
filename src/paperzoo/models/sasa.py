"""SASA-ResNet: ResNet with every 3x3 spatial convolution replaced by local self-attention.

Ramachandran et al., "Stand-Alone Self-Attention in Vision Models", arXiv:1906.05909 (NeurIPS 2019).

Key idea: a k x k local self-attention layer with relative position embeddings (Eq. 3, see
:mod:`paperzoo.layers.local_attention`) can stand in for a spatial convolution. Sec. 3.1 swaps the 3x3 conv of
every ResNet bottleneck for attention with spatial extent k = 7 and N = 8 heads; where the block downsamples,
2x2 average pooling with stride 2 follows the attention. ResNet-26/38/50 use (1, 2, 4, 1), (2, 3, 5, 2) and
(3, 4, 6, 3) bottleneck blocks per stage (Sec. 4.1).

This is the paper's "conv-stem + attention" variant of Table 1: the stem stays the ResNet 7x7/2 conv and 3x3/2
max-pool. (The fully attentional variant's stem, Sec. 3.2, with spatially-varying value embeddings, is not
implemented.)

Deviations from the paper:
* Shortcut projections, stage widths and the "v1.5" downsampling position follow :mod:`.resnet` (the
  downsampling here is the average pool after the attention, which the paper prescribes).
* ``small_input=True`` uses a 3x3/1 conv stem without max-pool, as the CIFAR-style ResNets, for 28x28/32x32.
* Borders, projection shape and per-head embeddings: see the deviations of
  :class:`~paperzoo.layers.local_attention.LocalSelfAttention2d`.
* Optional stochastic depth and zero-initialised last BN per block, as in :mod:`.resnet`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn
from torch import Tensor

from ..layers import DropPath, drop_path_rates
from ..layers.local_attention import LocalSelfAttention2d
from ..registry import Paper, register_model
from ._base import ImageClassifier
from .features import FeatureLevel, chain_levels

SASA_PAPER = Paper("Stand-Alone Self-Attention in Vision Models", "1906.05909", 2019)


class AttentionBottleneck(nn.Module):
    """1x1 reduce -> k x k local self-attention (+ 2x2 avg pool if strided) -> 1x1 expand (x4) (Sec. 3.1)."""

    expansion = 4

    def __init__(self, in_chs: int, planes: int, stride: int = 1, kernel_size: int = 7, heads: int = 8,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        out_chs = planes * self.expansion
        self.conv1 = nn.Conv2d(in_chs, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.attn = LocalSelfAttention2d(planes, planes, kernel_size, heads, stride)  # replaces the 3x3 conv
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_chs, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_chs)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_chs != out_chs:  # projection shortcut, option B of ResNet Sec. 3.3
            self.downsample = nn.Sequential(nn.Conv2d(in_chs, out_chs, 1, stride, bias=False),
                                            nn.BatchNorm2d(out_chs))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.attn(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(self.drop_path(out) + shortcut)


@dataclass
class SASAResNetConfig:
    """``layers`` are the bottleneck blocks per stage (Sec. 4.1); k and N as in the paper's experiments."""

    layers: tuple[int, int, int, int] = (1, 2, 4, 1)
    kernel_size: int = 7  # spatial extent k
    heads: int = 8  # attention heads N
    num_classes: int = 1000
    in_chans: int = 3
    width: int = 64  # stem channels and planes of the first stage
    small_input: bool = False
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    zero_init_residual: bool = False


class SASAResNet(ImageClassifier):
    """Conv stem + attention bottleneck stages (Table 1, "Conv-stem + Attention")."""
    head_names, first_conv_name = ("fc",), "conv1"  # what fine-tuning replaces / adapts

    def __init__(self, cfg: SASAResNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.in_chans, self.num_classes, self.small_input = cfg.in_chans, cfg.num_classes, cfg.small_input
        w = cfg.width
        if cfg.small_input:
            self.conv1 = nn.Conv2d(cfg.in_chans, w, 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
            self.min_input_size = (8, 8)  # total stride 8, as the small-input ResNets
        else:  # the ResNet stem: 7x7/2 conv, 3x3/2 max pool
            self.conv1 = nn.Conv2d(cfg.in_chans, w, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            self.min_input_size = (32, 32)  # total stride 32, as ResNet
        self.bn1 = nn.BatchNorm2d(w)
        self.relu = nn.ReLU(inplace=True)

        dpr = iter(drop_path_rates(cfg.drop_path_rate, sum(cfg.layers)))
        in_chs = w
        for i, n in enumerate(cfg.layers):
            planes, stride = w * 2**i, 1 if i == 0 else 2
            blocks = []
            for j in range(n):
                blocks.append(AttentionBottleneck(in_chs, planes, stride if j == 0 else 1, cfg.kernel_size,
                                                  cfg.heads, next(dpr)))
                in_chs = planes * AttentionBottleneck.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.num_features = in_chs
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(cfg.drop_rate)
        self.fc = nn.Linear(in_chs, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        # Convs as ResNet (He normal, fan-out); the attention projections keep their own fan-in init.
        for name, m in self.named_modules():
            if isinstance(m, nn.Conv2d) and ".attn." not in f".{name}.":
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.cfg.zero_init_residual:  # each block starts as the identity (arXiv:1706.02677, Sec. 5.1)
            for m in self.modules():
                if isinstance(m, AttentionBottleneck):
                    nn.init.zeros_(m.bn3.weight)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)  # (B, C, H/32, W/32)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.global_pool(x).flatten(1)  # (B, C)
        return x if pre_logits else self.fc(self.drop(x))

    def feature_levels(self) -> list[FeatureLevel]:
        """As ResNet's: stem (after its ReLU), then layer1 (after the max pool) .. layer4 (features_only)."""
        w, e = self.cfg.width, AttentionBottleneck.expansion
        chain = [("conv1", 2, w), ("bn1", 1, w), ("relu", 1, w), ("maxpool", 2, w)]
        chain += [(f"layer{i + 1}", 1 if i == 0 else 2, w * 2**i * e) for i in range(len(self.cfg.layers))]
        return chain_levels(self, chain)


def _sasa(layers: tuple[int, int, int, int], /, **kw) -> SASAResNet:
    # an explicit ``layers=`` override wins (tiny configs for tests and experiments)
    return SASAResNet(SASAResNetConfig(**{"layers": layers, **kw}))


# No reference implementation with published weights: ref_params=None. Our counts beside the paper's Table 1
# (10.3M / 14.1M / 18.0M) are in docs/models/attention_sasa.md.
@register_model(family="sasa", paper=SASA_PAPER)
def sasa_resnet26(**kw) -> SASAResNet:
    return _sasa((1, 2, 4, 1), **kw)


@register_model(family="sasa", paper=SASA_PAPER)
def sasa_resnet38(**kw) -> SASAResNet:
    return _sasa((2, 3, 5, 2), **kw)


@register_model(family="sasa", paper=SASA_PAPER)
def sasa_resnet50(**kw) -> SASAResNet:
    return _sasa((3, 4, 6, 3), **kw)
