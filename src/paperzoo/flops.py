"""Counting parameters and FLOPs.

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` on one forward pass, and reported as
**multiply-adds x 2** (a k-term dot product is 2k FLOPs), the convention of that counter. Papers usually
quote multiply-adds ("MAdds", "mult-adds"): divide our FLOPs by 2 to compare.

``FlopCounterMode`` in torch 2.13 counts **zero** for the CPU kernel of ``F.scaled_dot_product_attention``
(``aten._scaled_dot_product_flash_attention_for_cpu``); we add it by formula: QKᵀ is 2·B·h·L·S·d and the
weighted sum of V is 2·B·h·L·S·d_v (softmax and scaling are not matmul FLOPs and are left out, as for
every other op). The backward pass is counted as twice that.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_params", "count_flops", "sdpa_flops"]


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def sdpa_flops(q_shape: Sequence[int], k_shape: Sequence[int], v_shape: Sequence[int]) -> int:
    """FLOPs of softmax(QKᵀ)V for q (..., L, d), k (..., S, d), v (..., S, d_v)."""
    *batch, l, d = q_shape
    s, dv = k_shape[-2], v_shape[-1]
    n = 1
    for b in batch:
        n *= b
    return 2 * n * l * s * d + 2 * n * l * s * dv


def _sdpa_fwd(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flops(query, key, value)


def _sdpa_bwd(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return 2 * sdpa_flops(query, key, value)


def _custom_mapping() -> dict:
    aten = torch.ops.aten
    mapping = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu] = _sdpa_fwd
        mapping[aten._scaled_dot_product_flash_attention_for_cpu_backward] = _sdpa_bwd
    return mapping


def flop_counter() -> FlopCounterMode:
    """A ``FlopCounterMode`` that also counts the CPU SDPA kernel (see module docstring)."""
    return FlopCounterMode(display=False, custom_mapping=_custom_mapping())


@torch.no_grad()
def count_flops(model: nn.Module, input_size: Sequence[int] = (1, 3, 224, 224),
                inputs: torch.Tensor | None = None) -> int:
    """FLOPs (multiply-adds x 2) of one forward pass of ``model`` in eval mode on a batch of ``input_size``."""
    was_training = model.training
    model.eval()
    x = inputs if inputs is not None else torch.zeros(*input_size)
    try:
        with flop_counter() as counter:
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())
