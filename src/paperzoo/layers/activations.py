"""Activations of the efficient-CNN papers.

* Swish (Ramachandran et al., "Searching for Activation Functions", arXiv:1710.05941): x * sigmoid(x),
  which PyTorch ships as ``nn.SiLU``; EfficientNet uses it throughout.
* h-swish / h-sigmoid (Howard et al., "Searching for MobileNetV3", arXiv:1905.02244, Sec. 5.2):
  piecewise-linear stand-ins that avoid the sigmoid on mobile hardware,
  h-sigmoid(x) = ReLU6(x + 3) / 6 and h-swish(x) = x * ReLU6(x + 3) / 6.
We write the formulas out (rather than aliasing ``nn.Hardswish``) so the equation is visible; a test checks
them against ``F.hardswish`` / ``F.hardsigmoid``.
"""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


def hard_sigmoid(x: Tensor) -> Tensor:
    """h-sigmoid(x) = ReLU6(x + 3) / 6  (MobileNetV3, Sec. 5.2)."""
    return F.relu6(x + 3.0) / 6.0


def hard_swish(x: Tensor) -> Tensor:
    """h-swish(x) = x * ReLU6(x + 3) / 6  (MobileNetV3, Sec. 5.2)."""
    return x * F.relu6(x + 3.0) / 6.0


class HardSigmoid(nn.Module):
    def __init__(self, inplace: bool = False) -> None:
        super().__init__()

    def forward(self, x: Tensor) -> Tensor:
        return hard_sigmoid(x)


class HardSwish(nn.Module):
    def __init__(self, inplace: bool = False) -> None:
        super().__init__()

    def forward(self, x: Tensor) -> Tensor:
        return hard_swish(x)


#: Swish with beta = 1 is exactly SiLU; keep the paper's name available.
Swish = nn.SiLU
