"""Optimizers with weight decay only where it belongs.

L2 / decoupled weight decay on the scale and shift of normalisation layers and on biases only restricts
what those parameters can express (a BN layer followed by decay pulls γ towards 0 without regularising the
function), so they are excluded, as in Goyal et al., "Accurate, Large Minibatch SGD", arXiv:1706.02677
(Sec. 5.1 applies decay to weights only) and the ViT/DeiT recipes, which also exclude position embeddings and
class tokens. The rule here: no decay for every parameter with ``ndim <= 1`` (norm weights/biases, all biases,
layer scales) and for names a model lists in ``no_weight_decay()`` (e.g. ``{"pos_embed", "cls_token"}``).

* SGD with (Nesterov) momentum: Sutskever et al., ICML 2013.
* AdamW: Loshchilov & Hutter, "Decoupled Weight Decay Regularization", arXiv:1711.05101.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn as nn

__all__ = ["build_optimizer", "build_optimizer_and_schedule", "no_weight_decay_names", "param_groups"]


def _unwrap(model: nn.Module) -> nn.Module:
    """DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers -> the model (names without prefix)."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def no_weight_decay_names(model: nn.Module, skip: Iterable[str] = ()) -> set[str]:
    """Names of trainable parameters that get no weight decay (see module docstring)."""
    model = _unwrap(model)
    listed = set(skip)
    if hasattr(model, "no_weight_decay"):
        listed |= set(model.no_weight_decay())
    out = set()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        # A listed entry matches the parameter itself or everything under a listed module name.
        if p.ndim <= 1 or any(name == e or name.startswith(e + ".") for e in listed):
            out.add(name)
    return out


def param_groups(model: nn.Module, weight_decay: float, skip: Iterable[str] = ()) -> list[dict]:
    """Two optimizer parameter groups: ``{"params", "weight_decay"}`` with decay and without.

    Frozen parameters (``requires_grad=False``) are left out. Empty groups are dropped.
    """
    no_decay = no_weight_decay_names(model, skip)
    decay, rest = [], []
    for name, p in _unwrap(model).named_parameters():
        if p.requires_grad:
            (rest if name in no_decay else decay).append(p)
    groups = [{"params": decay, "weight_decay": float(weight_decay)}, {"params": rest, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, name: str = "sgd", lr: float = 0.1, weight_decay: float = 5e-4, *,
                    momentum: float = 0.9, nesterov: bool = True, betas: tuple[float, float] = (0.9, 0.999),
                    eps: float = 1e-8, skip: Iterable[str] = ()) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov) or AdamW over :func:`param_groups` (no decay on norms, biases, embeddings).

    Args:
        name: ``"sgd"`` or ``"adamw"``.
        lr: peak learning rate (the scheduler scales it).
        weight_decay: L2 coefficient for SGD, decoupled decay for AdamW; applied to the decay group only.
        momentum, nesterov: SGD only (Nesterov needs momentum > 0 and is turned off when momentum is 0).
        betas, eps: AdamW only.
        skip: extra parameter / module names to exclude from decay.
    """
    groups = param_groups(model, weight_decay, skip)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=bool(nesterov and momentum > 0))
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps)
    raise ValueError(f"unknown optimizer {name!r}; valid choices: sgd, adamw")


def build_optimizer_and_schedule(cfg: Any, model: nn.Module, total_steps: int, steps_per_epoch: int
                                 ) -> tuple[torch.optim.Optimizer, Any]:
    """The optimizer and the per-step LR schedule of a config's ``optim`` and ``sched`` sections.

    The schedule's epochs (warm-up, step size, milestones) are converted to optimizer steps.
    """
    from .schedulers import build_scheduler

    o, s = cfg.optim, cfg.sched
    optimizer = build_optimizer(model, o.name, lr=o.lr, weight_decay=o.weight_decay, momentum=o.momentum,
                                nesterov=o.nesterov, betas=tuple(o.betas))
    scheduler = build_scheduler(
        optimizer, s.name, total_steps=total_steps,
        warmup_steps=round(s.warmup_epochs * steps_per_epoch), min_lr_ratio=s.min_lr_ratio,
        step_size=round(s.step_epochs * steps_per_epoch) if s.step_epochs else None,
        milestones=tuple(round(m * steps_per_epoch) for m in s.milestones), gamma=s.gamma, pct_start=s.pct_start)
    return optimizer, scheduler
