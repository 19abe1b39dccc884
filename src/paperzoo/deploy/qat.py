"""Quantization-aware training (QAT): fine-tune a trained classifier through the int8 rounding it will run with.

Jacob et al., "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference"
(CVPR 2018, arXiv:1712.05877). The affine quantization scheme of their Eq. 1, ``r = S (q - Z)``, is simulated in
the forward pass ("fake quantization", Sec. 3.1): every value is rounded to the grid the integer kernel will use
and mapped back to float,

    q = clamp(round(r / S) + Z, q_min, q_max),    r̂ = S (q - Z)                              (Sec. 3.1)

with the gradient passed straight through the rounding inside the range and zero outside it (the
straight-through estimator; Sec. 3.1, Alg. 1 step 2). The network then learns weights whose rounded values
classify well, instead of the rounded values of weights that were tuned without rounding (post-training
quantization, PTQ).

The simulated quantizers match what ONNX Runtime's static int8 quantizer (:mod:`.quantize`) writes, so the model
trained here is the model that runs:

* **weights**: int8, symmetric, **per output channel**: ``S_c = max |W_c| / 127``, ``Z = 0``, ``q in [-127, 127]``,
  recomputed from the current weights every step (Sec. 3.1 "weights": min/max of the weights);
* **activations** (the input of every convolution and linear layer): uint8, asymmetric, **per tensor**:
  ``S = (r_max - r_min) / 255``, ``Z = round(-r_min / S)``, with ``[r_min, r_max]`` (widened to hold 0) an
  exponential moving average of each batch's min and max (Sec. 3.1 "activations": EMA, decay 0.99 here).
* BatchNorm is folded into the convolutions **before** fine-tuning (:func:`paperzoo.fuse`), as the int8 graph
  has it: the weights quantized during training are the folded ones (Sec. 3.2, Fig. C.7), and the batch
  statistics are frozen (the late-training "freeze" of Sec. 3.2, from the first step here).

Deviations: a short fine-tune (``epochs`` over the training split, SGD + momentum with a cosine-decayed small
learning rate, plain cross-entropy, no augmentation) instead of training from the float model for many epochs;
the int8 file is then produced by the same ONNX Runtime quantizer as PTQ (:func:`.quantize.quantize_onnx`), whose
activation ranges come from min-max calibration on training images rather than from the EMA ranges learned here
(the two agree to within the calibration set's extremes); residual additions and pooling, which ONNX Runtime also
quantizes, are not simulated (only the inputs of the layers with weights are).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ActivationFakeQuant", "QATLayer", "activation_qparams", "fake_quant_weight", "prepare_qat", "set_observe",
           "strip_qat", "train_qat"]

W_QMAX = 127  # int8 symmetric: [-127, 127] (ONNX Runtime's symmetric int8 range)
A_QMIN, A_QMAX = 0, 255  # uint8 activations


def fake_quant_weight(w: Tensor, bits: int = 8) -> Tensor:
    """Symmetric per-output-channel fake quantization of a weight (out, ...): ``S_c = max|W_c| / q_max``, Z = 0."""
    qmax = 2 ** (bits - 1) - 1
    scale = w.detach().abs().amax(dim=tuple(range(1, w.dim()))).clamp_min(1e-12) / qmax  # (out,)
    zero = torch.zeros_like(scale, dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -qmax, qmax)  # Sec. 3.1, STE gradient


def activation_qparams(lo: float, hi: float, bits: int = 8) -> tuple[float, int]:
    """(S, Z) of an asymmetric unsigned grid over ``[lo, hi]`` widened to hold 0 (so that 0 is exact)."""
    qmax = 2**bits - 1
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max((hi - lo) / qmax, 1e-12)
    return scale, int(min(max(round(-lo / scale), 0), qmax))


class ActivationFakeQuant(nn.Module):
    """Per-tensor uint8 fake quantization with EMA min/max ranges (updated while ``observe`` is on)."""

    def __init__(self, decay: float = 0.99, bits: int = 8) -> None:
        super().__init__()
        self.decay, self.bits, self.observe = decay, bits, True
        self.register_buffer("lo", torch.tensor(math.inf))
        self.register_buffer("hi", torch.tensor(-math.inf))

    def forward(self, x: Tensor) -> Tensor:
        if self.observe:
            lo, hi = x.detach().min().float(), x.detach().max().float()
            first = not torch.isfinite(self.lo)
            self.lo.copy_(lo if first else self.decay * self.lo + (1 - self.decay) * lo)
            self.hi.copy_(hi if first else self.decay * self.hi + (1 - self.decay) * hi)
        scale, zero = activation_qparams(float(self.lo), float(self.hi), self.bits)
        return torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, 2**self.bits - 1)


class QATLayer(nn.Module):
    """A conv / linear layer that sees fake-quantized inputs and weights (its own parameters stay fp32)."""

    def __init__(self, layer: nn.Conv1d | nn.Conv2d | nn.Linear, bits: int = 8) -> None:
        super().__init__()
        self.layer, self.bits, self.act = layer, bits, ActivationFakeQuant(bits=bits)

    def forward(self, x: Tensor) -> Tensor:
        w = fake_quant_weight(self.layer.weight, self.bits)
        x = self.act(x)
        if isinstance(self.layer, nn.Linear):
            return F.linear(x, w, self.layer.bias)
        return self.layer._conv_forward(x, w, self.layer.bias)


def prepare_qat(model: nn.Module, example: Tensor, bits: int = 8) -> nn.Module:
    """A trainable copy of ``model`` with its BatchNorms folded (:func:`paperzoo.fuse`) and every conv / linear
    layer wrapped in :class:`QATLayer`. It stays in eval mode (dropout off, nothing left to normalize)."""
    from .fuse import fuse

    fused = copy.deepcopy(fuse(model, example))
    del fused.train  # fuse() made it eval-only; fine-tuning needs gradients (it still never leaves eval mode)
    fused.eval().requires_grad_(True)
    targets = [(n, m) for n, m in fused.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))]
    for name, layer in targets:
        parent, _, child = name.rpartition(".")
        setattr(fused.get_submodule(parent) if parent else fused, child, QATLayer(layer, bits))
    return fused


def strip_qat(model: nn.Module) -> nn.Module:
    """The fine-tuned fp32 model with the fake quantizers removed (each :class:`QATLayer` by its layer)."""
    model = copy.deepcopy(model)
    for name, m in [(n, m) for n, m in model.named_modules() if isinstance(m, QATLayer)]:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, m.layer)
    return model.requires_grad_(False)


def set_observe(model: nn.Module, on: bool) -> None:
    for m in model.modules():
        if isinstance(m, ActivationFakeQuant):
            m.observe = on


def train_qat(model: nn.Module, batches: Callable[[], Iterable[tuple[Tensor, Tensor]]], *, epochs: int = 1,
              lr: float = 1e-3, momentum: float = 0.9, log: Callable[[str], None] | None = None) -> nn.Module:
    """Fine-tune a :func:`prepare_qat` model in place: ``epochs`` passes over ``batches()`` (normalized images,
    labels), SGD + momentum, learning rate cosine-decayed to 0 over the run (Deviations)."""
    steps = epochs * sum(1 for _ in batches())
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=momentum)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / max(steps, 1))))
    set_observe(model, True)
    step = 0
    for epoch in range(epochs):
        total = correct = 0
        for x, y in batches():
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            total, correct = total + len(y), correct + int((logits.argmax(1) == y).sum())
        if log:
            log(f"QAT epoch {epoch + 1}/{epochs}: {step} steps, train accuracy (fake-quantized) "
                f"{100 * correct / max(total, 1):.2f} %")
    set_observe(model, False)
    return model
