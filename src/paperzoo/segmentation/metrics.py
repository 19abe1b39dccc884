"""Semantic-segmentation metrics from one confusion matrix: IoU per class, mean IoU, pixel accuracy.

Long et al. 2015 ("Fully Convolutional Networks for Semantic Segmentation", arXiv:1411.4038), Sec. 5, with
``n_ij`` the number of pixels of class ``i`` predicted as ``j`` and ``t_i = sum_j n_ij`` the pixels of class ``i``:

* pixel accuracy ``sum_i n_ii / sum_i t_i``;
* mean accuracy ``(1 / n_cl) sum_i n_ii / t_i``;
* IoU of class ``i`` ("region intersection over union") ``n_ii / (t_i + sum_j n_ji - n_ii)``, i.e.
  ``TP / (TP + FP + FN)``; mean IoU ``(1 / n_cl) sum_i IoU_i``.

Conventions (stated because they change the number):

* Pixels whose target is the ignore index (255) are left out of every count, whatever is predicted there.
* The background (class 0) is a class like the others: mean IoU averages over the background and the K-1 classes.
* ``n_cl`` counts the classes **present**: a class absent from both target and prediction has ``0 / 0`` IoU and is
  excluded from the mean (NaN in the per-class table), as mmsegmentation's ``nanmean`` does; torchvision's
  reference takes a plain mean, which is the same number whenever every class occurs. A class that is predicted
  but absent from the target has IoU 0 and counts. Mean accuracy likewise averages over the classes in the target.
* Everything is computed from the summed confusion matrix of the whole evaluation set (not averaged per image);
  under DDP the ranks' matrices are summed (an all-reduce) before the division.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["confusion_matrix", "iou_per_class", "mean_iou", "pixel_accuracy", "mean_accuracy",
           "segmentation_metrics"]


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int = 255) -> Tensor:
    """``(K, K)`` int64 counts ``n_ij`` of target class ``i`` (row) predicted as ``j`` (column), one bincount.

    Args:
        pred: predicted classes, int, any shape (e.g. ``(B, H, W)``), values in ``0..K-1``.
        target: true classes, same shape; ``ignore_index`` pixels are not counted.
        num_classes: ``K``, with the background.
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    keep = target != ignore_index
    t, p = target[keep].long(), pred[keep].long()
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
        raise ValueError(f"target values must be in 0..{num_classes - 1} or {ignore_index}, "
                         f"got {int(t.min())}..{int(t.max())}")
    if p.numel() and (int(p.min()) < 0 or int(p.max()) >= num_classes):
        raise ValueError(f"predicted values must be in 0..{num_classes - 1}, got {int(p.min())}..{int(p.max())}")
    counts = torch.bincount(t * num_classes + p, minlength=num_classes * num_classes)  # index i * K + j
    return counts.view(num_classes, num_classes)  # (K, K)


def iou_per_class(cm: Tensor) -> Tensor:
    """``n_ii / (t_i + sum_j n_ji - n_ii)`` per class (float64); NaN for a class absent from target and prediction."""
    cm = cm.double()
    tp = cm.diagonal()
    union = cm.sum(1) + cm.sum(0) - tp  # TP + FN + FP
    return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))


def mean_iou(cm: Tensor) -> float:
    """Mean of :func:`iou_per_class` over the classes present (NaN entries left out); NaN for an empty matrix."""
    return float(iou_per_class(cm).nanmean())


def pixel_accuracy(cm: Tensor) -> float:
    """``sum_i n_ii / sum_i t_i``: the fraction of scored pixels classified correctly."""
    total = cm.sum()
    return float(cm.diagonal().sum().double() / total) if total > 0 else float("nan")


def mean_accuracy(cm: Tensor) -> float:
    """``(1 / n_cl) sum_i n_ii / t_i`` over the classes that occur in the target."""
    cm = cm.double()
    t = cm.sum(1)
    return float((cm.diagonal()[t > 0] / t[t > 0]).mean()) if bool((t > 0).any()) else float("nan")


def segmentation_metrics(cm: Tensor, categories: list[str] | None = None) -> dict[str, float]:
    """``mIoU``, ``pixel_acc``, ``mean_acc`` and ``IoU/<category>`` (NaN where absent) of a confusion matrix."""
    names = categories or [str(i) for i in range(cm.shape[0])]
    if len(names) != cm.shape[0]:
        raise ValueError(f"{len(names)} category names for a {cm.shape[0]}-class confusion matrix")
    out = {"mIoU": mean_iou(cm), "pixel_acc": pixel_accuracy(cm), "mean_acc": mean_accuracy(cm)}
    out.update({f"IoU/{n}": float(v) for n, v in zip(names, iou_per_class(cm))})
    return out
