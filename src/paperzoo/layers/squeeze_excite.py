"""Squeeze-and-Excitation (Hu et al., "Squeeze-and-Excitation Networks", arXiv:1709.01507, Sec. 3, Fig. 2).

squeeze: z = global average pool of U                       (Eq. 2)
excite:  s = gate(W2 · act(W1 · z)),  W1: C -> C/r, W2: C/r -> C   (Eq. 3)
scale:   x̃_c = s_c · u_c                                   (Eq. 4)

The two FC layers are 1x1 convolutions with bias (same parameters as Linear, no reshape). MobileNetV3
uses h-sigmoid as the gate and EfficientNet uses SiLU inside, so both are parameters.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn
from torch import Tensor


class SqueezeExcite(nn.Module):
    """SE block. ``rd_channels`` (the reduced width C/r) wins over ``rd_ratio`` when both are given."""

    def __init__(
        self,
        channels: int,
        rd_ratio: float = 1 / 16,
        rd_channels: int | None = None,
        act: Callable[..., nn.Module] = nn.ReLU,
        gate: Callable[..., nn.Module] = nn.Sigmoid,
    ) -> None:
        super().__init__()
        rd = rd_channels if rd_channels is not None else max(1, round(channels * rd_ratio))
        self.fc1 = nn.Conv2d(channels, rd, 1, bias=True)
        self.act = act(inplace=True) if act in (nn.ReLU, nn.SiLU) else act()
        self.fc2 = nn.Conv2d(rd, channels, 1, bias=True)
        self.gate = gate()

    def forward(self, x: Tensor) -> Tensor:
        s = x.mean((2, 3), keepdim=True)  # squeeze: (B, C, 1, 1)
        s = self.gate(self.fc2(self.act(self.fc1(s))))  # excite: (B, C, 1, 1), values in (0, 1)
        return x * s  # scale each channel
