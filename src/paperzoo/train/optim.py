"""Optimizers with weight decay only where it belongs.

L2 / decoupled weight decay on the scale and shift of normalisation layers and on biases only restricts
what those parameters can express (a BN layer followed by decay pulls γ towards 0 without regularising the
function), so they are excluded, as in Goyal et al., "Accurate, Large Minibatch SGD", arXiv:1706.02677
(Sec. 5.1 applies decay to weights only) and the ViT/DeiT recipes, which also exclude position embeddings and
class tokens. The rule here: no decay for every parameter with ``ndim <= 1`` (norm weights/biases, all biases,
layer scales) and for names a model lists in ``no_weight_decay()`` (e.g. ``{"pos_embed", "cls_token"}``).

Fine-tuning (docs/training.md, "Fine-tuning a pretrained model"): :func:`freeze` stops training chosen modules
(``train.freeze``), and ``optim.backbone_lr_mult`` gives every parameter outside the classifier head a lower
learning rate (its own parameter groups; the schedule scales every group by the same factor).

* SGD with (Nesterov) momentum: Sutskever et al., ICML 2013.
* AdamW: Loshchilov & Hutter, "Decoupled Weight Decay Regularization", arXiv:1711.05101.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn as nn

__all__ = ["build_optimizer", "build_optimizer_and_schedule", "freeze", "no_weight_decay_names", "param_groups"]


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


def _in_head(name: str, model: nn.Module) -> bool:
    """Whether parameter ``name`` belongs to the classifier head the model names (``ImageClassifier.head_names``)."""
    return any(name.startswith(m + ".") for m in getattr(model, "head_names", ()))


def freeze(model: nn.Module, names: Iterable[str]) -> int:
    """Stop training the parameters under each module name in ``names`` (``requires_grad=False``).

    ``"backbone"`` names every parameter outside the classifier head (training only the head: a linear probe).
    Only parameters are frozen: the BatchNorm running statistics of frozen layers still follow the new data in
    training mode, as they do in any layer. Returns the number of frozen parameter elements.
    """
    model = _unwrap(model)
    params = dict(model.named_parameters())
    modules = {n for n, m in model.named_modules() if n and any(True for _ in m.parameters())}
    frozen = set()
    for entry in names:
        if entry == "backbone":
            if not getattr(model, "head_names", ()):
                raise ValueError(f"train.freeze: 'backbone' needs a model that names its classifier head; "
                                 f"{type(model).__name__} does not")
            frozen |= {n for n in params if not _in_head(n, model)}
        elif entry in modules or entry in params:
            frozen |= {n for n in params if n == entry or n.startswith(entry + ".")}
        else:
            top = [n for n, _ in model.named_children() if n in modules]
            raise ValueError(f"train.freeze: {entry!r} is not a module of the model; valid names are 'backbone' "
                             f"and module paths such as {', '.join(top)}")
    for n in frozen:
        params[n].requires_grad_(False)
    return sum(params[n].numel() for n in frozen)


def param_groups(model: nn.Module, weight_decay: float, skip: Iterable[str] = (), *,
                 backbone_lr_mult: float = 1.0) -> list[dict]:
    """Optimizer parameter groups: ``{"params", "weight_decay"}`` with decay and without.

    With ``backbone_lr_mult != 1`` each of the two is split in the classifier head's parameters and the rest
    (the backbone), whose groups carry ``"lr_mult": backbone_lr_mult`` (:func:`build_optimizer` sets their
    ``lr``); the head's groups come first, so ``param_groups[0]["lr"]`` is the peak rate the logs show.
    Frozen parameters (``requires_grad=False``) are left out. Empty groups are dropped.
    """
    no_decay = no_weight_decay_names(model, skip)
    model = _unwrap(model)
    split = backbone_lr_mult != 1.0
    if split and not getattr(model, "head_names", ()):
        raise ValueError(f"optim.backbone_lr_mult needs a model that names its classifier head; "
                         f"{type(model).__name__} does not")
    groups: dict[tuple[bool, bool], list] = {(h, d): [] for h in (True, False) for d in (True, False)}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups[(not split or _in_head(name, model), name not in no_decay)].append(p)
    out = []
    for (head, decay), params in groups.items():  # head first, decay first
        group = {"params": params, "weight_decay": float(weight_decay) if decay else 0.0}
        if not head:
            group["lr_mult"] = float(backbone_lr_mult)
        if params:
            out.append(group)
    return out


def build_optimizer(model: nn.Module, name: str = "sgd", lr: float = 0.1, weight_decay: float = 5e-4, *,
                    momentum: float = 0.9, nesterov: bool = True, betas: tuple[float, float] = (0.9, 0.999),
                    eps: float = 1e-8, skip: Iterable[str] = (), backbone_lr_mult: float = 1.0
                    ) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov) or AdamW over :func:`param_groups` (no decay on norms, biases, embeddings).

    Args:
        name: ``"sgd"`` or ``"adamw"``.
        lr: peak learning rate (the scheduler scales it).
        weight_decay: L2 coefficient for SGD, decoupled decay for AdamW; applied to the decay group only.
        momentum, nesterov: SGD only (Nesterov needs momentum > 0 and is turned off when momentum is 0).
        betas, eps: AdamW only.
        skip: extra parameter / module names to exclude from decay.
        backbone_lr_mult: the learning rate outside the classifier head is ``lr * backbone_lr_mult``.
    """
    groups = param_groups(model, weight_decay, skip, backbone_lr_mult=backbone_lr_mult)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    for g in groups:
        g["lr"] = lr * g.get("lr_mult", 1.0)  # the schedule's LambdaLR scales each group's own initial lr
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=bool(nesterov and momentum > 0))
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps)
    raise ValueError(f"unknown optimizer {name!r}; valid choices: sgd, adamw")


def build_optimizer_and_schedule(cfg: Any, model: nn.Module, total_steps: int, steps_per_epoch: int
                                 ) -> tuple[torch.optim.Optimizer, Any]:
    """The optimizer and the per-step LR schedule of a config's ``optim`` and ``sched`` sections.

    The schedule's epochs (warm-up, step size, milestones) are converted to optimizer steps. The modules in
    ``train.freeze`` are frozen first (:func:`freeze`), so that every task can fine-tune part of its model.
    """
    from .schedulers import build_scheduler

    o, s = cfg.optim, cfg.sched
    freeze(model, cfg.train.freeze)
    optimizer = build_optimizer(model, o.name, lr=o.lr, weight_decay=o.weight_decay, momentum=o.momentum,
                                nesterov=o.nesterov, betas=tuple(o.betas), backbone_lr_mult=o.backbone_lr_mult)
    scheduler = build_scheduler(
        optimizer, s.name, total_steps=total_steps,
        warmup_steps=round(s.warmup_epochs * steps_per_epoch), min_lr_ratio=s.min_lr_ratio,
        step_size=round(s.step_epochs * steps_per_epoch) if s.step_epochs else None,
        milestones=tuple(round(m * steps_per_epoch) for m in s.milestones), gamma=s.gamma, pct_start=s.pct_start)
    return optimizer, scheduler
