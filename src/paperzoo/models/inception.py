"""Inception-v3.

Szegedy et al., "Rethinking the Inception Architecture for Computer Vision", arXiv:1512.00567 (CVPR 2016).

Key idea: keep Inception's parallel multi-scale branches but make them cheaper by *factorizing*
convolutions. A 5x5 conv becomes two 3x3 convs (Sec. 3.1, Fig. 5: 28% fewer weights); an n x n conv
becomes a 1 x n followed by an n x 1 (Sec. 3.2, Fig. 6: the 7x7 of the 17x17 grid is 1x7 then 7x1); on the
coarsest 8x8 grid the 1x3 and 3x1 run *in parallel* to widen the representation (Fig. 7). The grid is
shrunk by running a stride-2 conv branch and a stride-2 pooling branch side by side and concatenating
(Sec. 5, Fig. 10), which avoids both a representational bottleneck and the cost of convolving first.
An auxiliary classifier on the last 17x17 layer acts as a regularizer (Sec. 4, Fig. 8).

Deviations (all as the released TF-slim model and torchvision's ``inception_v3``, whose weights load here
with ``source="torchvision"`` or ``"timm"``; module names are TF-slim's, ``Conv2d_1a_3x3`` .. ``Mixed_7c``):
* Table 1 is not what was released: the stem ends 1x1/80 -> 3x3/192 -> max-pool 3x3/2 (not 3x3/80,
  3x3/2 192, 3x3 288); the Fig. 5 modules keep a 5x5 branch next to the double-3x3 one; "5 x Inception
  (Fig. 6)" is one grid reduction (Mixed_6a) + 4 modules, and the 8x8 stage opens with a second reduction
  (Mixed_7a) before the 2 Fig. 7 modules.
* The auxiliary head (``aux_logits=True``; off by default) is 5x5/3 avg-pool -> 1x1/128 -> 5x5/768 ->
  linear, without the batch-normalized FC of "Inception-v3 = ... + BN-auxiliary" (Sec. 7/Table 3).
  It runs only in training and is then returned as ``InceptionOutputs(logits, aux_logits)``, as torchvision.
* BatchNorm eps = 1e-3 (TF-slim). Dropout before the classifier ``drop_rate`` = 0.5 (torchvision; the
  paper names none). Init: truncated normal, std 0.1 (0.01 for the aux 5x5 conv, 0.001 for the aux FC),
  as torchvision.
* ``transform_input=True`` re-normalizes an ImageNet-mean/std input to the [-1, 1] range Google's weights
  expect, as torchvision's pretrained ``inception_v3`` does (set it when loading those weights).
* Label smoothing (Sec. 7, "model regularization via label smoothing") is a loss, not a layer: it is in the
  training toolkit (``paperzoo.train.losses.LabelSmoothingCrossEntropy``), not here.
* ``small_input=True``: the three unpadded stem convs become padded with stride 1 and both stem max-pools
  go, so a 32x32 image reaches Mixed_5b at 32x32 (as 299 reaches it at 35x35) and leaves Mixed_7c at 7x7;
  the aux head then pools adaptively to 5x5 instead of 5x5/3.
* ``min_input_size`` is exact: 75x75 (the valid convs and 3x3/2 reductions need it), 7x7 with
  ``small_input``; in training with the aux head and the default stem, 299x299 (its 5x5/3 pool and 5x5
  conv need a 17x17 Mixed_6e map).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..layers import ConvNormAct
from ..registry import Paper, register_model
from ..weights import register_converter
from ._base import ImageClassifier
from .features import FeatureLevel, chain_levels

INCEPTION_V3_PAPER = Paper("Rethinking the Inception Architecture for Computer Vision", "1512.00567", 2016)


def conv_bn(in_chs: int, out_chs: int, kernel_size: int | tuple[int, int], stride: int = 1,
            padding: int | tuple[int, int] = 0) -> ConvNormAct:
    """Conv (no bias) -> BN (eps 1e-3, TF-slim) -> ReLU. Unpadded unless told: Inception uses 'valid' convs."""
    return ConvNormAct(in_chs, out_chs, kernel_size, stride, padding, bn_eps=1e-3)


class InceptionA(nn.Module):
    """35x35 module, Fig. 5 (5x5 replaced by two 3x3); TF-slim keeps a 5x5 branch too. torchvision: InceptionA."""

    def __init__(self, in_chs: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = conv_bn(in_chs, 64, 1)
        self.branch5x5_1 = conv_bn(in_chs, 48, 1)
        self.branch5x5_2 = conv_bn(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = conv_bn(in_chs, 64, 1)
        self.branch3x3dbl_2 = conv_bn(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = conv_bn(96, 96, 3, padding=1)
        self.branch_pool = conv_bn(in_chs, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(F.avg_pool2d(x, 3, 1, 1))
        return torch.cat([b1, b5, b3, bp], dim=1)  # (B, 224 + pool_features, H, W)


class ReductionA(nn.Module):
    """35x35 -> 17x17 grid reduction, Fig. 10: stride-2 conv branches beside a stride-2 max-pool.
    torchvision: InceptionB (Mixed_6a)."""

    def __init__(self, in_chs: int) -> None:
        super().__init__()
        self.branch3x3 = conv_bn(in_chs, 384, 3, stride=2)
        self.branch3x3dbl_1 = conv_bn(in_chs, 64, 1)
        self.branch3x3dbl_2 = conv_bn(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = conv_bn(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3(x)
        b3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = F.max_pool2d(x, 3, 2)
        return torch.cat([b3, b3dbl, bp], dim=1)  # (B, 480 + C_in, (H-3)/2+1, (W-3)/2+1)


class InceptionB(nn.Module):
    """17x17 module, Fig. 6 with n = 7: each 7x7 factorized as 1x7 then 7x1 (Sec. 3.2).
    torchvision: InceptionC (Mixed_6b-e); ``c7`` is the width inside the 7x7 branches."""

    def __init__(self, in_chs: int, c7: int) -> None:
        super().__init__()
        self.branch1x1 = conv_bn(in_chs, 192, 1)
        self.branch7x7_1 = conv_bn(in_chs, c7, 1)
        self.branch7x7_2 = conv_bn(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = conv_bn(c7, 192, (7, 1), padding=(3, 0))
        # the double-7x7 branch of Fig. 6, each 7x7 as 7x1 then 1x7
        self.branch7x7dbl_1 = conv_bn(in_chs, c7, 1)
        self.branch7x7dbl_2 = conv_bn(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = conv_bn(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = conv_bn(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = conv_bn(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = conv_bn(in_chs, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        b7dbl = self.branch7x7dbl_1(x)
        for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            b7dbl = conv(b7dbl)
        bp = self.branch_pool(F.avg_pool2d(x, 3, 1, 1))
        return torch.cat([b1, b7, b7dbl, bp], dim=1)  # (B, 768, H, W)


class ReductionB(nn.Module):
    """17x17 -> 8x8 grid reduction (Fig. 10 pattern). torchvision: InceptionD (Mixed_7a)."""

    def __init__(self, in_chs: int) -> None:
        super().__init__()
        self.branch3x3_1 = conv_bn(in_chs, 192, 1)
        self.branch3x3_2 = conv_bn(192, 320, 3, stride=2)
        self.branch7x7x3_1 = conv_bn(in_chs, 192, 1)
        self.branch7x7x3_2 = conv_bn(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = conv_bn(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = conv_bn(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        bp = F.max_pool2d(x, 3, 2)
        return torch.cat([b3, b7, bp], dim=1)  # (B, 512 + C_in, (H-3)/2+1, (W-3)/2+1)


class InceptionC(nn.Module):
    """8x8 module, Fig. 7: the 1x3 and 3x1 run in parallel and are concatenated ("expanded filter bank
    outputs", for high-dimensional representations on the coarsest grid). torchvision: InceptionE."""

    def __init__(self, in_chs: int) -> None:
        super().__init__()
        self.branch1x1 = conv_bn(in_chs, 320, 1)
        self.branch3x3_1 = conv_bn(in_chs, 384, 1)
        self.branch3x3_2a = conv_bn(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = conv_bn(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = conv_bn(in_chs, 448, 1)
        self.branch3x3dbl_2 = conv_bn(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = conv_bn(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = conv_bn(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = conv_bn(in_chs, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], dim=1)
        b3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        b3dbl = torch.cat([self.branch3x3dbl_3a(b3dbl), self.branch3x3dbl_3b(b3dbl)], dim=1)
        bp = self.branch_pool(F.avg_pool2d(x, 3, 1, 1))
        return torch.cat([b1, b3, b3dbl, bp], dim=1)  # (B, 2048, H, W)


class InceptionAux(nn.Module):
    """Auxiliary classifier on the last 17x17 layer (Sec. 4, Fig. 8)."""

    def __init__(self, in_chs: int, num_classes: int, small_input: bool = False) -> None:
        super().__init__()
        # 17x17 -> 5x5; with small inputs Mixed_6e is smaller than 17x17, so pool adaptively to 5x5
        self.pool = nn.AdaptiveAvgPool2d(5) if small_input else nn.AvgPool2d(5, 3)
        self.conv0 = conv_bn(in_chs, 128, 1)
        self.conv1 = conv_bn(128, 768, 5)  # 5x5 -> 1x1
        self.fc = nn.Linear(768, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(self.conv0(self.pool(x)))  # (B, 768, 1, 1)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))  # (B, num_classes)


class InceptionOutputs(NamedTuple):
    """What ``forward`` returns in training when the auxiliary head is on (as torchvision)."""

    logits: Tensor
    aux_logits: Tensor


# Table 1 as released: the Inception modules after the stem, with TF-slim's names.
# (name, module, input channels, extra argument: pool_features for Fig. 5, c7 for Fig. 6)
MIXED_LAYERS: tuple[tuple[str, type[nn.Module], int, int | None], ...] = (
    ("Mixed_5b", InceptionA, 192, 32),  # 3 x Inception, Fig. 5 (35x35)
    ("Mixed_5c", InceptionA, 256, 64),
    ("Mixed_5d", InceptionA, 288, 64),
    ("Mixed_6a", ReductionA, 288, None),  # grid reduction 35 -> 17, Fig. 10
    ("Mixed_6b", InceptionB, 768, 128),  # 4 x Inception, Fig. 6 (17x17)
    ("Mixed_6c", InceptionB, 768, 160),
    ("Mixed_6d", InceptionB, 768, 160),
    ("Mixed_6e", InceptionB, 768, 192),
    ("Mixed_7a", ReductionB, 768, None),  # grid reduction 17 -> 8
    ("Mixed_7b", InceptionC, 1280, None),  # 2 x Inception, Fig. 7 (8x8)
    ("Mixed_7c", InceptionC, 2048, None),
)
AUX_AFTER = "Mixed_6e"  # "on top of the last 17x17 layer" (Sec. 4)


@dataclass
class InceptionV3Config:
    num_classes: int = 1000
    in_chans: int = 3
    aux_logits: bool = False
    transform_input: bool = False
    small_input: bool = False
    drop_rate: float = 0.5


class InceptionV3(ImageClassifier):
    """Inception-v3 (Table 1 of arXiv:1512.00567, as released)."""
    head_names, first_conv_name = ("fc",), "Conv2d_1a_3x3.conv"  # what fine-tuning replaces / adapts

    def __init__(self, cfg: InceptionV3Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.in_chans, self.num_classes, self.small_input = cfg.in_chans, cfg.num_classes, cfg.small_input
        if cfg.transform_input and cfg.in_chans != 3:
            raise ValueError("InceptionV3: transform_input re-normalizes RGB input and needs in_chans=3")
        s, p = (1, 1) if cfg.small_input else (2, 0)  # small inputs: pad the valid convs, no stride
        self.Conv2d_1a_3x3 = conv_bn(cfg.in_chans, 32, 3, stride=s, padding=p)  # 299 -> 149
        self.Conv2d_2a_3x3 = conv_bn(32, 32, 3, padding=p)  # -> 147
        self.Conv2d_2b_3x3 = conv_bn(32, 64, 3, padding=1)
        self.maxpool1 = nn.Identity() if cfg.small_input else nn.MaxPool2d(3, 2)  # -> 73
        self.Conv2d_3b_1x1 = conv_bn(64, 80, 1)
        self.Conv2d_4a_3x3 = conv_bn(80, 192, 3, padding=p)  # -> 71
        self.maxpool2 = nn.Identity() if cfg.small_input else nn.MaxPool2d(3, 2)  # -> 35
        for name, block, in_chs, arg in MIXED_LAYERS:
            self.add_module(name, block(in_chs) if arg is None else block(in_chs, arg))
        self.AuxLogits = InceptionAux(768, cfg.num_classes, cfg.small_input) if cfg.aux_logits else None
        if cfg.aux_logits:  # the aux classifier predicts the classes too: fine-tuning replaces it with fc
            self.head_names = ("fc", "AuxLogits.fc")
        self.num_features = 2048
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(cfg.drop_rate)
        self.fc = nn.Linear(2048, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self._min_size = (7, 7) if cfg.small_input else (75, 75)
        self._init_weights()

    @property
    def min_input_size(self) -> tuple[int, int]:  # type: ignore[override]
        if self.training and self.AuxLogits is not None and not self.small_input:
            return (299, 299)  # the aux head needs Mixed_6e at 17x17 (5x5/3 pool, then a 5x5 conv)
        return self._min_size

    def _init_weights(self) -> None:
        # torchvision: truncated normal (bounds +-2), std 0.1, or the `stddev` of the aux head's layers
        for name, m in self.named_modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                std = {"AuxLogits.conv1.conv": 0.01, "AuxLogits.fc": 0.001}.get(name, 0.1)
                nn.init.trunc_normal_(m.weight, mean=0.0, std=std, a=-2, b=2)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @staticmethod
    def _transform_input(x: Tensor) -> Tensor:
        # x_c * std_c / 0.5 + (mean_c - 0.5) / 0.5: from ImageNet normalization to Google's [-1, 1]
        mean = x.new_tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)  # (1, C, 1, 1)
        std = x.new_tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        return x * (std / 0.5) + (mean - 0.5) / 0.5

    def _forward_to_aux(self, x: Tensor) -> Tensor:
        if self.cfg.transform_input:
            x = self._transform_input(x)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # (B, 64, 147, 147)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(self.maxpool1(x)))  # (B, 192, 71, 71)
        x = self.maxpool2(x)  # (B, 192, 35, 35)
        for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", AUX_AFTER):
            x = getattr(self, name)(x)
        return x  # (B, 768, 17, 17)

    def _forward_from_aux(self, x: Tensor) -> Tensor:
        return self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))  # (B, 2048, 8, 8)

    def forward_features(self, x: Tensor) -> Tensor:
        return self._forward_from_aux(self._forward_to_aux(x))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.global_pool(x).flatten(1)  # (B, 2048)
        return x if pre_logits else self.fc(self.drop(x))

    def forward(self, x: Tensor) -> Tensor | InceptionOutputs:
        self.check_input(x)
        x = self._forward_to_aux(x)
        aux = self.AuxLogits(x) if self.AuxLogits is not None and self.training else None
        logits = self.forward_head(self._forward_from_aux(x))
        return logits if aux is None else InceptionOutputs(logits, aux)

    def feature_levels(self) -> list[FeatureLevel]:
        """The stem convs before each max pool, then the last Inception module of each grid (35, 17, 8 at
        299 px); timm's levels too (features_only)."""
        chain = [(self._transform_input, 1, 3)] if self.cfg.transform_input else []
        chain += [("Conv2d_1a_3x3", 2, 32), ("Conv2d_2a_3x3", 1, 32), ("Conv2d_2b_3x3", 1, 64),
                  ("maxpool1", 2, 64), ("Conv2d_3b_1x1", 1, 80), ("Conv2d_4a_3x3", 1, 192), ("maxpool2", 2, 192)]
        widths = [in_chs for _, _, in_chs, _ in MIXED_LAYERS[1:]] + [self.num_features]  # each module's output
        chain += [(name, 2 if block in (ReductionA, ReductionB) else 1, c)
                  for (name, block, _, _), c in zip(MIXED_LAYERS, widths)]
        return chain_levels(self, chain)


# ------------------------------------------------------------------------------------ weight conversion
# torchvision's and timm's Inception3 use the same TF-slim names as we do, and their BasicConv2d has the
# same `conv` / `bn` children as our ConvNormAct, so the keys are ours already. Their pretrained files carry
# the aux head (`AuxLogits.*`); like torchvision with aux_logits=False, we drop it when ours has none.
def _drop_aux_if_absent(sd: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    if getattr(model, "AuxLogits", None) is None:
        sd = {k: v for k, v in sd.items() if not k.startswith("AuxLogits.")}
    return sd


register_converter("inception_v3", "torchvision")(_drop_aux_if_absent)
register_converter("inception_v3", "timm")(_drop_aux_if_absent)


# ----------------------------------------------------------------------------------- registered models
# torchvision inception_v3: 23,834,568 parameters without the aux head, 27,161,264 with it.
@register_model(family="inception_v3", paper=INCEPTION_V3_PAPER, input_size=299, ref_params=23_834_568,
                ref_source="torchvision")
def inception_v3(**kw) -> InceptionV3:
    """Inception-v3 at 299x299; ``aux_logits=True`` adds the auxiliary classifier."""
    return InceptionV3(InceptionV3Config(**kw))
