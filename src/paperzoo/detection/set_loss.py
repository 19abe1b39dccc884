"""DETR's bipartite matching and set prediction loss.

Carion et al. 2020, "End-to-End Object Detection with Transformers", arXiv:2005.12872, Sec. 3.1.

A DETR predicts a fixed set of N (class, box) pairs; the ground truth of an image is a set of M <= N objects,
padded with "no object" (∅). Training first finds the one-to-one assignment σ of predictions to objects with the
lowest total matching cost (Eq. 1), solved exactly by the Hungarian algorithm (here SciPy's
``linear_sum_assignment``), then scores every prediction against its assigned object (Eq. 2):

    σ̂ = argmin_σ Σ_i L_match(y_i, ŷ_σ(i))                                                           (Eq. 1)
    L_match(y_i, ŷ_σ(i)) = -λ_cls p̂_σ(i)(c_i) + λ_L1 ‖b_i - b̂_σ(i)‖₁ + λ_giou (-GIoU(b_i, b̂_σ(i)))
    L_Hungarian(y, ŷ) = Σ_i [-log p̂_σ̂(i)(c_i) + 1{c_i ≠ ∅} L_box(b_i, b̂_σ̂(i))]                       (Eq. 2)
    L_box = λ_L1 ‖b - b̂‖₁ + λ_giou (1 - GIoU(b, b̂))

with λ_cls = 1, λ_L1 = 5, λ_giou = 2 (Sec. 4, "Technical details"; the official code's set_cost_* and *_loss_coef).
The matching cost uses the class probability, not its log, so that the class and box terms are commensurable
(Sec. 3.1), and ``-GIoU`` for ``1 - GIoU`` (the constant does not change σ̂). Boxes are (cx, cy, w, h) normalised
by the image size.

Normalisation as in the paper's code: the cross-entropy is a weighted mean over all N queries with the ∅ class
down-weighted by ``eos_coef`` = 0.1 ("to account for class imbalance", Sec. 3.1); the box losses are sums over
the matched pairs divided by the number of target boxes in the batch (averaged over DDP processes, at least 1).
With ``aux_loss`` every decoder layer's predictions are matched and scored the same way ("auxiliary decoding
losses", Sec. 3.2): their losses are named ``loss_ce_0``, ``loss_bbox_0``, ... for the first decoder layers, the
last layer's without a suffix. Each returned loss already carries its λ, so the Hungarian loss is their sum.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from .boxes import box_convert, generalized_box_iou

__all__ = ["matching_costs", "hungarian_match", "SetCriterion"]

Match = tuple[Tensor, Tensor]  # (query indices, target indices), each (min(N, M),) int64


@torch.no_grad()
def matching_costs(logits: Tensor, boxes: Tensor, targets: Sequence[dict[str, Tensor]], *,
                   cost_class: float = 1.0, cost_bbox: float = 5.0, cost_giou: float = 2.0) -> list[Tensor]:
    """L_match of Eq. 1 for every (query, target) pair of each image: a list of ``(N, M_i)`` cost matrices.

    Args:
        logits: ``(B, N, K + 1)`` class logits, the last class being "no object".
        boxes: ``(B, N, 4)`` predicted boxes, cxcywh normalised to [0, 1].
        targets: per image ``{"labels": (M_i,) int64, "boxes": (M_i, 4) cxcywh normalised}``.
    """
    b, n = logits.shape[:2]
    prob = logits.flatten(0, 1).float().softmax(-1)  # (B*N, K+1)
    pred = boxes.flatten(0, 1).float()  # (B*N, 4)
    tgt_ids = torch.cat([t["labels"] for t in targets])  # (ΣM,)
    tgt_boxes = torch.cat([t["boxes"] for t in targets]).float()  # (ΣM, 4)
    # one expression for the whole batch, then each image keeps its own columns (as the official matcher does)
    cost = (cost_class * -prob[:, tgt_ids]  # -p̂(c_i): the probability, not its log (Sec. 3.1)
            + cost_bbox * torch.cdist(pred, tgt_boxes, p=1)  # ‖b_i - b̂‖₁
            + cost_giou * -generalized_box_iou(box_convert(pred, "cxcywh", "xyxy"),
                                               box_convert(tgt_boxes, "cxcywh", "xyxy")))  # (B*N, ΣM)
    cost = cost.view(b, n, -1)  # (B, N, ΣM)
    sizes = [len(t["labels"]) for t in targets]
    return [c[i] for i, c in enumerate(cost.split(sizes, dim=-1))]  # image i: (N, M_i)


def hungarian_match(costs: Sequence[Tensor]) -> list[Match]:
    """σ̂ of Eq. 1 per image: the assignment of min(N, M) queries to targets with the least total cost.

    ``linear_sum_assignment`` (the Hungarian / Jonker-Volgenant algorithm) solves rectangular problems: with
    N > M every target gets a distinct query and the N - M others are left to "no object"; M = 0 matches nothing.
    """
    out = []
    for cost in costs:
        if not torch.isfinite(cost).all():
            raise ValueError("the matching cost has NaN or infinite entries (the model's outputs diverged)")
        query, target = linear_sum_assignment(cost.cpu().numpy())
        out.append((torch.as_tensor(query, dtype=torch.int64), torch.as_tensor(target, dtype=torch.int64)))
    return out


def _num_boxes(targets: Sequence[dict[str, Tensor]], device: torch.device) -> float:
    """Target boxes per process in the batch, averaged over DDP processes and at least 1 (the official code's)."""
    num = torch.tensor(float(sum(len(t["labels"]) for t in targets)), device=device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(num)
        num = num / torch.distributed.get_world_size()
    return max(float(num), 1.0)


class SetCriterion(nn.Module):
    """The Hungarian loss (Eq. 2) of every decoder layer's predictions, each layer matched on its own.

    Args:
        num_classes: K of the class head, whose ``K + 1``-th logit is "no object".
        cost_class, cost_bbox, cost_giou: λ of the matching cost (1, 5, 2).
        loss_ce, loss_bbox, loss_giou: λ of the loss (1, 5, 2).
        eos_coef: weight of the "no object" class in the cross-entropy (0.1).
    """

    def __init__(self, num_classes: int, *, cost_class: float = 1.0, cost_bbox: float = 5.0, cost_giou: float = 2.0,
                 loss_ce: float = 1.0, loss_bbox: float = 5.0, loss_giou: float = 2.0, eos_coef: float = 0.1) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.costs = {"cost_class": cost_class, "cost_bbox": cost_bbox, "cost_giou": cost_giou}
        self.weights = {"loss_ce": loss_ce, "loss_bbox": loss_bbox, "loss_giou": loss_giou}
        class_weight = torch.ones(num_classes + 1)
        class_weight[-1] = eos_coef
        self.register_buffer("class_weight", class_weight, persistent=False)  # a constant, not a weight to save

    def match(self, logits: Tensor, boxes: Tensor, targets: Sequence[dict[str, Tensor]]) -> list[Match]:
        """σ̂ (Eq. 1) for one layer's predictions ``(B, N, K + 1)``, ``(B, N, 4)``."""
        return hungarian_match(matching_costs(logits, boxes, targets, **self.costs))

    def layer_losses(self, logits: Tensor, boxes: Tensor, targets: Sequence[dict[str, Tensor]],
                     num_boxes: float) -> tuple[dict[str, Tensor], list[Match]]:
        """Eq. 2 for one layer, unweighted: ``{"loss_ce", "loss_bbox", "loss_giou"}`` and the matching used."""
        matches = self.match(logits, boxes, targets)
        batch_idx = torch.cat([torch.full_like(q, i) for i, (q, _) in enumerate(matches)]).to(logits.device)
        query_idx = torch.cat([q for q, _ in matches]).to(logits.device)
        matched_labels = torch.cat([t["labels"][j.to(t["labels"].device)] for t, (_, j) in zip(targets, matches)])
        target_boxes = torch.cat([t["boxes"][j.to(t["boxes"].device)] for t, (_, j) in zip(targets, matches)])

        classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)  # ∅
        classes[batch_idx, query_idx] = matched_labels  # (B, N): the matched queries' classes
        # weighted mean over all B·N queries: Σ w_c · CE / Σ w_c, w_∅ = eos_coef
        ce = F.cross_entropy(logits.float().transpose(1, 2), classes, self.class_weight)  # (B, K+1, N) vs (B, N)

        pred = boxes[batch_idx, query_idx].float()  # (ΣM, 4) the matched predictions
        l1 = F.l1_loss(pred, target_boxes.float(), reduction="sum") / num_boxes
        giou = torch.diag(generalized_box_iou(box_convert(pred, "cxcywh", "xyxy"),
                                              box_convert(target_boxes.float(), "cxcywh", "xyxy")))  # (ΣM,)
        return {"loss_ce": ce, "loss_bbox": l1, "loss_giou": (1 - giou).sum() / num_boxes}, matches

    def forward(self, logits: Tensor, boxes: Tensor, targets: Sequence[dict[str, Tensor]],
                aux_loss: bool = True) -> dict[str, Tensor]:
        """The weighted losses of the last decoder layer (and of the others with ``aux_loss``), plus diagnostics.

        Args:
            logits: ``(L, B, N, K + 1)`` every decoder layer's class logits (L = 1 is fine).
            boxes: ``(L, B, N, 4)`` every decoder layer's boxes, cxcywh normalised.
            targets: per image ``{"labels": (M,) int64 in 0..K-1, "boxes": (M, 4) cxcywh normalised}``.

        Returns ``loss_ce``, ``loss_bbox``, ``loss_giou`` (times their λ) of the last layer, ``loss_*_<l>`` of
        layer l < L - 1 with ``aux_loss``, and the last layer's ``class_error`` (% of matched queries whose
        arg-max class is wrong) and ``cardinality_error`` (|predicted objects - targets| per image), not losses.
        """
        num_boxes = _num_boxes(targets, logits.device)
        layers = range(logits.shape[0]) if aux_loss else [logits.shape[0] - 1]
        out: dict[str, Tensor] = {}
        for layer in layers:
            losses, matches = self.layer_losses(logits[layer], boxes[layer], targets, num_boxes)
            suffix = "" if layer == logits.shape[0] - 1 else f"_{layer}"
            out.update({f"{k}{suffix}": v * self.weights[k] for k, v in losses.items()})
        out.update(self._diagnostics(logits[-1].detach(), targets, matches))
        return out

    def _diagnostics(self, logits: Tensor, targets: Sequence[dict[str, Tensor]],
                     matches: list[Match]) -> dict[str, Tensor]:
        predicted = logits.argmax(-1)  # (B, N)
        n_pred = (predicted != self.num_classes).sum(1).float()  # objects each image's queries claim
        n_true = torch.tensor([float(len(t["labels"])) for t in targets], device=logits.device)
        right = [predicted[i, q.to(logits.device)] == t["labels"][j.to(t["labels"].device)]
                 for i, (t, (q, j)) in enumerate(zip(targets, matches))]
        right = torch.cat(right).float()
        error = 100 * (1 - right.mean()) if len(right) else logits.new_zeros(())
        return {"class_error": error, "cardinality_error": (n_pred - n_true).abs().mean()}
