"""COCO metrics through pycocotools: perfect, shifted and hand-computed cases, crowds, empty predictions."""

import pytest
import torch

pytest.importorskip("pycocotools")

from paperzoo.detection.boxes import box_iou  # noqa: E402
from paperzoo.detection.coco_eval import STAT_NAMES, coco_from_dict, evaluate_coco, format_coco_table  # noqa: E402


def _gt(boxes: dict[int, list[list[float]]], cats: dict[int, list[int]] | None = None,
        crowd: dict[int, list[int]] | None = None, cat_ids: tuple[int, ...] = (1,)):
    """A 200x200-image ground truth from xyxy boxes per image id (category 1 unless ``cats`` says otherwise)."""
    images = [{"id": i, "file_name": f"{i}.png", "width": 200, "height": 200} for i in boxes]
    annotations = []
    for i, bs in boxes.items():
        for k, (x1, y1, x2, y2) in enumerate(bs):
            annotations.append({
                "id": len(annotations) + 1, "image_id": i, "category_id": cats[i][k] if cats else 1,
                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                "iscrowd": int(crowd is not None and k in crowd.get(i, [])),
            })
    return coco_from_dict({"images": images, "annotations": annotations,
                           "categories": [{"id": c, "name": str(c)} for c in cat_ids]})


def _pred(boxes: list[list[float]], scores: list[float], labels: list[int] | None = None) -> dict:
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "scores": torch.tensor(scores),
            "labels": torch.tensor(labels if labels is not None else [1] * len(scores))}


# small (< 32²), medium and large (> 96²) boxes, two categories
BOXES = {1: [[10, 10, 30, 25], [50, 40, 110, 100]], 2: [[0, 0, 150, 120]], 3: [[5, 5, 9, 9], [100, 100, 160, 190]]}
CATS = {1: [3, 7], 2: [7], 3: [3, 3]}


def test_perfect_predictions_score_one_for_every_metric():
    gt = _gt(BOXES, CATS, cat_ids=(3, 7))
    label_to_cat = {1: 3, 2: 7}
    preds = {i: _pred(bs, torch.rand(len(bs)).tolist(), [1 if c == 3 else 2 for c in CATS[i]])
             for i, bs in BOXES.items()}
    stats = evaluate_coco(gt, preds, label_to_cat)
    assert list(stats) == list(STAT_NAMES)
    assert all(v == pytest.approx(1.0) for k, v in stats.items() if k not in ("AR_1",)), stats
    # AR_1 keeps one detection per image and category: category 3 finds 2 of its 3 objects (image 3 has two),
    # category 7 both of its 2; AR averages the categories.
    assert stats["AR_1"] == pytest.approx((2 / 3 + 2 / 2) / 2)


def test_labels_are_mapped_to_category_ids():
    gt = _gt(BOXES, CATS, cat_ids=(3, 7))
    preds = {i: _pred(bs, [0.9] * len(bs), [1 if c == 3 else 2 for c in CATS[i]]) for i, bs in BOXES.items()}
    assert evaluate_coco(gt, preds, {1: 3, 2: 7})["AP"] == pytest.approx(1.0)
    assert evaluate_coco(gt, preds)["AP"] == 0.0  # labels 1, 2 taken as category ids: no such category
    with pytest.raises(ValueError, match="predicted label 2 has no category"):
        evaluate_coco(gt, preds, {1: 3})


def test_shift_to_iou_two_thirds_passes_ap50_and_fails_ap75():
    gt_box, shifted = [40, 40, 100, 100], [50, 40, 110, 100]  # overlap 50x60 = 3000, union 4200: IoU 5/7
    assert box_iou(torch.tensor([gt_box]).float(), torch.tensor([shifted]).float()).item() == pytest.approx(5 / 7)
    stats = evaluate_coco(_gt({1: [gt_box]}), {1: _pred([shifted], [0.8])})
    assert stats["AP50"] == pytest.approx(1.0) and stats["AP75"] == 0.0
    assert stats["AP"] == pytest.approx(5 / 10)  # a hit at IoU thresholds 0.50, 0.55, 0.60, 0.65, 0.70 of ten


@pytest.mark.parametrize(("order", "expected"), [
    # TP, FP, TP: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1. Interpolated: 1 for r in {0, .01, ..., .50}
    # (51 points), then 2/3 for r in {.51, ..., 1} (50 points).
    (("tp", "fp", "tp"), (51 * 1 + 50 * 2 / 3) / 101),
    # FP, TP, TP: precision 0, 1/2, 2/3; the best precision at recall >= r is 2/3 for every r.
    (("fp", "tp", "tp"), 2 / 3),
    # TP, TP, FP: recall reaches 1 at precision 1; the FP after it costs nothing.
    (("tp", "tp", "fp"), 1.0),
])
def test_false_positive_rank_matches_the_hand_computed_101_point_ap(order, expected):
    gts = [[10, 10, 60, 60], [100, 100, 150, 150]]
    fp = [150, 10, 190, 50]  # overlaps nothing
    it = iter(gts)
    boxes = [fp if kind == "fp" else next(it) for kind in order]
    stats = evaluate_coco(_gt({1: gts}), {1: _pred(boxes, [0.9, 0.8, 0.7])})
    assert stats["AP"] == pytest.approx(expected, abs=1e-9)
    assert stats["AP50"] == pytest.approx(expected, abs=1e-9)


def test_crowd_ground_truth_is_neither_missed_nor_a_false_positive():
    boxes = {1: [[10, 10, 60, 60], [100, 100, 180, 180]]}
    found_one = {1: _pred([[10, 10, 60, 60]], [0.8])}
    assert evaluate_coco(_gt(boxes, crowd={1: [1]}), found_one)["AP"] == pytest.approx(1.0)  # no miss
    assert evaluate_coco(_gt(boxes), found_one)["AP"] < 0.6  # the same box as a normal object is missed
    # two detections on the crowd region, ranked first: both ignored (a crowd absorbs any number of them)
    two_on_crowd = {1: _pred([[100, 100, 180, 180], [102, 100, 180, 180], [10, 10, 60, 60]], [0.95, 0.9, 0.8])}
    assert evaluate_coco(_gt(boxes, crowd={1: [1]}), two_on_crowd)["AP"] == pytest.approx(1.0)
    assert evaluate_coco(_gt(boxes), two_on_crowd)["AP"] < 0.9  # as a normal object, the second one is an FP


def test_no_predictions_give_zero_not_an_error():
    gt = _gt(BOXES, CATS, cat_ids=(3, 7))
    for preds in ({}, {1: _pred([], [])}):
        stats = evaluate_coco(gt, preds, {1: 3, 2: 7})
        assert all(v == 0.0 for v in stats.values()), stats


def test_a_size_without_ground_truth_is_minus_one_and_prints_na():
    stats = evaluate_coco(_gt({1: [[0, 0, 50, 50]]}), {1: _pred([[0, 0, 50, 50]], [1.0])})
    assert stats["AP_medium"] == pytest.approx(1.0)
    assert stats["AP_small"] == -1.0 and stats["AP_large"] == -1.0
    table = format_coco_table(stats)
    assert table.splitlines()[0] == "| metric | value | over |"
    assert "| AP_medium | 1.000 |" in table and "| AP_small | n/a |" in table
    assert len(table.splitlines()) == 2 + len(STAT_NAMES)


def test_bad_calls_are_refused_with_a_clear_error():
    gt = _gt({1: [[0, 0, 50, 50]]})
    with pytest.raises(ValueError, match="image ids not in the ground truth: \\[7\\]"):
        evaluate_coco(gt, {7: _pred([[0, 0, 5, 5]], [1.0])})
    with pytest.raises(ValueError, match="iou_type must be one of \\['bbox'\\]"):
        evaluate_coco(gt, {}, iou_type="segm")
    with pytest.raises(ValueError, match="image 1: 1 boxes, 2 scores, 1 labels"):
        evaluate_coco(gt, {1: {"boxes": [[0, 0, 5, 5]], "scores": [0.5, 0.4], "labels": [1]}})
