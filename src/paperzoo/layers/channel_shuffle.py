"""Channel shuffle (Zhang et al., "ShuffleNet", arXiv:1707.01083, Sec. 3.1, Fig. 1c).

With g groups and C = g·n channels: reshape to (g, n), transpose to (n, g), flatten, so that the next
group convolution sees channels from every group. It is a fixed permutation; ``channel_unshuffle`` is its
inverse (shuffling with n groups undoes shuffling with g).
"""

from __future__ import annotations

import torch.nn as nn
from torch import Tensor


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    b, c, h, w = x.shape
    if c % groups:
        raise ValueError(f"channel_shuffle: {c} channels are not divisible by {groups} groups")
    x = x.view(b, groups, c // groups, h, w)  # (B, g, n, H, W)
    x = x.transpose(1, 2)  # (B, n, g, H, W)
    return x.reshape(b, c, h, w)  # (B, C, H, W), channels interleaved across groups


def channel_unshuffle(x: Tensor, groups: int) -> Tensor:
    """Inverse of :func:`channel_shuffle` with the same ``groups``."""
    return channel_shuffle(x, x.shape[1] // groups)


class ChannelShuffle(nn.Module):
    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: Tensor) -> Tensor:
        return channel_shuffle(x, self.groups)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"
