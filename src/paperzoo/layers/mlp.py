"""The position-wise feed-forward block of a Transformer (Vaswani et al. arXiv:1706.03762 Eq. 2; ViT
arXiv:2010.11929 Sec. 3.1: "two layers with a GELU non-linearity").

FFN(x) = fc2(drop(act(fc1(x)))), applied to every token independently; hidden width = mlp_ratio x dim.
"""

from __future__ import annotations

import torch.nn as nn
from torch import Tensor

__all__ = ["Mlp"]


class Mlp(nn.Module):
    """Linear(dim -> hidden) -> activation -> dropout -> Linear(hidden -> out) -> dropout."""

    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None,
                 act_layer: type[nn.Module] = nn.GELU, drop: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, out_features, bias=bias)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))
