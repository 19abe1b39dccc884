"""NMS and batched NMS against a brute-force, pure-Python greedy scan.

Boxes are float64 (or integer-valued) so the reference, which repeats box_iou's arithmetic in Python floats,
makes bit-for-bit the same IoU decisions, even for IoUs that land exactly on the threshold.
"""

from __future__ import annotations

import pytest
import torch

from paperzoo.detection import nms as nms_module
from paperzoo.detection.nms import batched_nms, nms


def _iou(a: list[float], b: list[float]) -> float:
    area_a = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1])
    area_b = max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = area_a + area_b - inter
    return inter / union if union > 0 else 0.0


def reference_nms(boxes: torch.Tensor, scores: torch.Tensor, thr: float, idxs: torch.Tensor | None = None) -> list[int]:
    """The textbook greedy scan: by decreasing score (ties: lower index), keep unless a kept box overlaps."""
    b, s = boxes.tolist(), scores.tolist()
    groups = idxs.tolist() if idxs is not None else [0] * len(b)
    kept: list[int] = []
    for i in sorted(range(len(b)), key=lambda i: (-s[i], i)):
        if all(groups[k] != groups[i] or _iou(b[k], b[i]) <= thr for k in kept):
            kept.append(i)
    return kept


def random_boxes(n: int, seed: int, integer: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """n boxes in a 100x100 image with many overlaps, a few exact duplicates, zero-area boxes and tied scores."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 80
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * 30
    if integer:
        xy, wh = xy.round(), wh.round()
    wh[torch.rand(n, generator=g) < 0.05] = 0.0  # degenerate: zero area (points)
    wh[torch.rand(n, generator=g) < 0.05, 0] = 0.0  # degenerate: zero width (segments)
    boxes = torch.cat((xy, xy + wh), dim=1)
    scores = torch.randint(0, max(n // 3, 1), (n,), generator=g).to(torch.float64)  # many ties
    if n > 1:
        dup = torch.randint(0, n, (n // 10,), generator=g)  # exact duplicates of random boxes
        boxes[dup.flip(0)] = boxes[dup]
    return boxes, scores


@pytest.mark.parametrize("n", [0, 1, 50, 500])
@pytest.mark.parametrize("thr", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nms_matches_brute_force_greedy_scan(n, thr, seed):
    boxes, scores = random_boxes(n, seed, integer=seed == 2)
    keep = nms(boxes, scores, thr)
    assert keep.dtype == torch.int64
    assert keep.tolist() == reference_nms(boxes, scores, thr)


def test_nms_matches_reference_across_block_boundaries(monkeypatch):
    # Small blocks and chunks force the cross-block test and the chunked IoU through many iterations.
    monkeypatch.setattr(nms_module, "_BLOCK", 7)
    monkeypatch.setattr(nms_module, "_CHUNK", 5)
    for seed, thr in [(0, 0.0), (1, 0.3), (2, 0.5), (3, 1.0)]:
        boxes, scores = random_boxes(120, seed, integer=seed % 2 == 0)
        assert nms(boxes, scores, thr).tolist() == reference_nms(boxes, scores, thr)


def test_nms_resolves_a_suppression_chain_like_the_sequential_scan():
    # Each box overlaps the next (IoU 1/3 each): A suppresses B, so B cannot suppress C; C suppresses D...
    # One round of "Fast NMS" would drop B, C, D, E; the greedy answer keeps A, C, E.
    boxes = torch.tensor([[float(i), 0.0, i + 2.0, 1.0] for i in range(5)])
    scores = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])
    assert nms(boxes, scores, 0.3).tolist() == [0, 2, 4]


def test_nms_equal_scores_keep_the_lower_index():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 3 + [[50.0, 50.0, 60.0, 60.0]] * 2)
    scores = torch.tensor([1.0, 2.0, 2.0, 2.0, 2.0])
    # Among equal scores the lower index comes first and survives its duplicates.
    assert nms(boxes, scores, 0.5).tolist() == [1, 3]
    assert nms(boxes, scores, 1.0).tolist() == [1, 2, 3, 4, 0]


def test_nms_threshold_is_strict_and_zero_area_boxes_are_never_suppressed():
    boxes = torch.tensor([[0, 0, 2, 1], [0, 0, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0], [5, 5, 5, 9]], dtype=torch.int64)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])
    # IoU(0, 1) is exactly 1/2: kept at threshold 0.5 (strict >), suppressed just below it.
    assert nms(boxes, scores, 0.5).tolist() == [0, 1, 2, 3, 4]
    assert nms(boxes, scores, 0.49).tolist() == [0, 2, 3, 4]
    # Zero-area duplicates (IoU defined as 0, not NaN) survive even threshold 0.
    assert nms(boxes, scores, 0.0).tolist() == [0, 2, 3, 4]


@pytest.mark.parametrize("n", [0, 1, 50, 500])
@pytest.mark.parametrize("thr", [0.0, 0.5, 1.0])
def test_batched_nms_matches_brute_force_per_class_scan(n, thr):
    boxes, scores = random_boxes(n, seed=n, integer=True)
    idxs = torch.randint(0, 4, (n,), generator=torch.Generator().manual_seed(n)) * 7 - 3  # sparse, negative ids
    assert batched_nms(boxes, scores, idxs, thr).tolist() == reference_nms(boxes, scores, thr, idxs)


def test_batched_nms_float32_boxes_match_the_per_class_float64_scan():
    boxes, scores = random_boxes(300, seed=5)
    boxes = boxes.float()
    idxs = torch.randint(0, 80, (300,), generator=torch.Generator().manual_seed(5))
    expected = reference_nms(boxes.double(), scores, 0.5, idxs)
    assert batched_nms(boxes, scores.float(), idxs, 0.5).tolist() == expected


def test_batched_nms_never_suppresses_across_classes():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 4)  # identical boxes
    scores = torch.tensor([0.1, 0.4, 0.3, 0.2])
    idxs = torch.tensor([0, 1, 0, 2])
    assert batched_nms(boxes, scores, idxs, 0.5).tolist() == [1, 2, 3]


@pytest.mark.parametrize(
    "boxes, scores, thr, match",
    [
        (torch.zeros(3, 5), torch.zeros(3), 0.5, "boxes must have shape"),
        (torch.zeros(3, 4), torch.zeros(2), 0.5, "scores must have shape"),
        (torch.zeros(3, 4), torch.zeros(3), 1.5, "iou_threshold"),
    ],
)
def test_nms_rejects_bad_input_with_a_clear_message(boxes, scores, thr, match):
    with pytest.raises(ValueError, match=match):
        nms(boxes, scores, thr)


def test_nms_inner_iou_test_makes_the_same_decisions_as_box_iou():
    from paperzoo.detection.boxes import box_iou

    a, _ = random_boxes(60, seed=7, integer=True)
    b, _ = random_boxes(90, seed=8)
    for thr in (0.0, 0.5, 1.0):
        fast = nms_module._iou_above(nms_module._columns(a), nms_module._columns(b), thr)
        assert torch.equal(fast, box_iou(a, b) > thr)
