"""The Transformer's residual sub-layer connection, post-norm (the paper's) or pre-norm.

* Vaswani et al., "Attention Is All You Need", arXiv:1706.03762, Sec. 3.1 and 5.4: each sub-layer's output is
  LayerNorm(x + Dropout(Sublayer(x))) ("post-norm").
* Xiong et al., "On Layer Normalization in the Transformer Architecture", arXiv:2002.04745: x +
  Dropout(Sublayer(LayerNorm(x))) ("pre-norm"), which trains without learning-rate warm-up tricks.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

__all__ = ["residual"]

Fn = Callable[[Tensor], Tensor]


def _identity(x: Tensor) -> Tensor:
    return x


def residual(x: Tensor, sublayer: Fn, norm: Fn, norm_first: bool, drop: Fn = _identity) -> Tensor:
    """x + drop(sublayer(norm(x))) if ``norm_first``, else norm(x + drop(sublayer(x))) (Sec. 3.1)."""
    if norm_first:
        return x + drop(sublayer(norm(x)))
    return norm(x + drop(sublayer(x)))
