"""Segmentation metrics: the bincount confusion matrix against a per-pixel loop, IoU / mIoU / accuracies against
hand-worked values and the stated conventions (ignore index, classes absent from both sides excluded)."""

import math

import pytest
import torch

from paperzoo.segmentation.metrics import (
    confusion_matrix,
    iou_per_class,
    mean_accuracy,
    mean_iou,
    pixel_accuracy,
    segmentation_metrics,
)


def _brute_force(pred, target, k, ignore=255):
    cm = torch.zeros(k, k, dtype=torch.int64)
    for p, t in zip(pred.flatten().tolist(), target.flatten().tolist()):
        if t != ignore:
            cm[t, p] += 1
    return cm


def _brute_iou(cm):
    out = []
    for c in range(cm.shape[0]):
        tp = int(cm[c, c])
        fp = sum(int(cm[r, c]) for r in range(cm.shape[0]) if r != c)
        fn = sum(int(cm[c, r]) for r in range(cm.shape[0]) if r != c)
        out.append(tp / (tp + fp + fn) if tp + fp + fn else math.nan)
    return out


@pytest.mark.parametrize("seed", range(6))
def test_confusion_matrix_and_ious_equal_a_per_pixel_loop_on_random_maps(seed):
    g = torch.Generator().manual_seed(seed)
    k = int(torch.randint(2, 7, (1,), generator=g))
    target = torch.randint(0, k, (2, 5, 7), generator=g)
    target[torch.rand(target.shape, generator=g) < 0.2] = 255
    pred = torch.randint(0, k, target.shape, generator=g)
    cm = confusion_matrix(pred, target, k)
    assert torch.equal(cm, _brute_force(pred, target, k))
    ious = _brute_iou(cm)
    torch.testing.assert_close(iou_per_class(cm), torch.tensor(ious, dtype=torch.float64), equal_nan=True)
    present = [v for v in ious if not math.isnan(v)]
    assert mean_iou(cm) == pytest.approx(sum(present) / len(present))
    kept = target != 255
    assert pixel_accuracy(cm) == pytest.approx(float((pred[kept] == target[kept]).float().mean()))


def test_hand_worked_values():
    # target        prediction
    # 0 0 1         0 1 1
    # 1 2 255       1 0 2     (the 255 pixel is ignored whatever is predicted)
    target = torch.tensor([[0, 0, 1], [1, 2, 255]])
    pred = torch.tensor([[0, 1, 1], [1, 0, 2]])
    cm = confusion_matrix(pred, target, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    # IoU_0 = 1 / (2 + 2 - 1) = 1/3; IoU_1 = 2 / (2 + 3 - 2) = 2/3; IoU_2 = 0 / (1 + 0 - 0) = 0
    torch.testing.assert_close(iou_per_class(cm), torch.tensor([1 / 3, 2 / 3, 0.0], dtype=torch.float64))
    assert mean_iou(cm) == pytest.approx(1 / 3)
    assert pixel_accuracy(cm) == pytest.approx(3 / 5)
    assert mean_accuracy(cm) == pytest.approx((1 / 2 + 2 / 2 + 0 / 1) / 3)


def test_a_class_absent_from_target_and_prediction_is_left_out_but_a_false_positive_class_counts():
    target = torch.tensor([0, 0, 1, 1])
    cm = confusion_matrix(torch.tensor([0, 0, 1, 1]), target, 4)  # classes 2, 3 never occur
    assert mean_iou(cm) == 1.0 and math.isnan(float(iou_per_class(cm)[3]))
    cm = confusion_matrix(torch.tensor([0, 3, 1, 1]), target, 4)  # class 3 predicted, never true: IoU 0
    assert iou_per_class(cm)[3] == 0.0
    assert mean_iou(cm) == pytest.approx((1 / 2 + 1 + 0) / 3)


def test_a_perfect_prediction_scores_one_and_the_table_names_classes():
    target = torch.randint(0, 4, (3, 8, 8))
    target[0, 0] = 255
    m = segmentation_metrics(confusion_matrix(target.clamp(max=3), target, 4), ["bg", "a", "b", "c"])
    assert m["mIoU"] == m["pixel_acc"] == m["mean_acc"] == 1.0
    assert [k for k in m if k.startswith("IoU/")] == ["IoU/bg", "IoU/a", "IoU/b", "IoU/c"]


def test_all_pixels_ignored_gives_nan_not_a_crash():
    target = torch.full((2, 2), 255)
    cm = confusion_matrix(torch.zeros(2, 2, dtype=torch.int64), target, 3)
    assert int(cm.sum()) == 0 and math.isnan(mean_iou(cm)) and math.isnan(pixel_accuracy(cm))


@pytest.mark.parametrize("pred, target, message", [
    (torch.zeros(2, 3), torch.zeros(3, 2), "differ in shape"),
    (torch.zeros(4), torch.tensor([0, 1, 7, 255]), r"target values must be in 0..2 or 255, got 0..7"),
    (torch.tensor([0, 3, 0, 0]), torch.zeros(4), r"predicted values must be in 0..2"),
])
def test_bad_inputs_are_one_line_errors(pred, target, message):
    with pytest.raises(ValueError, match=message):
        confusion_matrix(pred.long(), target.long(), 3)
