"""Learning-rate schedules, stepped once per optimizer step, as ``LambdaLR`` with picklable factor objects.

The LR of optimizer step ``s`` (0-based) is ``base_lr * f(s)``. Each ``f`` is a small callable class whose
parameters live in its ``__dict__``, so ``LambdaLR.state_dict()`` saves them and ``load_state_dict`` restores
an identical schedule (plain lambdas would not be saved); everything in it is ints/floats/tuples, loadable
with ``torch.load(weights_only=True)``.

* Linear warmup (Goyal et al., arXiv:1706.02677 Sec. 2.2): f(s) = (s + 1) / W for s < W, so the first step
  already moves and step W - 1 reaches the full LR. Used in front of every schedule except one-cycle.
* Cosine (Loshchilov & Hutter, "SGDR", arXiv:1608.03983 Eq. 5, one cycle without restarts):
  f = m + (1 - m)·½(1 + cos(π t)), t = (s - W) / (T - W), m = ``min_lr_ratio``; f(T) = m.
* Step / multistep (He et al., arXiv:1512.03385 Sec. 3.4: ÷10 at fixed points): f = γ^⌊s / step_size⌋ or
  γ^(number of milestones <= s); milestones and step sizes are counted in optimizer steps from step 0.
* One-cycle (Smith & Topin, "Super-Convergence", arXiv:1708.07120): cosine rise from lr/div_factor to lr over
  ``pct_start`` of the steps, then cosine decay to lr/(div_factor·final_div_factor). The curve equals
  ``torch.optim.lr_scheduler.OneCycleLR`` (tested); momentum cycling (0.95 -> 0.85 -> 0.95) is optional
  (``cycle_momentum``) and off by default here, unlike torch's.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

import torch
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["SCHEDULES", "ScheduleLR", "build_scheduler"]

SCHEDULES = ("cosine", "step", "multistep", "onecycle", "constant")


def _cos_anneal(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1.0)


class _Warmup:
    """Base of the factor functions: linear warmup over ``warmup`` steps, then ``main(s)``."""

    def __init__(self, warmup: int) -> None:
        self.warmup = int(warmup)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        return self.main(step)

    def main(self, step: int) -> float:
        return 1.0


class CosineFactor(_Warmup):
    def __init__(self, total: int, warmup: int, min_ratio: float) -> None:
        super().__init__(warmup)
        self.total, self.min_ratio = int(total), float(min_ratio)

    def main(self, step: int) -> float:
        t = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


class StepFactor(_Warmup):
    def __init__(self, warmup: int, step_size: int, gamma: float) -> None:
        super().__init__(warmup)
        self.step_size, self.gamma = int(step_size), float(gamma)

    def main(self, step: int) -> float:
        return self.gamma ** (step // self.step_size)


class MultiStepFactor(_Warmup):
    def __init__(self, warmup: int, milestones: Sequence[int], gamma: float) -> None:
        super().__init__(warmup)
        self.milestones, self.gamma = tuple(int(m) for m in milestones), float(gamma)

    def main(self, step: int) -> float:
        return self.gamma ** bisect.bisect_right(self.milestones, step)


class OneCycleFactor:
    """Factor of ``OneCycleLR`` (two phases, cosine annealing) relative to the peak LR."""

    def __init__(self, total: int, pct_start: float, div_factor: float, final_div_factor: float) -> None:
        self.total, self.pct_start = int(total), float(pct_start)
        self.div_factor, self.final_div_factor = float(div_factor), float(final_div_factor)

    def phase(self, step: int) -> tuple[float, float, float]:
        """(start, end, pct) of the phase containing ``step``, in units of the peak."""
        peak_step = self.pct_start * self.total - 1  # torch's phase boundary (a float)
        step = min(step, self.total - 1)
        if step <= peak_step:
            return 0.0, 1.0, step / peak_step if peak_step > 0 else 1.0
        # Very short runs (pct_start * total <= 1) have no rise: they start at the peak and only decay.
        return 1.0, 2.0, (step - max(peak_step, 0.0)) / max(self.total - 1 - max(peak_step, 0.0), 1.0)

    def __call__(self, step: int) -> float:
        initial, low = 1.0 / self.div_factor, 1.0 / (self.div_factor * self.final_div_factor)
        start, _, pct = self.phase(step)
        return _cos_anneal(initial, 1.0, pct) if start == 0.0 else _cos_anneal(1.0, low, pct)


class ScheduleLR(LambdaLR):
    """``LambdaLR`` that can also cycle momentum (SGD ``momentum`` / Adam ``betas[0]``) for one-cycle."""

    def __init__(self, optimizer: torch.optim.Optimizer, factor: object,
                 momentum_range: tuple[float, float] | None = None) -> None:
        self.momentum_range = momentum_range  # (base, max); momentum moves opposite to the LR
        super().__init__(optimizer, factor)

    def step(self, epoch: int | None = None) -> None:  # noqa: D102 (same as LambdaLR.step)
        super().step(epoch)
        if self.momentum_range is None:
            return
        base, high = self.momentum_range
        start, _, pct = self.lr_lambdas[0].phase(self.last_epoch)
        m = _cos_anneal(high, base, pct) if start == 0.0 else _cos_anneal(base, high, pct)
        for group in self.optimizer.param_groups:
            if "betas" in group:
                group["betas"] = (m, *group["betas"][1:])
            else:
                group["momentum"] = m


def build_scheduler(optimizer: torch.optim.Optimizer, name: str = "cosine", *, total_steps: int,
                    warmup_steps: int = 0, min_lr_ratio: float = 0.0, step_size: int | None = None,
                    milestones: Sequence[int] = (), gamma: float = 0.1, pct_start: float = 0.3,
                    div_factor: float = 25.0, final_div_factor: float = 1e4, cycle_momentum: bool = False,
                    base_momentum: float = 0.85, max_momentum: float = 0.95) -> ScheduleLR:
    """Build a per-step LR schedule (see the module docstring for the formulas).

    Args:
        optimizer: its groups' current ``lr`` is the peak LR.
        name: ``"cosine" | "step" | "multistep" | "onecycle" | "constant"``.
        total_steps: optimizer steps of the whole run (cosine and one-cycle end there).
        warmup_steps: linear warmup steps (ignored by one-cycle, whose first phase is its warmup).
        min_lr_ratio: cosine's final LR as a fraction of the peak.
        step_size, milestones, gamma: step / multistep decay (in optimizer steps).
        pct_start, div_factor, final_div_factor: one-cycle shape (torch's defaults 0.3, 25, 1e4).
        cycle_momentum, base_momentum, max_momentum: one-cycle momentum cycling (Smith & Topin Sec. 4).
    """
    if total_steps < 1 or warmup_steps < 0:
        raise ValueError(f"need total_steps >= 1 and warmup_steps >= 0, got {total_steps}, {warmup_steps}")
    momentum_range = None
    if name == "cosine":
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
        factor: object = CosineFactor(total_steps, warmup_steps, min_lr_ratio)
    elif name == "step":
        if not step_size or step_size < 1:
            raise ValueError("the 'step' schedule needs step_size >= 1 (optimizer steps between decays)")
        factor = StepFactor(warmup_steps, step_size, gamma)
    elif name == "multistep":
        if list(milestones) != sorted(milestones):
            raise ValueError(f"milestones must be increasing, got {list(milestones)}")
        factor = MultiStepFactor(warmup_steps, milestones, gamma)
    elif name == "onecycle":
        if not 0.0 < pct_start < 1.0:
            raise ValueError(f"one-cycle needs 0 < pct_start < 1, got {pct_start}")
        factor = OneCycleFactor(total_steps, pct_start, div_factor, final_div_factor)
        momentum_range = (base_momentum, max_momentum) if cycle_momentum else None
    elif name == "constant":
        factor = _Warmup(warmup_steps)
    else:
        raise ValueError(f"unknown schedule {name!r}; valid choices: {', '.join(SCHEDULES)}")
    return ScheduleLR(optimizer, factor, momentum_range)
