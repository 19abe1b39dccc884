"""Fusion for inference: fold every BatchNorm into the convolution or linear layer that feeds it.

At inference a BatchNorm is a fixed per-channel affine map, ``y = γ (x - μ) / sqrt(σ² + ε) + β`` (Ioffe & Szegedy
2015, arXiv:1502.03167, Alg. 2, with the running statistics), and a convolution is linear in its weights, so
``bn(conv(x))`` is one convolution with

    W' = W · s  (s = γ / sqrt(σ² + ε), broadcast over each output channel's filter)
    b' = (b - μ) · s + β

and the same for ``bn(linear(x))``. The fused model skips one memory-bound pass over every activation map; with
``channels_last`` and bf16 on a CPU with native bf16 (AVX-512 BF16, AMX) this is the fast inference path of
``paperzoo predict``, ``eval`` and ``bench --fused`` (docs/deploy.md).

Which BatchNorm follows which layer is read from one forward pass, not from module names: a hook records the tensor
each convolution returns and the tensor each BatchNorm receives, and a pair is folded only when they are the same
tensor object. A model whose convolution output also feeds something besides its BatchNorm (nothing registered
does this) would change its outputs, so :func:`fuse` compares the fused and unfused outputs on the example and
refuses the result if they differ beyond fp32 rounding. BatchNorms that follow something else (the pre-activation
``BN -> ReLU -> conv`` of DenseNet) stay as they are.
"""

from __future__ import annotations

import contextlib
import copy
import types
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from paperzoo.layers.frozen_bn import FrozenBatchNorm2d

__all__ = ["FastPath", "fast_path", "fold_batchnorm", "fuse", "fusable_pairs"]

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, FrozenBatchNorm2d)
_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear)


def fold_batchnorm(weight: Tensor, bias: Tensor | None, bn: nn.Module) -> tuple[Tensor, Tensor]:
    """The weight and bias of ``bn(layer(x))`` as one layer (module docstring); ``weight`` is (out, ...)."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (out,)
    b = torch.zeros_like(bn.running_mean) if bias is None else bias
    w = weight * scale.reshape(-1, *([1] * (weight.dim() - 1)))  # scale each output channel's filter
    return w, (b - bn.running_mean) * scale + bn.bias


@torch.no_grad()
def fusable_pairs(model: nn.Module, example: Tensor) -> list[tuple[str, str]]:
    """``(layer name, norm name)`` for every BatchNorm whose input is the output of a conv / linear layer, found
    by running ``model`` on ``example`` once (eval mode)."""
    names = {m: n for n, m in model.named_modules()}
    produced: dict[int, tuple[str, Tensor]] = {}  # id(output tensor) -> (layer name, the tensor, kept alive)
    pairs: list[tuple[str, str]] = []

    def after_layer(m: nn.Module, _inp: tuple, out: Tensor) -> None:
        produced[id(out)] = (names[m], out)

    def before_norm(m: nn.Module, inp: tuple) -> None:
        hit = produced.get(id(inp[0]))
        if hit is not None and hit[1] is inp[0]:
            pairs.append((hit[0], names[m]))

    hooks = [m.register_forward_hook(after_layer) for m in model.modules() if isinstance(m, _LAYERS)]
    hooks += [m.register_forward_pre_hook(before_norm) for m in model.modules() if isinstance(m, _NORMS)]
    try:
        model(example)
    finally:
        for h in hooks:
            h.remove()
    seen: set[str] = set()
    return [p for p in pairs if not (p[1] in seen or seen.add(p[1]))]  # a norm called twice is paired once


def _eval_only(self: nn.Module, mode: bool = True) -> nn.Module:
    if mode:
        raise RuntimeError("a fused model is for inference only (its BatchNorms are folded away): "
                           "train the unfused model")
    return nn.Module.train(self, False)


@torch.no_grad()
def fuse(model: nn.Module, example: Tensor | None = None, *, rtol: float = 1e-4) -> nn.Module:
    """An eval-only copy of ``model`` with every BatchNorm that follows a conv / linear folded into it.

    ``example`` is one input batch (default: ``(1, in_chans, H, W)`` at the model's smallest accepted size, at
    least 32 pixels). The copy's outputs on it equal the original's within fp32 rounding (checked: ``rtol`` of
    the outputs' largest magnitude), else ``RuntimeError``. ``model`` itself is not changed.
    """
    was_training = model.training
    model.eval()
    if example is None:
        h, w = (max(s, 32) for s in getattr(model, "min_input_size", (32, 32)))
        example = torch.randn(1, getattr(model, "in_chans", 3), h, w,
                              generator=torch.Generator().manual_seed(0)).to(next(model.parameters()).device)
    fused = copy.deepcopy(model)
    for layer_name, norm_name in fusable_pairs(fused, example):
        layer, norm = fused.get_submodule(layer_name), fused.get_submodule(norm_name)
        w, b = fold_batchnorm(layer.weight, layer.bias, norm)
        layer.weight = nn.Parameter(w, requires_grad=False)
        layer.bias = nn.Parameter(b.to(w.dtype), requires_grad=False)
        parent, _, child = norm_name.rpartition(".")
        setattr(fused.get_submodule(parent) if parent else fused, child, nn.Identity())
    want, got = model(example), fused(example)
    model.train(was_training)
    scale = want.abs().max().clamp_min(1e-12)
    if not torch.allclose(got, want, rtol=0.0, atol=rtol * float(scale)):
        err = float((got - want).abs().max() / scale)
        raise RuntimeError(f"fusing changed the outputs of {type(model).__name__} by {err:.2e} of their largest "
                           "value: a fused layer's output is also used elsewhere")
    fused.requires_grad_(False)
    fused.train = types.MethodType(_eval_only, fused)
    fused.is_fused = True
    return fused


@dataclass
class FastPath:
    """The fast CPU inference path of a model: fused, channels_last, bf16 autocast where the CPU is native bf16."""

    model: nn.Module  # fused, channels_last weights
    bf16: bool  # autocast to bf16 (the CPU has AVX-512 BF16 / AMX); fp32 otherwise
    native: list[str]  # the CPU's native bf16 features found

    def __call__(self, x: Tensor) -> Tensor:
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()
        with ctx:
            return self.model(x.contiguous(memory_format=torch.channels_last))

    @property
    def label(self) -> str:
        return f"fused + channels_last + {'bf16' if self.bf16 else 'fp32'}"


def fast_path(model: nn.Module, example: Tensor | None = None, *, bf16: bool | None = None) -> FastPath:
    """``model`` on the fast inference path (:class:`FastPath`): :func:`fuse`, then channels_last, then bf16
    autocast when ``bf16`` (default: where the CPU has native bf16 — elsewhere bf16 is emulated and slower than
    fp32). bf16 rounds activations to 8 mantissa bits: logits move by ~1e-2 relative, predictions rarely."""
    from paperzoo.tools.bench import native_bf16

    native = native_bf16()
    fused = fuse(model, example).to(memory_format=torch.channels_last)
    return FastPath(fused, bool(native) if bf16 is None else bf16, native)
