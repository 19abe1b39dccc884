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


def drop_path_rates(total: float, n: int, *, endpoint: bool = True) -> list[float]:
    """Per-block rates that grow linearly with depth (the paper's "linear decay rule", Sec. 3), from 0.

    As ``numpy.linspace(0, total, n, endpoint=endpoint)``:
    * ``endpoint=True``: 0 .. ``total``, block i of n gets total·i/(n-1) (timm's ResNet, ViT and Swin);
    * ``endpoint=False``: total·i/n, so the last block stays below ``total`` (the TF EfficientNet / MnasNet
      reference rule, kept by torchvision and timm for the mobile families).
    """
    # plain Python, so models can be built on the meta device
    if not endpoint:
        return [total * i / n for i in range(n)]
    return [total * i / (n - 1) for i in range(n)] if n > 1 else [total] * n
