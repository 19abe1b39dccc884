"""Classification losses: cross-entropy with label smoothing, focal loss, soft-target cross-entropy.

* Label smoothing: Szegedy et al., "Rethinking the Inception Architecture for Computer Vision",
  arXiv:1512.00567, Sec. 7: q'(k) = (1 - ε) δ_{k,y} + ε u(k) with u = 1/K, so
  H(q', p) = (1 - ε) H(q, p) + ε H(u, p).
* Focal loss: Lin et al., "Focal Loss for Dense Object Detection", arXiv:1708.02002, Eq. 5:
  FL(p_t) = -α_t (1 - p_t)^γ log(p_t).
* Soft-target cross-entropy for mixup / cutmix targets (Zhang et al., arXiv:1710.09412).

Every loss takes logits (B, K) and either hard targets (B,) int64 or soft targets (B, K) (rows summing to 1),
so the same loss works with or without mixup. Optional per-class ``weight`` (K,) follows
``F.cross_entropy``'s semantics exactly: with hard targets the mean is normalised by the sum of the targets'
weights, with soft targets by the batch size.

Deviation: the focal loss is the softmax (multi-class) form, with p_t the softmax probability of the target
class, rather than RetinaNet's per-class sigmoid; α is a scalar or a per-class vector α_k (the paper's binary
α / 1 - α split has no counterpart without a background class).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "FocalLoss",
    "LabelSmoothingCrossEntropy",
    "SoftTargetCrossEntropy",
    "build_loss",
    "class_weights_from_labels",
]


def _reduce(loss: Tensor, reduction: str, denom: Tensor | float | None = None) -> Tensor:
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / (denom if denom is not None else loss.numel())


def _check(logits: Tensor, target: Tensor) -> None:
    if logits.ndim != 2:
        raise ValueError(f"logits must be (B, K), got {tuple(logits.shape)}")
    if target.ndim == 1:
        if target.shape[0] != logits.shape[0] or target.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"hard targets must be int64 (B,) with B={logits.shape[0]}, got {target.dtype} "
                             f"{tuple(target.shape)}")
    elif target.shape != logits.shape:
        raise ValueError(f"soft targets must be (B, K) = {tuple(logits.shape)}, got {tuple(target.shape)}")


class _WeightedLoss(nn.Module):
    def __init__(self, weight: Tensor | Sequence[float] | None, reduction: str) -> None:
        super().__init__()
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        self.reduction = reduction
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32))

    def _class_weight(self, logits: Tensor) -> Tensor | None:
        if self.weight is None:
            return None
        if self.weight.shape != (logits.shape[1],):
            raise ValueError(f"class weights have shape {tuple(self.weight.shape)}, logits have K={logits.shape[1]}")
        return self.weight.to(logits.dtype)


class SoftTargetCrossEntropy(_WeightedLoss):
    """H(q, p) = -Σ_k w_k q_k log p_k for soft targets q (B, K); hard targets (B,) are one-hot encoded."""

    def __init__(self, weight: Tensor | Sequence[float] | None = None, reduction: str = "mean") -> None:
        super().__init__(weight, reduction)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        _check(logits, target)
        if target.ndim == 1:
            logits = logits.float()
            return F.cross_entropy(logits, target, weight=self._class_weight(logits), reduction=self.reduction)
        logp = F.log_softmax(logits.float(), dim=-1)
        w = self._class_weight(logp)
        q = target.float() if w is None else target.float() * w
        return _reduce(-(q * logp).sum(-1), self.reduction)


class LabelSmoothingCrossEntropy(_WeightedLoss):
    """Cross-entropy against the smoothed targets of Inception-v3 Sec. 7: H(q', p) = (1 - ε) H(q, p) + ε H(u, p).

    Written out term by term (not via ``F.cross_entropy(label_smoothing=)``) so the paper's decomposition is
    visible; tests check it equals PyTorch's built-in to float precision, with and without class weights.
    """

    def __init__(self, eps: float = 0.1, weight: Tensor | Sequence[float] | None = None,
                 reduction: str = "mean") -> None:
        super().__init__(weight, reduction)
        if not 0.0 <= eps < 1.0:
            raise ValueError(f"label smoothing eps must be in [0, 1), got {eps}")
        self.eps = float(eps)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        _check(logits, target)
        logp = F.log_softmax(logits.float(), dim=-1)  # log p(k | x), (B, K)
        K = logp.shape[1]
        w = self._class_weight(logp)
        w_all = torch.ones(K, device=logp.device) if w is None else w
        h_u = -(logp * w_all).sum(-1) / K  # H(u, p) with u(k) = 1/K (each term weighted by w_k)
        if target.ndim == 1:
            h_q = -logp.gather(1, target[:, None]).squeeze(1)  # H(q, p) = -log p(y)
            w_y = w_all[target]
            loss = (1.0 - self.eps) * w_y * h_q + self.eps * h_u
            return _reduce(loss, self.reduction, w_y.sum() if w is not None else None)
        h_q = -(target.float() * w_all * logp).sum(-1)  # soft q: H(q, p) = -Σ_k q_k log p_k
        return _reduce((1.0 - self.eps) * h_q + self.eps * h_u, self.reduction)


class FocalLoss(_WeightedLoss):
    """Focal loss, FL(p_t) = -α_t (1 - p_t)^γ log(p_t) (Lin et al. Eq. 5), softmax form.

    Args:
        gamma: focusing parameter γ >= 0 (paper's best: 2); γ = 0 gives (α-weighted) cross-entropy.
        alpha: None, a scalar α, or per-class α_k (K,).
        weight: per-class weights, normalised like ``F.cross_entropy``'s (so γ = 0, α = None equals it).
        smoothing: label smoothing ε applied to the targets first (soft form below).

    Soft targets q (B, K) use FL = -Σ_k q_k α_k (1 - p_k)^γ log p_k, which is Eq. 5 when q is one-hot.
    """

    def __init__(self, gamma: float = 2.0, alpha: float | Sequence[float] | Tensor | None = None,
                 weight: Tensor | Sequence[float] | None = None, smoothing: float = 0.0,
                 reduction: str = "mean") -> None:
        super().__init__(weight, reduction)
        if gamma < 0 or not 0.0 <= smoothing < 1.0:
            raise ValueError(f"focal loss needs gamma >= 0 and smoothing in [0, 1), got {gamma}, {smoothing}")
        self.gamma, self.smoothing = float(gamma), float(smoothing)
        self.register_buffer("alpha", None if alpha is None else torch.as_tensor(alpha, dtype=torch.float32))

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        _check(logits, target)
        logp = F.log_softmax(logits.float(), dim=-1)  # (B, K)
        B, K = logp.shape
        w = self._class_weight(logp)
        a = torch.ones(K, device=logp.device) if self.alpha is None else self.alpha.to(logp.device).expand(K)
        if target.ndim == 1 and self.smoothing == 0:
            logp_t = logp.gather(1, target[:, None]).squeeze(1)  # log p_t, (B,)
            w_t = torch.ones_like(logp_t) if w is None else w[target]
            loss = -a[target] * w_t * (1.0 - logp_t.exp()).pow(self.gamma) * logp_t
            return _reduce(loss, self.reduction, w_t.sum() if w is not None else None)
        q = F.one_hot(target, K).float() if target.ndim == 1 else target.float()
        if self.smoothing > 0:
            q = q * (1.0 - self.smoothing) + self.smoothing / K
        q = q * a if w is None else q * a * w
        loss = -(q * (1.0 - logp.exp()).pow(self.gamma) * logp).sum(-1)
        return _reduce(loss, self.reduction)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, alpha={self.alpha}, smoothing={self.smoothing}"


def class_weights_from_labels(labels: Tensor, num_classes: int, power: float = 1.0) -> Tensor:
    """Inverse-frequency class weights (count_k)^-power, scaled to mean 1 (absent classes get weight 0)."""
    counts = torch.bincount(labels.flatten(), minlength=num_classes).double()
    w = torch.where(counts > 0, counts.clamp(min=1).pow(-power), torch.zeros_like(counts))
    return (w * (counts > 0).sum() / w.sum()).float()


def build_loss(name: str = "ce", *, smoothing: float = 0.0, gamma: float = 2.0,
               alpha: float | Sequence[float] | None = None,
               class_weights: Sequence[float] | Tensor | None = None) -> nn.Module:
    """Build a loss by name.

    Args:
        name: ``"ce"`` (cross-entropy, label-smoothed when ``smoothing > 0``), ``"label_smoothing"``
            (Inception-v3's ε; ``smoothing=0`` means the paper's ε = 0.1), ``"focal"`` or ``"soft_ce"``.
        smoothing: ε. When the batch transform already mixes/smooths the targets (MixupCutmix), pass 0 here.
        gamma, alpha: focal-loss parameters.
        class_weights: per-class weights (K,), e.g. from :func:`class_weights_from_labels`.

    Every returned loss accepts hard (B,) or soft (B, K) targets.
    """
    if name == "ce":
        return LabelSmoothingCrossEntropy(smoothing, weight=class_weights)
    if name == "label_smoothing":
        return LabelSmoothingCrossEntropy(smoothing if smoothing > 0 else 0.1, weight=class_weights)
    if name == "focal":
        return FocalLoss(gamma, alpha, weight=class_weights, smoothing=smoothing)
    if name == "soft_ce":
        if smoothing:
            return LabelSmoothingCrossEntropy(smoothing, weight=class_weights)
        return SoftTargetCrossEntropy(weight=class_weights)
    raise ValueError(f"unknown loss {name!r}; valid choices: ce, label_smoothing, focal, soft_ce")
