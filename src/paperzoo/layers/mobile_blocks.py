"""The two building blocks of the mobile CNNs.

* Depthwise-separable convolution (Howard et al., "MobileNets", arXiv:1704.04861, Sec. 3.1): a k x k
  depthwise conv (one filter per channel) followed by a 1x1 pointwise conv. Against a standard k x k conv
  from M to N channels it costs  (k²·M + M·N) / (k²·M·N) = 1/N + 1/k²  of the multiply-adds (Eq. 5) and the
  same ratio of weights.
* Inverted residual with linear bottleneck (Sandler et al., "MobileNetV2", arXiv:1801.04381, Sec. 3.3,
  Table 1): 1x1 expand (t·C) -> k x k depthwise -> [SE] -> 1x1 project with *no* activation, plus the
  identity shortcut when stride is 1 and widths match. MobileNetV3 and EfficientNet's MBConv are the same
  block with other activations, an SE module and stochastic depth.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn
from torch import Tensor

from .conv_norm_act import ActLayer, ConvNormAct
from .drop_path import DropPath

SELayer = Callable[[int], nn.Module]


def separable_conv_cost(m: int, n: int, k: int, h: int, w: int) -> dict[str, int]:
    """Weights and multiply-adds of a standard vs a depthwise-separable k x k conv (MobileNets, Eqs. 1-5)."""
    return {
        "standard_params": k * k * m * n,
        "separable_params": k * k * m + m * n,
        "standard_madds": k * k * m * n * h * w,
        "separable_madds": k * k * m * h * w + m * n * h * w,
    }


class DepthwiseSeparableConv(nn.Module):
    """k x k depthwise ConvNormAct -> [SE] -> 1x1 pointwise ConvNormAct, with an optional residual.

    ``pw_act=None`` gives the linear projection used by EfficientNet's first (expand ratio 1) block;
    ``residual`` adds the shortcut there when shapes allow.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 3,
        stride: int = 1,
        act: ActLayer | None = nn.ReLU,
        pw_act: ActLayer | None = nn.ReLU,
        se_layer: SELayer | None = None,
        bn_eps: float = 1e-5,
        residual: bool = False,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.dw = ConvNormAct(in_chs, in_chs, kernel_size, stride, groups=in_chs, act=act, bn_eps=bn_eps)
        self.se = se_layer(in_chs) if se_layer else nn.Identity()
        self.pw = ConvNormAct(in_chs, out_chs, 1, act=pw_act, bn_eps=bn_eps)
        self.has_residual = residual and stride == 1 and in_chs == out_chs
        self.drop_path = DropPath(drop_path) if self.has_residual and drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.pw(self.se(self.dw(x)))
        return x + self.drop_path(out) if self.has_residual else out


class InvertedResidual(nn.Module):
    """MobileNetV2 inverted residual / EfficientNet MBConv (see module docstring).

    Args:
        expand_ratio: t of MobileNetV2 Table 1; the hidden width is ``make_divisible``-free ``in_chs * t``
            unless ``mid_chs`` is given (MobileNetV3 lists expansion widths explicitly).
        se_layer: called with the hidden width; ``None`` for no SE.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 3,
        stride: int = 1,
        expand_ratio: float = 6.0,
        mid_chs: int | None = None,
        act: ActLayer = nn.ReLU6,
        se_layer: SELayer | None = None,
        bn_eps: float = 1e-5,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        mid = mid_chs if mid_chs is not None else int(round(in_chs * expand_ratio))
        self.expand = ConvNormAct(in_chs, mid, 1, act=act, bn_eps=bn_eps) if mid != in_chs else nn.Identity()
        self.dw = ConvNormAct(mid, mid, kernel_size, stride, groups=mid, act=act, bn_eps=bn_eps)
        self.se = se_layer(mid) if se_layer else nn.Identity()
        self.project = ConvNormAct(mid, out_chs, 1, act=None, bn_eps=bn_eps)  # linear bottleneck
        self.has_residual = stride == 1 and in_chs == out_chs
        self.drop_path = DropPath(drop_path) if self.has_residual and drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.project(self.se(self.dw(self.expand(x))))
        return x + self.drop_path(out) if self.has_residual else out
