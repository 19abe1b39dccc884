"""Box formats, IoU / GIoU and the Faster R-CNN box coder, against hand-computed values and direct formulas."""

from __future__ import annotations

import math

import pytest
import torch

from paperzoo.detection.boxes import (
    BOX_FORMATS,
    BoxCoder,
    box_area,
    box_convert,
    box_iou,
    clip_boxes_to_image,
    generalized_box_iou,
    remove_small_boxes,
)

XYXY = torch.tensor([[1.0, 2.0, 5.0, 8.0], [0.0, 0.0, 0.0, 0.0]])
AS = {  # the same boxes in each format
    "xyxy": XYXY,
    "xywh": torch.tensor([[1.0, 2.0, 4.0, 6.0], [0.0, 0.0, 0.0, 0.0]]),
    "cxcywh": torch.tensor([[3.0, 5.0, 4.0, 6.0], [0.0, 0.0, 0.0, 0.0]]),
}


def random_boxes(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 50
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * 30
    wh[: n // 5] = 0.0  # some degenerate boxes
    return torch.cat((xy, xy + wh), dim=1)


def _corners(b):
    return [float(v) for v in b]


def direct_iou_giou(a, b) -> tuple[float, float]:
    """IoU and GIoU of two boxes, Algorithm 1 of Rezatofighi et al. 2019, one pair at a time."""
    a, b = _corners(a), _corners(b)
    area = lambda r: max(0.0, r[2] - r[0]) * max(0.0, r[3] - r[1])  # noqa: E731
    inter = area([max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])])
    union = area(a) + area(b) - inter
    hull = area([min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])])
    iou = inter / union if union > 0 else 0.0
    return iou, iou - ((hull - union) / hull if hull > 0 else 0.0)


@pytest.mark.parametrize("in_fmt", BOX_FORMATS)
@pytest.mark.parametrize("out_fmt", BOX_FORMATS)
def test_box_convert_gives_the_hand_computed_boxes(in_fmt, out_fmt):
    torch.testing.assert_close(box_convert(AS[in_fmt], in_fmt, out_fmt), AS[out_fmt])


def test_box_convert_keeps_leading_dimensions_and_returns_a_new_tensor():
    boxes = torch.rand(2, 3, 4)
    same = box_convert(boxes, "xyxy", "xyxy")
    assert same.data_ptr() != boxes.data_ptr()
    torch.testing.assert_close(box_convert(box_convert(boxes, "xyxy", "cxcywh"), "cxcywh", "xyxy"), boxes)


def test_box_convert_rejects_an_unknown_format():
    with pytest.raises(ValueError, match="unknown box format 'yxyx'"):
        box_convert(XYXY, "yxyx", "xyxy")


def test_box_area_is_width_times_height_without_plus_one():
    assert box_area(XYXY).tolist() == [24.0, 0.0]


def test_box_iou_hand_computed_values():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0], [5.0, 5.0, 6.0, 6.0], [0.0, 0.0, 1.0, 2.0]])
    torch.testing.assert_close(box_iou(a, b), torch.tensor([[1 / 7, 1.0, 0.0, 0.5]]))


def test_box_iou_and_giou_match_the_direct_formula_pair_by_pair():
    a, b = random_boxes(20, 0), random_boxes(30, 1)
    expected = [[direct_iou_giou(x, y) for y in b] for x in a]
    iou, giou = box_iou(a, b), generalized_box_iou(a, b)
    assert iou.shape == giou.shape == (20, 30)
    torch.testing.assert_close(iou, torch.tensor([[e[0] for e in row] for row in expected], dtype=torch.float64))
    torch.testing.assert_close(giou, torch.tensor([[e[1] for e in row] for row in expected], dtype=torch.float64))


def test_iou_of_zero_area_boxes_is_zero_with_finite_gradients():
    point = torch.tensor([[3.0, 3.0, 3.0, 3.0]], requires_grad=True)
    others = torch.tensor([[3.0, 3.0, 3.0, 3.0], [0.0, 0.0, 5.0, 5.0], [3.0, 1.0, 3.0, 5.0]])
    iou, giou = box_iou(point, others), generalized_box_iou(point, others)
    assert iou.tolist() == [[0.0, 0.0, 0.0]]
    assert giou[0, 0].item() == 0.0 and not torch.isnan(giou).any()
    (iou.sum() + giou.sum()).backward()
    assert torch.isfinite(point.grad).all()


def test_giou_penalizes_distance_between_disjoint_boxes():
    a = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    b = torch.tensor([[2.0, 0.0, 3.0, 1.0], [9.0, 0.0, 10.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
    giou = generalized_box_iou(a, b)
    # Hull 3x1, union 2 -> -1/3; hull 10x1, union 2 -> -0.8; identical boxes -> 1.
    torch.testing.assert_close(giou, torch.tensor([[-1 / 3, -0.8, 1.0]]))
    nested = torch.tensor([[0.0, 0.0, 4.0, 4.0]])
    torch.testing.assert_close(generalized_box_iou(a, nested), box_iou(a, nested))  # hull == union


def test_iou_of_integer_boxes_is_a_float_and_empty_sets_give_empty_matrices():
    ints = torch.tensor([[0, 0, 2, 2], [1, 1, 3, 3]])
    assert box_iou(ints, ints)[0, 1].item() == pytest.approx(1 / 7)
    assert box_iou(torch.zeros(0, 4), ints).shape == (0, 2)
    assert generalized_box_iou(ints, torch.zeros(0, 4)).shape == (2, 0)


def test_clip_boxes_to_image_clamps_x_to_width_and_y_to_height():
    boxes = torch.tensor([[[-5.0, -1.0, 120.0, 40.0]], [[10.0, 20.0, 30.0, 90.0]]])  # (2, 1, 4)
    clipped = clip_boxes_to_image(boxes, (50, 100))  # height 50, width 100
    assert clipped.tolist() == [[[0.0, 0.0, 100.0, 40.0]], [[10.0, 20.0, 30.0, 50.0]]]
    assert clip_boxes_to_image(torch.tensor([[-3, 4, 200, 9]]), (5, 100)).tolist() == [[0, 4, 100, 5]]


def test_remove_small_boxes_keeps_sides_equal_to_min_size():
    boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.9, 5.0], [1.0, 1.0, 6.0, 3.0], [0.0, 0.0, 5.0, 1.0]])
    assert remove_small_boxes(boxes, 2.0).tolist() == [0, 2]


# --- BoxCoder (Faster R-CNN Eq. 2) -------------------------------------------------------------------

ANCHOR = torch.tensor([[0.0, 0.0, 10.0, 20.0]])  # centre (5, 10), size 10 x 20
TARGET = torch.tensor([[2.0, 4.0, 12.0, 14.0]])  # centre (7, 9), size 10 x 10


@pytest.mark.parametrize(
    "weights, expected",
    [
        ((1.0, 1.0, 1.0, 1.0), [2 / 10, -1 / 20, 0.0, math.log(0.5)]),  # RPN
        ((10.0, 10.0, 5.0, 5.0), [2.0, -0.5, 0.0, 5 * math.log(0.5)]),  # box head
    ],
)
def test_box_coder_encodes_eq2_with_per_stage_weights(weights, expected):
    coder = BoxCoder(weights)
    torch.testing.assert_close(coder.encode(TARGET, ANCHOR), torch.tensor([expected]))
    torch.testing.assert_close(coder.decode(torch.tensor([expected]), ANCHOR), TARGET)


def test_box_coder_decode_inverts_encode_for_every_class_slot():
    g = torch.Generator().manual_seed(0)
    anchors, targets = random_boxes(40, 2)[8:], random_boxes(40, 3)[8:]  # non-degenerate rows
    anchors[:, 2:] += 1.0  # sizes within a factor 62.5 of each other, so the clamp stays inactive
    targets[:, 2:] += 1.0
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    deltas = coder.encode(targets, anchors)
    torch.testing.assert_close(coder.decode(deltas, anchors), targets)
    # (N, 4K) deltas decode slot by slot, laid out like the deltas.
    many = torch.randn(32, 3 * 4, generator=g, dtype=torch.float64)
    decoded = coder.decode(many, anchors)
    assert decoded.shape == (32, 12)
    torch.testing.assert_close(decoded[:, 4:8], coder.decode(many[:, 4:8], anchors))


def test_box_coder_clamps_dw_dh_at_log_1000_over_16_before_exp():
    coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
    huge = torch.tensor([[0.0, 0.0, 50.0, -50.0]])
    box = coder.decode(huge, ANCHOR)[0]
    assert torch.isfinite(box).all()
    assert (box[2] - box[0]).item() == pytest.approx(10 * 1000 / 16)  # width capped at 62.5x
    assert (box[3] - box[1]).item() == pytest.approx(20 * math.exp(-50))  # no lower clamp, as torchvision


def test_box_coder_needs_four_weights():
    with pytest.raises(ValueError, match="4 weights"):
        BoxCoder((1.0, 1.0))


def test_decode_of_bf16_deltas_keeps_float32_coordinates():
    from paperzoo.detection.boxes import BoxCoder

    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    boxes = torch.tensor([[601.0, 700.0, 650.0, 757.0]])  # bf16 would round these to multiples of 4
    out = coder.decode(torch.zeros(1, 4, dtype=torch.bfloat16), boxes)
    assert out.dtype == torch.float32 and torch.equal(out, boxes)
