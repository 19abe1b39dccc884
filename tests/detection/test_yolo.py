"""YOLO v1 (Redmon et al. 2016, arXiv:1506.02640): the grid tensor, the targets, Eq. 3 against a loop, inference."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from paperzoo.detection.boxes import box_iou
from paperzoo.detection.registry import create_detector, detector_names
from paperzoo.detection.yolo import PAPER_LAYERS, encode_targets, yolo_loss

pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors on a shared 2-core machine


def _target(boxes, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64)}


def _tiny(**kw):
    """ResNet-18 up to layer3 (stride 16) on 64-px inputs: a 4 x 4 map."""
    args = dict(num_classes=4, grid=2, boxes_per_cell=2, out_index=-2, image_size=64, head_channels=16)
    return create_detector("yolo_v1", **{**args, **kw})


# ------------------------------------------------------------------------------------------------ the tensor
@pytest.mark.parametrize("grid, boxes, classes, head", [(8, 2, 10, "conv"), (7, 3, 20, "conv"), (2, 2, 3, "conv"),
                                                     (7, 2, 20, "fc")])
def test_the_network_outputs_an_s_by_s_by_b5_plus_c_tensor(grid, boxes, classes, head):
    model = create_detector("yolo_v1", num_classes=classes + 1, grid=grid, boxes_per_cell=boxes, out_index=-2,
                            image_size=128, head_channels=16, head=head, fc_hidden=32).eval()
    out = model.head(model.backbone(torch.randn(2, 3, 128, 128)))
    assert out.shape == (2, grid, grid, boxes * 5 + classes)


def test_the_papers_network_has_24_convs_2_fcs_and_the_counted_parameters():
    convs = [row for row in PAPER_LAYERS if row != "M"]
    channels = [3] + [f for _, f, _ in convs]
    expected = sum(k * k * c_in * f + f for (k, f, _), c_in in zip(convs, channels))  # weights + biases
    expected += (7 * 7 * 1024 + 1) * 4096 + (4096 + 1) * (7 * 7 * 30)  # FC 4096, FC 7x7x(2*5+20)
    with torch.device("meta"):  # 1 GB of weights: count them without allocating
        model = create_detector("yolo_v1_paper")
    assert len(convs) == 24 and sum(isinstance(m, nn.Linear) for m in model.modules()) == 2
    assert sum(p.numel() for p in model.parameters()) == expected == 271_703_550
    assert model.backbone.out_channels == 1024 and model.backbone.stride == 64  # 448 px -> 7 x 7


def test_yolo_is_registered():
    assert {"yolo_v1", "yolo_v1_paper"} <= set(detector_names())


# ----------------------------------------------------------------------------------------------- the targets
def test_targets_are_the_centre_in_its_cell_and_square_roots_of_the_relative_size():
    # 64 x 64 image, S = 2 (32-px cells): box (40, 6, 60, 38) has centre (50, 22) -> row 0, column 1
    t = encode_targets([_target([[40, 6, 60, 38]], [3])], (64, 64), grid=2, num_classes=3)
    assert t.obj.tolist() == [[[False, True], [False, False]]]
    torch.testing.assert_close(t.xy[0, 0, 1], torch.tensor([(50 - 32) / 32, 22 / 32]))
    torch.testing.assert_close(t.sqrt_wh[0, 0, 1], torch.tensor([math.sqrt(20 / 64), math.sqrt(32 / 64)]))
    assert t.classes[0, 0, 1].tolist() == [0, 0, 1] and t.classes[0, 1, 0].tolist() == [0, 0, 0]


def test_two_centres_in_one_cell_keep_the_larger_box_and_an_empty_image_has_no_objects():
    small, large = [2, 2, 12, 12], [0, 0, 30, 30]  # both centres in cell (0, 0)
    for order in ([small, large], [large, small]):
        labels = [1, 2] if order[0] is small else [2, 1]
        t = encode_targets([_target(order, labels), _target([], [])], (64, 64), grid=2, num_classes=3)
        assert t.obj[0].sum() == 1 and t.classes[0, 0, 0].tolist() == [0, 1, 0]  # the large box's label
        torch.testing.assert_close(t.boxes[0, 0, 0], torch.tensor(large, dtype=torch.float32))
        assert not t.obj[1].any()


# ------------------------------------------------------------------------------------------------- Eq. 3
def _eq3_by_loops(pred, targets, size, s, b, c, l_coord=5.0, l_noobj=0.5):
    """Eq. 3 written out: every image, cell and predictor in turn (one object per cell in these cases)."""
    height, width = size
    total = 0.0
    for n, t in enumerate(targets):
        for row in range(s):
            for col in range(s):
                p = pred[n, row, col]
                obj = None
                for box, label in zip(t["boxes"].tolist(), t["labels"].tolist()):
                    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
                    if int(cx / width * s) == col and int(cy / height * s) == row:
                        obj = (box, label)
                ious = []
                for j in range(b):
                    x, y, sw, sh = p[5 * j: 5 * j + 4].tolist()
                    px, py, pw, ph = (col + x) / s * width, (row + y) / s * height, sw**2 * width, sh**2 * height
                    pbox = torch.tensor([[px - pw / 2, py - ph / 2, px + pw / 2, py + ph / 2]])
                    ious.append(float(box_iou(pbox, torch.tensor([obj[0]]))) if obj else 0.0)
                resp = max(range(b), key=lambda j: (ious[j], -j)) if obj else None  # highest IoU, first on ties
                for j in range(b):
                    x, y, sw, sh, conf = p[5 * j: 5 * j + 5].tolist()
                    if j != resp:
                        total += l_noobj * conf**2
                        continue
                    box = obj[0]
                    tx = (box[0] + box[2]) / 2 / width * s - col
                    ty = (box[1] + box[3]) / 2 / height * s - row
                    tw, th = (box[2] - box[0]) / width, (box[3] - box[1]) / height
                    total += l_coord * ((tx - x) ** 2 + (ty - y) ** 2)
                    total += l_coord * ((math.sqrt(tw) - sw) ** 2 + (math.sqrt(th) - sh) ** 2)
                    total += (ious[j] - conf) ** 2
                if obj:
                    onehot = [float(k == obj[1] - 1) for k in range(c)]
                    total += sum((q - pc) ** 2 for q, pc in zip(onehot, p[5 * b:].tolist()))
    return total / len(targets)


def _loss(pred, targets, size=(64, 64), s=2, b=2, c=3):
    grid = encode_targets(targets, size, s, c)
    return sum(yolo_loss(pred, grid, size, b).values()).item()


def test_eq3_on_hand_worked_values():
    # S=2, B=2, C=3, 64 x 64 image; one object (0, 0, 32, 32), class 2: cell (0, 0), x = y = 0.5, sqrt w = sqrt .5
    r = math.sqrt(0.5)
    pred = torch.zeros(1, 2, 2, 13)
    pred[0, 0, 0, :5] = torch.tensor([0.6, 0.5, r, r, 0.8])  # shifted 3.2 px: IoU 28.8*32 / (2048 - 921.6) = 9/11
    pred[0, 0, 0, 5:10] = torch.tensor([0.0, 0.0, 0.5, 0.5, 0.3])  # (-8, -8, 8, 8): IoU 64 / 1216, not responsible
    pred[0, 0, 0, 10:] = torch.tensor([0.1, 0.7, 0.2])
    pred[0, 1, 1, 4] = 0.2  # a confidence in an empty cell
    pred[0, 1, 1, 10:] = 1.0  # class scores in an empty cell: not penalised
    expected = (5 * 0.1**2  # lambda_coord * (x - x^)^2
                + 0.0  # sqrt w, sqrt h exact
                + (9 / 11 - 0.8) ** 2  # confidence target = IoU
                + 0.5 * (0.3**2 + 0.2**2)  # lambda_noobj on the other predictors
                + (0.1**2 + 0.3**2 + 0.2**2))  # classification error, in the object's cell only
    target = [_target([[0, 0, 32, 32]], [2])]
    assert _loss(pred, target) == pytest.approx(expected, rel=1e-6)
    assert _eq3_by_loops(pred, target, (64, 64), 2, 2, 3) == pytest.approx(expected, rel=1e-6)
    swapped = pred.clone()
    swapped[0, 0, 0, :10] = torch.cat((pred[0, 0, 0, 5:10], pred[0, 0, 0, :5]))  # the good box is now the second
    assert _loss(swapped, target) == pytest.approx(expected, rel=1e-6)  # responsibility follows IoU, not order


def test_eq3_matches_the_loop_statement_on_random_predictions():
    g = torch.Generator().manual_seed(0)
    targets = [_target([[3, 5, 29, 20], [40, 33, 62, 63], [36, 2, 50, 30]], [1, 3, 2]), _target([], []),
               _target([[10, 40, 31, 60]], [2])]
    pred = torch.rand(3, 2, 2, 13, generator=g)
    pred[..., [2, 3, 7, 8]] *= 0.8  # sqrt sizes: boxes up to 64% of the image
    assert _loss(pred, targets) == pytest.approx(_eq3_by_loops(pred, targets, (64, 64), 2, 2, 3), rel=1e-5)


# --------------------------------------------------------------------------------------- training and testing
def test_training_returns_finite_losses_and_gradients_even_for_an_image_without_boxes():
    torch.manual_seed(0)
    model = _tiny().train()
    losses = model([torch.rand(3, 64, 64), torch.rand(3, 50, 70)],
                   [_target([[5, 5, 30, 40]], [2]), _target([], [])])
    assert set(losses) == {"loss_xy", "loss_wh", "loss_obj", "loss_noobj", "loss_class"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    with pytest.raises(ValueError, match="needs targets"):
        model([torch.rand(3, 64, 64)])


class _Fixed(nn.Module):
    """A head that ignores the features and returns a given grid tensor."""

    def __init__(self, out):
        super().__init__()
        self.out = out

    def forward(self, x):
        return self.out.expand(x.shape[0], *self.out.shape[1:])


def test_eval_gives_class_specific_scores_and_boxes_in_original_coordinates():
    model = _tiny(score_thresh=0.1).eval()
    out = torch.zeros(1, 2, 2, 13)
    # cell (row 1, col 0), box 1: centre (0.25, 0.5) of the cell, w = 0.5^2, h = 0.6^2 of the image, conf 0.9
    out[0, 1, 0, 5:10] = torch.tensor([0.25, 0.5, 0.5, 0.6, 0.9])
    out[0, 1, 0, 10:] = torch.tensor([0.1, 0.8, 0.05])  # 0.9 * 0.1 = 0.09 < 0.1 is dropped; 0.9 * 0.8 kept
    model.head = _Fixed(out)
    det = model([torch.rand(3, 100, 200)])[0]  # (H, W) = (100, 200), resized to 64 x 64
    cx, cy, w, h = 0.125 * 200, 0.75 * 100, 0.25 * 200, 0.36 * 100  # in the original image's pixels
    torch.testing.assert_close(det["boxes"], torch.tensor([[cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]]))
    torch.testing.assert_close(det["scores"], torch.tensor([0.72]))
    assert det["labels"].tolist() == [2] and det["labels"].dtype == torch.int64


def test_nms_suppresses_overlaps_within_a_class_only():
    model = _tiny(score_thresh=0.05, nms_thresh=0.5).eval()
    out = torch.zeros(1, 2, 2, 13)
    out[0, 0, 0, :10] = torch.tensor([0.5, 0.5, 0.5, 0.5, 0.9, 0.55, 0.5, 0.5, 0.5, 0.6])  # two near-equal boxes
    out[0, 0, 0, 10:] = torch.tensor([1.0, 0.0, 0.5])  # class 1 and class 3
    model.head = _Fixed(out)
    det = model([torch.rand(3, 64, 64)])[0]
    # per class the better box survives (conf 0.9): 0.9 for class 1, 0.45 for class 3; the 0.6-boxes go
    torch.testing.assert_close(det["scores"], torch.tensor([0.9, 0.45]))
    assert det["labels"].tolist() == [1, 3]


def test_yolo_overfits_two_scenes_in_a_few_dozen_steps():
    from paperzoo.detection.scenes import make_scenes

    scenes = make_scenes("train", 2, seed=1)
    images = [im.float().div(255).expand(3, -1, -1) for im in scenes.images]
    targets = [{"boxes": b, "labels": lab} for b, lab in zip(scenes.boxes, scenes.labels)]
    # ResNet-18 up to layer2 (stride 8) on the scenes shrunk to 64 px: an 8 x 8 map for S = 8, ~1 s on one core
    model = create_detector("yolo_v1", num_classes=11, grid=8, out_index=-3, image_size=64, head_channels=64)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    history = []
    for _ in range(40):
        loss = sum(model(images, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    assert history[-1] < 0.05 * history[0], history[::5]


def test_cli_trains_and_evaluates_the_scenes_recipe(tmp_path, capsys):
    pytest.importorskip("pycocotools")
    from paperzoo.cli import main

    tiny = ["train.time_budget_s=null", "train.max_steps=2", "train.epochs=1", "data.n_train=4", "data.n_val=2",
            "data.batch_size=2", "data.eval_batch_size=2", "run.progress=off", "run.tensorboard=false",
            "run.plots=false", "train.threads=1", "model.args.image_size=64", "model.args.grid=4",
            "model.args.head_channels=16"]
    assert main(["detect", "train", "detect_scenes_yolo", "--set", *tiny, "--out-dir", str(tmp_path),
                 "--name", "run"]) == 0
    assert main(["detect", "eval", str(tmp_path / "run"), "--json", str(tmp_path / "m.json"),
                 "--score-thresh", "0.0"]) == 0
    assert "AP50" in capsys.readouterr().out and "AP50" in json.loads((tmp_path / "m.json").read_text())


def test_the_backbone_starts_from_a_classifiers_weights(tmp_path):
    from safetensors.torch import save_file

    from paperzoo import create_model
    from paperzoo.weights import load_backbone

    clf = create_model("resnet18", num_classes=10)
    save_file(clf.state_dict(), tmp_path / "clf.safetensors")
    model = _tiny()
    changes = load_backbone(model, tmp_path / "clf.safetensors")
    body = model.backbone.body.state_dict()
    assert all(torch.equal(v, clf.state_dict()[k]) for k, v in body.items())
    assert any(c.startswith("layer4.") for c in changes) and not any(k.startswith("layer4.") for k in body)
