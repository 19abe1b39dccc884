"""Box utilities: formats, area, IoU / GIoU, clipping, and Faster R-CNN's box coder.

* Formats: ``xyxy`` (corners, the format every function here expects), ``xywh`` (top-left corner, size) and
  ``cxcywh`` (centre, size). Conversions go through ``xyxy``.
* IoU (Jaccard index) and GIoU, *Generalized Intersection over Union* (Rezatofighi et al. 2019,
  arXiv:1902.09630, Algorithm 1), both pairwise ``(N, M)``.
* :class:`BoxCoder`: the box-regression parameterization of R-CNN (Girshick et al. 2014, arXiv:1311.2524,
  Appendix C) used by Faster R-CNN's RPN and box head (Ren et al. 2015, arXiv:1506.01497, Eq. 2).

Conventions follow torchvision, so that its checkpoints decode to the same boxes: a width is ``x2 - x1``
(no ``+ 1`` as in the original Caffe code), a centre is ``x1 + 0.5 * w``, and decoded ``dw``/``dh`` are
clamped from above at ``log(1000 / 16)`` before the exponential.

Deviations from torchvision, both on boxes it leaves undefined:
* The IoU (and GIoU) of two zero-area boxes is 0 instead of NaN (0 / 0).
* Inside IoU / GIoU, an inverted box (``x2 < x1`` or ``y2 < y1``) counts as empty (area 0), so IoU stays in
  [0, 1]. :func:`box_area` itself returns the plain signed product, as torchvision does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "BOX_FORMATS",
    "box_convert",
    "box_area",
    "box_iou",
    "generalized_box_iou",
    "clip_boxes_to_image",
    "remove_small_boxes",
    "BoxCoder",
]

BOX_FORMATS = ("xyxy", "xywh", "cxcywh")


def _to_xyxy(boxes: Tensor, fmt: str) -> Tensor:
    a, b, c, d = boxes.unbind(-1)
    if fmt == "xywh":  # (x1, y1, w, h)
        return torch.stack((a, b, a + c, b + d), dim=-1)
    if fmt == "cxcywh":  # (cx, cy, w, h)
        return torch.stack((a - 0.5 * c, b - 0.5 * d, a + 0.5 * c, b + 0.5 * d), dim=-1)
    return boxes


def _from_xyxy(boxes: Tensor, fmt: str) -> Tensor:
    x1, y1, x2, y2 = boxes.unbind(-1)
    if fmt == "xywh":
        return torch.stack((x1, y1, x2 - x1, y2 - y1), dim=-1)
    if fmt == "cxcywh":
        return torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1), dim=-1)
    return boxes


def box_convert(boxes: Tensor, in_fmt: str, out_fmt: str) -> Tensor:
    """Convert boxes ``(..., 4)`` between ``"xyxy"``, ``"xywh"`` and ``"cxcywh"``; always returns a new tensor."""
    for fmt in (in_fmt, out_fmt):
        if fmt not in BOX_FORMATS:
            raise ValueError(f"unknown box format {fmt!r}; expected one of {', '.join(BOX_FORMATS)}")
    if in_fmt == out_fmt:
        return boxes.clone()
    return _from_xyxy(_to_xyxy(boxes, in_fmt), out_fmt)


def box_area(boxes: Tensor) -> Tensor:
    """Areas ``(N,)`` of xyxy boxes ``(N, 4)``: ``(x2 - x1) * (y2 - y1)``."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _as_float(boxes: Tensor) -> Tensor:
    # Integer boxes would give integer areas and floor division; half precision overflows on areas > 65504.
    return boxes if boxes.dtype in (torch.float32, torch.float64) else boxes.float()


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    """num / den, with 0 where den == 0 (there num == 0 too); no NaN in the value or in its gradient."""
    return num / torch.where(den > 0, den, torch.ones_like(den))


def _inter_union(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    """Pairwise intersection and union areas, each ``(N, M)``; inverted boxes count as empty."""
    boxes1, boxes2 = _as_float(boxes1), _as_float(boxes2)
    area1 = (boxes1[:, 2:] - boxes1[:, :2]).clamp(min=0).prod(dim=1)  # (N,)
    area2 = (boxes2[:, 2:] - boxes2[:, :2]).clamp(min=0).prod(dim=1)  # (M,)
    top_left = torch.maximum(boxes1[:, None, :2], boxes2[None, :, :2])  # (N, M, 2)
    bottom_right = torch.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])  # (N, M, 2)
    wh = (bottom_right - top_left).clamp(min=0)  # (N, M, 2)
    inter = wh[..., 0] * wh[..., 1]  # (N, M)
    union = area1[:, None] + area2[None, :] - inter
    return inter, union


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise IoU ``(N, M)`` of xyxy boxes ``(N, 4)`` and ``(M, 4)``: ``|A ∩ B| / |A ∪ B|``, 0 when both are empty."""
    inter, union = _inter_union(boxes1, boxes2)
    return _safe_div(inter, union)


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise GIoU ``(N, M)`` in [-1, 1] (Rezatofighi et al. 2019, Algorithm 1).

    ``GIoU = IoU - |C \\ (A ∪ B)| / |C|`` with ``C`` the smallest box enclosing both. Unlike IoU it still ranks
    disjoint boxes by how far apart they are, which is what makes ``1 - GIoU`` usable as a loss. When ``C``
    has zero area (both boxes are the same point or segment) the penalty term is taken as 0.
    """
    inter, union = _inter_union(boxes1, boxes2)
    boxes1, boxes2 = _as_float(boxes1), _as_float(boxes2)
    enclose_tl = torch.minimum(boxes1[:, None, :2], boxes2[None, :, :2])  # (N, M, 2)
    enclose_br = torch.maximum(boxes1[:, None, 2:], boxes2[None, :, 2:])  # (N, M, 2)
    enclose = (enclose_br - enclose_tl).clamp(min=0).prod(dim=-1)  # (N, M)
    return _safe_div(inter, union) - _safe_div(enclose - union, enclose)


def clip_boxes_to_image(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Clamp xyxy boxes ``(..., 4)`` into an image of ``size = (height, width)``: x to [0, W], y to [0, H]."""
    height, width = size
    upper = torch.tensor([width, height, width, height], dtype=boxes.dtype, device=boxes.device)
    return torch.clamp(boxes, min=torch.zeros_like(upper), max=upper)


def remove_small_boxes(boxes: Tensor, min_size: float) -> Tensor:
    """Indices ``(K,)`` of the xyxy boxes whose width and height are both ``>= min_size``."""
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return torch.where((widths >= min_size) & (heights >= min_size))[0]


class BoxCoder:
    """R-CNN's box-regression targets (Girshick et al. 2014, Appendix C; Faster R-CNN Eq. 2).

    For a reference box ``P`` (an anchor or a proposal) and a target box ``G``, with centres ``(x, y)`` and
    sizes ``(w, h)``::

        t_x = (G_x - P_x) / P_w      t_y = (G_y - P_y) / P_h
        t_w = log(G_w / P_w)         t_h = log(G_h / P_h)

    Scale invariance in ``t_x, t_y`` and log-space sizes make one regressor serve boxes of every size. Each
    delta is then multiplied by ``weights = (wx, wy, ww, wh)``: this is Fast R-CNN's normalization of the
    targets to roughly unit variance (Girshick 2015, Sec. 2.3), written as fixed factors —
    (1, 1, 1, 1) for the RPN and (10, 10, 5, 5) for the box head (targets divided by std 0.1, 0.1, 0.2, 0.2).

    ``decode`` clamps ``t_w, t_h`` at ``bbox_xform_clip = log(1000 / 16)`` so an untrained head cannot make
    ``exp`` overflow: a box can grow at most 62.5x (a 16-pixel anchor up to 1000 pixels).
    """

    def __init__(self, weights: Sequence[float], bbox_xform_clip: float = math.log(1000.0 / 16)) -> None:
        if len(weights) != 4:
            raise ValueError(f"BoxCoder needs 4 weights (wx, wy, ww, wh), got {len(weights)}")
        self.weights = tuple(float(w) for w in weights)
        self.bbox_xform_clip = bbox_xform_clip

    @staticmethod
    def _centres_sizes(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        widths = boxes[:, 2] - boxes[:, 0]
        heights = boxes[:, 3] - boxes[:, 1]
        return boxes[:, 0] + 0.5 * widths, boxes[:, 1] + 0.5 * heights, widths, heights

    def encode(self, reference_boxes: Tensor, proposals: Tensor) -> Tensor:
        """Deltas ``(N, 4)`` = (dx, dy, dw, dh) that move ``proposals`` (N, 4) onto ``reference_boxes`` (N, 4).

        Argument names follow torchvision: ``reference_boxes`` are the matched ground-truth boxes ``G``,
        ``proposals`` the anchors or proposals ``P``; both xyxy.
        """
        wx, wy, ww, wh = self.weights
        gx, gy, gw, gh = self._centres_sizes(reference_boxes)
        px, py, pw, ph = self._centres_sizes(proposals)
        deltas = (wx * (gx - px) / pw, wy * (gy - py) / ph, ww * torch.log(gw / pw), wh * torch.log(gh / ph))
        return torch.stack(deltas, dim=1)

    def decode(self, deltas: Tensor, boxes: Tensor) -> Tensor:
        """Apply deltas ``(N, 4 * K)`` (K boxes per reference, e.g. one per class) to xyxy ``boxes`` (N, 4).

        Returns xyxy boxes ``(N, 4 * K)``, laid out like ``deltas``.
        """
        # at least float32: bf16 (8-bit mantissa, e.g. from a head under autocast) holds pixel coordinates only
        # to 4 px at 512-1024, which would move every detection; torchvision keeps the deltas' dtype here
        dtype = torch.promote_types(deltas.dtype, torch.float32)
        deltas, boxes = deltas.to(dtype), boxes.to(dtype)
        px, py, pw, ph = (v[:, None] for v in self._centres_sizes(boxes))  # each (N, 1)
        wx, wy, ww, wh = self.weights
        dx, dy = deltas[:, 0::4] / wx, deltas[:, 1::4] / wy  # (N, K)
        dw = (deltas[:, 2::4] / ww).clamp(max=self.bbox_xform_clip)
        dh = (deltas[:, 3::4] / wh).clamp(max=self.bbox_xform_clip)
        cx, cy = dx * pw + px, dy * ph + py
        w, h = torch.exp(dw) * pw, torch.exp(dh) * ph
        decoded = torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=2)  # (N, K, 4)
        return decoded.flatten(1)  # (N, 4K)
