"""The box stage of Fast / Faster R-CNN: FPN level mapping, multi-scale RoIAlign, sampling, loss, postprocessing.

Every expected value is derived by hand (level of a box size, regression targets, smooth L1 terms) or by calling
the lower-level op directly on the level a box belongs to.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F

from paperzoo.detection.boxes import BoxCoder
from paperzoo.detection.roi_heads import (
    FastRCNNPredictor,
    MultiScaleRoIAlign,
    RoIHeads,
    TwoMLPHead,
    fastrcnn_loss,
    fpn_levels,
    infer_scale,
)
from paperzoo.detection.roi_ops import roi_align

pytestmark = pytest.mark.usefixtures("one_thread")


def square(x: float, y: float, side: float) -> list[float]:
    return [float(x), float(y), float(x + side), float(y + side)]


def small_heads(num_classes: int = 3, channels: int = 4, **kwargs) -> RoIHeads:
    pool = MultiScaleRoIAlign(["0"], output_size=2, sampling_ratio=2)
    return RoIHeads(pool, TwoMLPHead(channels * 4, 16), FastRCNNPredictor(16, num_classes), **kwargs)


# --- the FPN level mapper and the inferred scales ------------------------------------------------------------------


def test_fpn_levels_follow_eq1_on_hand_computed_box_sizes():
    # k = floor(4 + log2(sqrt(wh) / 224)), clamped to P2..P5.
    boxes = torch.tensor([
        square(0, 0, 224),  # log2(1) = 0 -> 4
        square(5, 5, 112),  # -1 -> 3
        square(0, 0, 448),  # +1 -> 5
        [0, 0, 448, 112],  # sqrt(448 * 112) = 224 -> 4: the area decides, not the shape
        square(0, 0, 223),  # just below 224 -> 3
        square(0, 0, 56),  # -2 -> 2
        square(0, 0, 5000),  # 4 + 4.48 -> clamped to 5
        square(0, 0, 3),  # 4 - 6.2 -> clamped to 2
        [3, 3, 3, 9],  # zero area (log2(0) = -inf) -> the finest level
    ])
    assert fpn_levels(boxes, 2, 5).tolist() == [4, 3, 5, 4, 3, 2, 5, 2, 2]


def test_fpn_levels_epsilon_keeps_a_box_a_hair_below_a_power_of_two_on_its_level():
    side = 224 * 2 ** (-4e-7)  # log2(side / 224) = -4e-7 > -1e-6: still level 4, without eps it would be 3
    assert fpn_levels(torch.tensor([square(0, 0, side), square(0, 0, 223.99)]), 2, 5).tolist() == [4, 3]


def test_infer_scale_rounds_the_size_ratio_to_a_power_of_two():
    assert infer_scale((200, 304), (800, 1216)) == 0.25
    assert infer_scale((25, 38), (800, 1216)) == 1 / 32
    # An 803 x 1201 image padded to 832 x 1216: the stride-4 map is 208 x 304, the stride-32 map 26 x 38.
    assert infer_scale((208, 304), (803, 1201)) == 0.25
    assert infer_scale((26, 38), (803, 1201)) == 1 / 32
    with pytest.raises(ValueError, match="different scales"):
        infer_scale((10, 40), (80, 80))


# --- MultiScaleRoIAlign ---------------------------------------------------------------------------------------------


def pyramid(batch: int = 2, channels: int = 3, side: int = 512) -> OrderedDict:
    """P2..P5 of a ``side``-pixel batch, plus the RPN-only "pool" level that the box head must ignore."""
    names_strides = [("0", 4), ("1", 8), ("2", 16), ("3", 32), ("pool", 64)]
    return OrderedDict((name, torch.randn(batch, channels, side // s, side // s)) for name, s in names_strides)


def test_multiscale_roi_align_pools_each_box_from_its_level_in_the_original_order():
    features = pyramid()
    # sqrt(area) 20 -> P2, 60 -> P2, 120 -> P3, 230 -> P4, 470 -> P5, mixed across two images of different sizes.
    # The third box is 470 x 235: sqrt = 332 -> 4 + log2(1.48) = 4.57 -> P4.
    image0 = torch.tensor([square(10, 10, 230), square(300, 40, 20), [5.0, 200.0, 475.0, 435.0]])
    image1 = torch.tensor([square(30, 30, 470), square(100, 100, 120), square(0, 0, 60)])
    levels = [4, 2, 4, 5, 3, 2]
    pool = MultiScaleRoIAlign(["2", "0", "3", "1"], output_size=7, sampling_ratio=2)  # any order of names
    out = pool(features, [image0, image1], [(512, 480), (500, 512)])  # the batch's largest size: 512 x 512

    assert out.shape == (6, 3, 7, 7)
    boxes = torch.cat([image0, image1])
    images = [0, 0, 0, 1, 1, 1]
    for i, (level, image) in enumerate(zip(levels, images)):
        roi = torch.cat([torch.tensor([float(image)]), boxes[i]])[None]
        expected = roi_align(features[str(level - 2)], roi, 7, 2.0 ** -level, sampling_ratio=2, aligned=False)
        torch.testing.assert_close(out[i : i + 1], expected, rtol=0, atol=0, msg=f"box {i}, level {level}")


def test_multiscale_roi_align_on_one_level_is_plain_roi_align():
    # Fast R-CNN: one stride-16 map, every box on it whatever its size.
    features = {"0": torch.randn(1, 5, 20, 30)}
    boxes = torch.tensor([square(0, 0, 300), square(40, 40, 8), [10.0, 20.0, 200.0, 90.0]])
    out = MultiScaleRoIAlign(["0"], 7, sampling_ratio=-1)(features, [boxes], [(320, 480)])
    rois = torch.cat([torch.zeros(3, 1), boxes], dim=1)
    torch.testing.assert_close(out, roi_align(features["0"], rois, 7, 1 / 16, sampling_ratio=-1), rtol=0, atol=0)


def test_multiscale_roi_align_infers_scales_from_the_batch_s_largest_height_and_width():
    # A 100 x 60 and a 60 x 100 image padded together to 100 x 100 give 25 x 25 stride-4 maps. Alone, the first
    # image's width would suggest 25 / 60 ~ 1/2.4 -> 1/2 against 1/4 along the height.
    features = {"0": torch.randn(2, 3, 25, 25)}
    boxes = [torch.tensor([square(5, 5, 40)]), torch.tensor([[10.0, 3.0, 90.0, 50.0]])]
    out = MultiScaleRoIAlign(["0"], 7, 2)(features, boxes, [(100, 60), (60, 100)])
    rois = torch.cat([torch.tensor([[0.0], [1.0]]), torch.cat(boxes)], dim=1)
    torch.testing.assert_close(out, roi_align(features["0"], rois, 7, 0.25, sampling_ratio=2), rtol=0, atol=0)


def test_multiscale_roi_align_gradient_reaches_the_features_and_empty_proposals_work():
    features = pyramid(batch=1, side=256)
    for f in features.values():
        f.requires_grad_(True)
    pool = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
    pool(features, [torch.tensor([square(10, 10, 30), square(0, 0, 250)])], [(256, 256)]).sum().backward()
    assert features["0"].grad.abs().sum() > 0 and features["2"].grad.abs().sum() > 0  # 30 -> P2, 250 -> P4
    for unused in ("1", "3", "pool"):
        assert features[unused].grad is None or features[unused].grad.abs().sum() == 0
    assert pool(features, [torch.zeros(0, 4)], [(256, 256)]).shape == (0, 3, 7, 7)


def test_multiscale_roi_align_rejects_missing_or_non_successive_levels():
    features = pyramid(batch=1, side=256)
    boxes, sizes = [torch.tensor([square(0, 0, 50)])], [(256, 256)]
    with pytest.raises(KeyError, match="not found"):
        MultiScaleRoIAlign(["0", "p9"], 7, 2)(features, boxes, sizes)
    with pytest.raises(ValueError, match="successive"):
        MultiScaleRoIAlign(["0", "2"], 7, 2)(features, boxes, sizes)


# --- box head and predictor -----------------------------------------------------------------------------------------


def test_two_mlp_head_is_fc6_relu_fc7_relu_on_the_flattened_feature():
    head = TwoMLPHead(3 * 2 * 2, 5)
    x = torch.randn(4, 3, 2, 2)
    hidden = F.relu(x.reshape(4, 12) @ head.fc6.weight.T + head.fc6.bias)
    torch.testing.assert_close(head(x), F.relu(hidden @ head.fc7.weight.T + head.fc7.bias))


def test_predictor_accepts_1x1_maps_and_rejects_larger_ones():
    predictor = FastRCNNPredictor(8, 4)
    x = torch.randn(3, 8)
    scores, deltas = predictor(x)
    assert scores.shape == (3, 4) and deltas.shape == (3, 16)
    for a, b in zip(predictor(x[:, :, None, None]), (scores, deltas)):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match=r"\(K, C, 1, 1\)"):
        predictor(torch.randn(3, 8, 2, 2))


def test_predictor_starts_from_fast_rcnn_initialisation():
    predictor = FastRCNNPredictor(1024, 91)
    assert abs(predictor.cls_score.weight.std().item() - 0.01) < 1e-3
    assert abs(predictor.bbox_pred.weight.std().item() - 0.001) < 1e-4
    assert predictor.cls_score.bias.abs().max() == 0 and predictor.bbox_pred.bias.abs().max() == 0


def test_state_dict_keys_and_parameter_counts_match_torchvision():
    with torch.device("meta"):
        head, predictor = TwoMLPHead(256 * 7 * 7, 1024), FastRCNNPredictor(1024, 91)
        heads = RoIHeads(MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2), head, predictor)
    # fc6: 12544 * 1024 + 1024; fc7: 1024 * 1024 + 1024; cls_score: 1024 * 91 + 91; bbox_pred: 1024 * 364 + 364.
    assert sum(p.numel() for p in head.parameters()) == 12_846_080 + 1_049_600 == 13_895_680
    assert sum(p.numel() for p in predictor.parameters()) == 93_275 + 373_100 == 466_375
    assert {k: tuple(v.shape) for k, v in heads.state_dict().items()} == {
        "box_head.fc6.weight": (1024, 12544), "box_head.fc6.bias": (1024,),
        "box_head.fc7.weight": (1024, 1024), "box_head.fc7.bias": (1024,),
        "box_predictor.cls_score.weight": (91, 1024), "box_predictor.cls_score.bias": (91,),
        "box_predictor.bbox_pred.weight": (364, 1024), "box_predictor.bbox_pred.bias": (364,),
    }


# --- training: sampling, targets, loss ------------------------------------------------------------------------------

GT = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 40.0, 40.0]]), "labels": torch.tensor([3, 5])}
PROPOSALS = torch.tensor(
    [
        [0.0, 0.0, 10.0, 5.0],  # IoU 0.5 with gt 0: foreground (>= 0.5), label 3
        [0.0, 0.0, 10.0, 4.9],  # IoU 0.49: background
        [21.0, 21.0, 40.0, 40.0],  # IoU 361 / 400 with gt 1: label 5
    ]
    + [square(50 + 12 * i, 50, 10) for i in range(6)]  # far from everything: background
)
# Hand-computed Eq. 2 targets times (10, 10, 5, 5):
# proposal 0: centre (5, 2.5), size 10 x 5 -> gt 0 centre (5, 5), 10 x 10: (0, 10 * 2.5 / 5, 0, 5 log 2)
# proposal 2: centre 30.5, side 19 -> gt 1 centre 30, side 20: (10 * -0.5 / 19, same, 5 log(20 / 19), same)
EXPECTED_TARGETS = {
    (0.0, 0.0, 10.0, 5.0): [0.0, 5.0, 0.0, 5 * math.log(2)],
    (21.0, 21.0, 40.0, 40.0): [-5 / 19, -5 / 19, 5 * math.log(20 / 19), 5 * math.log(20 / 19)],
    (0.0, 0.0, 10.0, 10.0): [0.0] * 4,  # the ground-truth boxes, appended as proposals, need no correction
    (20.0, 20.0, 40.0, 40.0): [0.0] * 4,
}
EXPECTED_LABELS = {box: label for box, label in zip(EXPECTED_TARGETS, [3, 5, 3, 5])}


def test_sampling_keeps_a_quarter_foreground_and_labels_each_roi_by_its_ground_truth():
    heads = small_heads(batch_size_per_image=8, positive_fraction=0.25)
    boxes, labels, targets = (x[0] for x in heads.select_training_samples([PROPOSALS], [GT]))
    # 4 foreground (2 proposals + 2 appended ground-truth boxes), 7 background; 8 sampled: 2 + 6.
    assert len(boxes) == len(labels) == len(targets) == 8
    assert (labels > 0).sum() == 2 and (labels == 0).sum() == 6
    for box, label, target in zip(boxes.tolist(), labels.tolist(), targets):
        assert label == EXPECTED_LABELS.get(tuple(box), 0), box
        if label > 0:
            torch.testing.assert_close(target, torch.tensor(EXPECTED_TARGETS[tuple(box)]))


def test_sampling_fills_with_background_and_shrinks_when_both_run_out():
    heads = small_heads(batch_size_per_image=64, positive_fraction=0.25)  # room for 16 foreground: only 4 exist
    boxes, labels, targets = (x[0] for x in heads.select_training_samples([PROPOSALS], [GT]))
    assert sorted(labels.tolist()) == [0] * 7 + [3, 3, 5, 5]
    assert boxes.shape == (11, 4) and labels.dtype == torch.int64


def test_an_image_without_objects_gives_background_rois_with_zero_targets():
    heads = small_heads(batch_size_per_image=4)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    (boxes,), (labels,), (targets,) = heads.select_training_samples([PROPOSALS], [empty])
    assert len(boxes) == 4 and labels.tolist() == [0] * 4 and targets.abs().max() == 0


def test_fastrcnn_loss_is_mean_cross_entropy_plus_class_specific_smooth_l1_over_sampled_rois():
    logits = torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.0, 0.0], [0.5, 0.5, -1.0], [3.0, 0.0, 1.0]])
    labels = torch.tensor([2, 0, 1, 0])
    deltas = torch.zeros(4, 12)
    deltas[0, 8:12] = torch.tensor([0.05, -0.5, 0.0, 2.0])  # class 2 of RoI 0 (its label)
    deltas[0, 4:8] = 9.0  # another class of RoI 0: ignored
    deltas[1] = 5.0  # a background RoI: ignored
    deltas[2, 4:8] = torch.tensor([0.1, 0.0, -0.2, 0.0])  # class 1 of RoI 2
    targets = torch.zeros(4, 4)
    targets[0] = torch.tensor([0.0, 0.0, 0.0, 1.0])
    targets[2] = torch.tensor([0.0, 0.0, 0.0, 0.05])
    loss_cls, loss_box = fastrcnn_loss(logits, deltas, labels, targets)

    def nll(row: list[float], u: int) -> float:
        return math.log(sum(math.exp(v) for v in row)) - row[u]

    expected_cls = sum(nll(row, u) for row, u in zip(logits.tolist(), labels.tolist())) / 4
    # smooth L1 with beta = 1/9: 0.5 d^2 / beta = 4.5 d^2 if |d| < 1/9, else |d| - 1/18.
    # RoI 0 differences (0.05, -0.5, 0, 1); RoI 2 differences (0.1, 0, -0.2, -0.05); divided by the 4 RoIs.
    expected_box = (4.5 * 0.05**2 + (0.5 - 1 / 18) + (1 - 1 / 18) + 4.5 * 0.1**2 + (0.2 - 1 / 18) + 4.5 * 0.05**2) / 4
    assert loss_cls.item() == pytest.approx(expected_cls, rel=1e-6)
    assert loss_box.item() == pytest.approx(expected_box, rel=1e-6)


def test_training_forward_pools_the_sampled_rois_and_applies_the_loss_to_them():
    heads = small_heads(num_classes=6, batch_size_per_image=8).train()
    features = {"0": torch.randn(2, 4, 16, 16, requires_grad=True)}
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    proposals, sizes, targets = [PROPOSALS, PROPOSALS[3:]], [(64, 64), (60, 50)], [GT, empty]

    torch.manual_seed(1)
    samples, labels, reg_targets = heads.select_training_samples(proposals, targets)
    logits, deltas = heads.box_predictor(heads.box_head(heads.box_roi_pool(features, samples, sizes)))
    expected = fastrcnn_loss(logits, deltas, torch.cat(labels), torch.cat(reg_targets))
    torch.manual_seed(1)
    detections, losses = heads(features, proposals, sizes, targets)

    assert detections == [] and set(losses) == {"loss_classifier", "loss_box_reg"}
    torch.testing.assert_close(losses["loss_classifier"], expected[0])
    torch.testing.assert_close(losses["loss_box_reg"], expected[1])
    (losses["loss_classifier"] + losses["loss_box_reg"]).backward()
    assert features["0"].grad.abs().sum() > 0 and heads.box_head.fc6.weight.grad.abs().sum() > 0


def test_training_without_ground_truth_anywhere_has_zero_box_loss():
    heads = small_heads(batch_size_per_image=4).train()
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    _, losses = heads({"0": torch.randn(1, 4, 16, 16)}, [PROPOSALS], [(64, 64)], [empty])
    assert losses["loss_box_reg"].item() == 0 and torch.isfinite(losses["loss_classifier"])


def test_training_requires_well_typed_targets():
    heads = small_heads().train()
    features, proposals, sizes = {"0": torch.randn(1, 4, 16, 16)}, [PROPOSALS], [(64, 64)]
    with pytest.raises(ValueError, match="needs targets"):
        heads(features, proposals, sizes)
    with pytest.raises(ValueError, match="int64"):
        heads(features, proposals, sizes, [{"boxes": GT["boxes"], "labels": GT["labels"].int()}])


# --- inference ------------------------------------------------------------------------------------------------------


def test_postprocess_thresholds_clips_and_suppresses_per_class():
    heads = small_heads(num_classes=3).eval()
    rows = [  # proposal, softmax probabilities (background, class 1, class 2)
        ([10, 10, 50, 50], [0.17, 0.80, 0.03]),  # A: class 1 kept; class 2 under 0.05
        ([12, 12, 52, 52], [0.37, 0.60, 0.03]),  # B: class 1 suppressed by A (IoU 0.82, same class)
        ([11, 11, 51, 51], [0.26, 0.04, 0.70]),  # C: overlaps A but class 2: kept
        ([40, 55, 70, 75], [0.50, 0.10, 0.40]),  # D: both classes kept, class 2 moved by its own deltas
        ([0, 60, 20, 80], [0.98, 0.01, 0.01]),  # E: background
        ([40, 70, 40, 90], [0.05, 0.90, 0.05]),  # G: zero width, removed before NMS
        ([70, 80, 110, 130], [0.30, 0.66, 0.04]),  # F: clipped to the 100 x 90 (H x W) image
    ]
    proposals = torch.tensor([box for box, _ in rows], dtype=torch.float32)
    logits = torch.tensor([p for _, p in rows]).log()
    deltas = torch.zeros(len(rows), 12)
    deltas[3, 8] = 1.0  # D, class 2: dx = 1 / 10 of the 30-pixel width -> 3 pixels right
    (result,) = heads.postprocess_detections(logits, deltas, [proposals], [(100, 90)])

    torch.testing.assert_close(result["boxes"], torch.tensor(
        [[10.0, 10, 50, 50], [11, 11, 51, 51], [70, 80, 90, 100], [43, 55, 73, 75], [40, 55, 70, 75]]))
    assert result["labels"].tolist() == [1, 2, 1, 2, 1] and result["labels"].dtype == torch.int64
    torch.testing.assert_close(result["scores"], torch.tensor([0.80, 0.70, 0.66, 0.40, 0.10]))


def test_postprocess_keeps_the_top_detections_per_image():
    boxes = torch.tensor([square(12 * (i % 6), 12 * (i // 6), 10) for i in range(30)])  # disjoint
    logits = torch.stack([torch.zeros(30), torch.linspace(-1, 3, 30)[torch.randperm(30)]], dim=1)
    (capped,) = small_heads(num_classes=2, detections_per_img=5).postprocess_detections(
        logits, torch.zeros(30, 8), [boxes], [(100, 100)])
    scores = logits.softmax(dim=1)[:, 1]
    top = scores.argsort(descending=True)[:5]
    torch.testing.assert_close(capped["scores"], scores[top])
    torch.testing.assert_close(capped["boxes"], boxes[top])
    (all_kept,) = small_heads(num_classes=2).postprocess_detections(logits, torch.zeros(30, 8), [boxes], [(100, 100)])
    assert len(all_kept["boxes"]) == (scores > 0.05).sum() == 30


def test_inference_forward_returns_one_result_per_image_even_without_proposals():
    heads = small_heads(num_classes=3).eval()
    features = {"0": torch.randn(2, 4, 16, 16)}
    detections, losses = heads(features, [torch.zeros(0, 4), PROPOSALS], [(64, 64), (64, 64)])
    assert losses == {} and len(detections) == 2
    assert detections[0]["boxes"].shape == (0, 4) and detections[0]["labels"].dtype == torch.int64
    assert all(set(d) == {"boxes", "scores", "labels"} for d in detections)
    # An untrained head scores every class near 1/3 > 0.05, so the second image has detections.
    assert len(detections[1]["boxes"]) > 0 and (detections[1]["labels"] > 0).all()
    assert detections[1]["scores"].diff().le(0).all()


def test_box_coder_weights_reach_the_decoder():
    # The same deltas decoded with (10, 10, 5, 5) move a box a tenth as far as with unit weights.
    heads = small_heads(num_classes=2, bbox_reg_weights=(10.0, 10.0, 5.0, 5.0))
    assert heads.box_coder.weights == BoxCoder((10, 10, 5, 5)).weights
    deltas = torch.tensor([[0.0, 0, 0, 0, 1.0, 0, 0, 0]])
    (out,) = heads.postprocess_detections(torch.tensor([[0.0, 5.0]]), deltas, [torch.tensor([square(0, 0, 20)])],
                                          [(100, 100)])
    torch.testing.assert_close(out["boxes"], torch.tensor([[2.0, 0, 22, 20]]))
