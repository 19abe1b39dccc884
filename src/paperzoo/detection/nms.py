"""Greedy non-maximum suppression (NMS) and class-aware batched NMS, vectorized in torch.

Greedy NMS (as used by R-CNN, Girshick et al. 2014, Sec. 2.2, and Faster R-CNN, Ren et al. 2015, Sec. 3.3):
visit the boxes by decreasing score; keep a box unless a box kept before it overlaps it with
IoU > ``iou_threshold``. The answer is defined by that sequential scan; here it is computed without a
Python loop over boxes, in blocks of the score-sorted order:

1. **Against earlier blocks** — a box of block ``b`` is dead if it overlaps any box *kept* in blocks
   ``< b`` (all of which rank above it). One ``(B, K)`` IoU test, chunked over the kept boxes.
2. **Inside the block** — box ``j`` is kept iff it is alive and no *kept* box ``i < j`` of the block
   overlaps it. This recursion has a unique solution, found by iterating ``keep = alive & ~any_i(keep_i &
   overlap_ij)`` from ``keep = alive`` until nothing changes: after ``t`` rounds the first ``t`` entries are
   final, so it stops after (length of the longest suppression chain + 1) rounds, at most ``B + 1``. This
   is Cluster-NMS's iteration (Zheng et al. 2021, arXiv:2005.03572, Sec. 4.2), which they prove equals
   greedy NMS; a single round is YOLACT's "Fast NMS", which over-suppresses.

Cost: ``O(N·K)`` IoU pairs for N boxes of which K are kept (the same count as the sequential scan's
worst case), ``O(N·B)`` more inside blocks times a few rounds, and ``N / B`` Python iterations; memory
``O(B·chunk)``, never ``O(N²)``. A sequential scan with tensor ops inside would need K Python iterations
(thousands for RPN proposals), each a full pass over the remaining boxes; blocks replace them with N / B
large tensor ops. Time: benchmarks/bench_nms.py.

Conventions (torchvision's, where it has one):
* Suppression is strict: ``IoU > iou_threshold``. With threshold 1.0 nothing is suppressed, even exact
  duplicates; with 0.0 any overlap of positive area suppresses.
* Boxes of zero area have IoU 0 with everything (see :func:`.boxes.box_iou`), so they are never suppressed
  and never suppress.
* Equal scores are broken by the lower original index (a stable sort), so the result is deterministic;
  torchvision leaves this order unspecified.
* IoUs are computed in float64 whatever the input dtype, so a decision never depends on the dtype and
  :func:`batched_nms`'s coordinate shift is exact (see there).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["nms", "batched_nms"]

_BLOCK = 512  # boxes resolved together; larger blocks mean fewer Python steps but O(B²) work per round
_CHUNK = 4096  # kept boxes tested per IoU call, bounding the (B, chunk) float64 temporaries to ~ 16 MB each


def _check(boxes: Tensor, scores: Tensor, iou_threshold: float) -> None:
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4), got {tuple(boxes.shape)}")
    if scores.shape != boxes.shape[:1]:
        raise ValueError(f"scores must have shape ({boxes.shape[0]},), got {tuple(scores.shape)}")
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must lie in [0, 1], got {iou_threshold}")


def _columns(boxes: Tensor) -> Tensor:
    """xyxy boxes (N, 4) -> float64 rows (5, N): x1, y1, x2, y2 and the area (inverted boxes count as empty)."""
    x1, y1, x2, y2 = boxes.to(torch.float64).T.contiguous()
    return torch.stack((x1, y1, x2, y2, (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)))


def _iou_above(a: Tensor, b: Tensor, iou_threshold: float) -> Tensor:
    """(A, B) bool ``box_iou > iou_threshold`` for boxes given as :func:`_columns` (5, A) and (5, B).

    The same operations in the same order as :func:`.boxes.box_iou`, hence the same decisions (tested), but
    on contiguous coordinate rows and in place: about 4x faster than slicing (N, M, 2) corner tensors.
    """
    x1a, y1a, x2a, y2a, area_a = (row[:, None] for row in a)  # each (A, 1)
    x1b, y1b, x2b, y2b, area_b = b  # each (B,)
    w = torch.minimum(x2a, x2b).sub_(torch.maximum(x1a, x1b)).clamp_(min=0)  # (A, B)
    h = torch.minimum(y2a, y2b).sub_(torch.maximum(y1a, y1b)).clamp_(min=0)
    inter = w.mul_(h)
    union = (area_a + area_b).sub_(inter)
    return inter.div_(union.masked_fill_(union <= 0, 1.0)) > iou_threshold


def _overlaps_any(block: Tensor, kept: Tensor, iou_threshold: float) -> Tensor:
    """(B,) bool: does each box of ``block`` (5, B) overlap some box of ``kept`` (5, K) with IoU > threshold?"""
    hit = torch.zeros(block.shape[1], dtype=torch.bool, device=block.device)
    for start in range(0, kept.shape[1], _CHUNK):
        hit |= _iou_above(block, kept[:, start : start + _CHUNK], iou_threshold).any(dim=1)
    return hit


def _resolve_block(overlap: Tensor, alive: Tensor) -> Tensor:
    """Greedy keep mask (B,) of one block, from ``overlap`` (B, B) (row i suppresses column j > i)."""
    keep = alive
    for _ in range(len(alive) + 1):  # converges in at most B + 1 rounds (module docstring)
        suppressed = (overlap & keep[:, None]).any(dim=0)  # (B,): a kept box above overlaps it
        new_keep = alive & ~suppressed
        if torch.equal(new_keep, keep):
            break
        keep = new_keep
    return keep


def _greedy_keep(sorted_boxes: Tensor, iou_threshold: float) -> Tensor:
    """Keep mask (N,) of greedy NMS over boxes already sorted by decreasing score."""
    keep = torch.zeros(len(sorted_boxes), dtype=torch.bool, device=sorted_boxes.device)
    columns = _columns(sorted_boxes)  # (5, N)
    kept = columns[:, :0]  # (5, K), grows block by block
    for start in range(0, len(sorted_boxes), _BLOCK):
        block = columns[:, start : start + _BLOCK]  # (5, B)
        alive = ~_overlaps_any(block, kept, iou_threshold)
        overlap = _iou_above(block, block, iou_threshold).triu_(diagonal=1)  # (B, B), only i < j
        block_keep = _resolve_block(overlap, alive)
        keep[start : start + _BLOCK] = block_keep
        kept = torch.cat((kept, block[:, block_keep]), dim=1)
    return keep


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS of xyxy ``boxes`` (N, 4) with ``scores`` (N,).

    Returns the int64 indices of the kept boxes, sorted by decreasing score (ties: lower index first).
    """
    _check(boxes, scores, iou_threshold)
    order = torch.sort(scores, descending=True, stable=True).indices
    keep = _greedy_keep(boxes[order], iou_threshold)
    return order[keep]


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """Class-aware NMS: boxes only suppress boxes with the same ``idxs`` (N,) (class or image id).

    Returns kept indices sorted by decreasing score (ties: lower index first), as :func:`nms`.

    The coordinate-offset trick: shift every box of group ``g`` (its rank among the distinct ids) by
    ``g * S`` in x and y, with ``S`` an integer greater than the coordinate span + 1, and run plain NMS once.
    It is exact, not a heuristic:

    * Across groups, shifted boxes lie in disjoint squares separated by a gap of at least 1, so their
      intersection is exactly 0, their IoU 0, and 0 > threshold never holds.
    * Within a group, all boxes move by the same ``t``, and IoU depends only on coordinate differences.
      The shift is done in float64 (``t`` is an integer). Whenever ``x + t`` is exactly representable —
      e.g. float32 or integer coordinates that are 0 or of magnitude >= 1/2, with ``t < 2^29`` (24 + 29 bits
      fit in float64's 53) — every difference, hence every IoU and decision, is bit-for-bit that of NMS run
      on the group alone. Otherwise (sub-pixel float32 coordinates, float64 inputs) the shift rounds by at
      most ulp(t) ~ 1e-16·t, which can only flip a pair whose IoU lies that close to the threshold.
    """
    _check(boxes, scores, iou_threshold)
    if idxs.shape != scores.shape:
        raise ValueError(f"idxs must have shape ({boxes.shape[0]},), got {tuple(idxs.shape)}")
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    boxes = boxes.to(torch.float64)
    group = torch.unique(idxs, return_inverse=True)[1].to(torch.float64)  # dense ids 0..G-1
    span = torch.floor(boxes.max() - boxes.min()) + 2  # integer > max - min + 1
    return nms(boxes + (group * span)[:, None], scores, iou_threshold)
