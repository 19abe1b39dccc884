"""Stochastic depth (Huang et al., "Deep Networks with Stochastic Depth", arXiv:1603.09382).

During training each sample's residual branch is dropped with probability ``p`` and the kept ones are
scaled by 1 / (1 - p), so the expected output is unchanged and evaluation needs no rescaling.
"""

from __future__ import annotations

import torch.nn as nn
from torch import Tensor


def drop_path(x: Tensor, p: float = 0.0, training: bool = False) -> Tensor:
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    # one Bernoulli draw per sample, broadcast over every other dim: (B, 1, 1, ...)
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    return x * mask / keep


class DropPath(nn.Module):
    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return drop_path(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def drop_path_rates(total: float, n: int) -> list[float]:
    """Linearly increasing per-block rates 0 .. ``total`` (the linear decay rule of the paper, Sec. 3)."""
    # plain Python, so models can be built on the meta device
    return [total * i / (n - 1) for i in range(n)] if n > 1 else [total] * n
