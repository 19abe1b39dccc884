"""Convolution -> BatchNorm -> activation, the unit almost every CNN here is built from."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn
from torch import Tensor

ActLayer = Callable[..., nn.Module]


class ConvNormAct(nn.Module):
    """``conv`` (no bias) -> ``bn`` -> ``act``; 'same' padding for odd kernels by default.

    Args:
        act: activation class (e.g. ``nn.ReLU``, ``nn.SiLU``, ``HardSwish``) or ``None`` for a linear
            output (the linear bottleneck of MobileNetV2 is a ConvNormAct with ``act=None``).
        bn_eps: BatchNorm epsilon (torchvision's EfficientNet uses 1e-3, most others 1e-5).
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int | tuple[int, int] = 3,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | None = None,
        groups: int = 1,
        dilation: int = 1,
        act: ActLayer | None = nn.ReLU,
        bn_eps: float = 1e-5,
        bias: bool = False,
    ) -> None:
        super().__init__()
        if padding is None:
            k = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
            padding = ((k[0] - 1) // 2 * dilation, (k[1] - 1) // 2 * dilation)
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, padding, dilation, groups, bias=bias)
        self.bn = nn.BatchNorm2d(out_chs, eps=bn_eps)
        self.act = act(inplace=True) if act in (nn.ReLU, nn.ReLU6, nn.SiLU) else (act() if act else nn.Identity())

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))
