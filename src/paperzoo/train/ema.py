"""Exponential moving average of model weights (Polyak & Juditsky 1992; used for Inception-v3,
arXiv:1512.00567 Sec. 8, EfficientNet and DeiT).

After each optimizer step: θ_ema ← d·θ_ema + (1 - d)·θ. With ``warmup=True`` the decay of update n
(1-based) is d_n = min(d, (1 + n) / (10 + n)), as TensorFlow's ``ExponentialMovingAverage(num_updates=)``
does, so the average is not dominated by the random initialisation in short runs. Floating-point buffers
(BatchNorm running statistics) are averaged the same way; integer buffers (``num_batches_tracked``) are
copied. The averaged copy is kept in eval mode with gradients off and is what ``paperzoo eval --ema`` uses.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

__all__ = ["ModelEma"]


def _unwrap(model: nn.Module) -> nn.Module:
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


class ModelEma:
    """An EMA copy of a model.

    Args:
        model: the model being trained (DDP / ``torch.compile`` wrappers are unwrapped).
        decay: d, the per-step decay (0.9998 ≈ a 5000-step horizon).
        warmup: use d_n = min(d, (1 + n) / (10 + n)).
        device: keep the copy on another device (e.g. ``"cpu"`` to save GPU memory); None = the model's.

    Attributes:
        module: the averaged model (eval mode, ``requires_grad=False``).
        num_updates: updates applied so far.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9998, warmup: bool = True,
                 device: str | torch.device | None = None) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.module = copy.deepcopy(_unwrap(model)).eval()
        if device is not None:
            self.module.to(device)
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay, self.warmup, self.num_updates = float(decay), bool(warmup), 0

    def current_decay(self) -> float:
        """The decay the next update will use."""
        n = self.num_updates + 1
        return min(self.decay, (1.0 + n) / (10.0 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """θ_ema ← d θ_ema + (1 - d) θ for every float tensor of the state dict; ints are copied."""
        d = self.current_decay()
        src = _unwrap(model).state_dict()
        ema_f, src_f = [], []
        for name, e in self.module.state_dict().items():
            s = src[name].detach().to(e.device)
            if e.is_floating_point():
                ema_f.append(e)
                src_f.append(s.to(e.dtype))
            else:
                e.copy_(s)
        if ema_f:
            torch._foreach_lerp_(ema_f, src_f, 1.0 - d)  # e + (1 - d)(s - e) = d e + (1 - d) s
        self.num_updates += 1

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "num_updates": self.num_updates, "decay": self.decay,
                "warmup": self.warmup}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.num_updates = int(state["num_updates"])
        self.decay, self.warmup = float(state.get("decay", self.decay)), bool(state.get("warmup", self.warmup))
