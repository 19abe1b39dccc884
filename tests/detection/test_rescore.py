"""R-CNN-style rescoring: crops against a per-box reference, the score combination on hand-worked numbers, top-k
emission with class-aware NMS, an end-to-end run on tiny scenes, and the CLI's one-line errors."""

from __future__ import annotations

import math
from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F

from paperzoo.cli import main
from paperzoo.data.datasets import FASHION_MNIST_CLASSES
from paperzoo.detection.rescore import (
    Rescorer,
    combine_scores,
    crop_regions,
    emit_topk,
    load_rescorer,
    rescore_predictions,
    scene_crops,
)
from paperzoo.detection.scenes import make_scenes
from paperzoo.detection.task import DetectionDataConfig, build_dataset, evaluate_run, load_detector
from paperzoo.registry import create_model
from paperzoo.train.checkpoint import save_checkpoint

pytest.importorskip("pycocotools")


def _reference_crop(image, box, size, context, square):
    """One box by hand: square it, grow it by ``context`` pixels at ``size``, then average ``G x G`` bilinear
    samples per output pixel read with grid_sample (zeros outside the image), ``G = ceil(box side / size)``."""
    x1, y1, x2, y2 = box.tolist()
    if square:
        cx, cy, half = (x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, y2 - y1) / 2
        x1, y1, x2, y2 = cx - half, cy - half, cx + half, cy + half
    grow = context / (size - 2 * context)
    w, h = x2 - x1, y2 - y1
    x1, y1, x2, y2 = x1 - grow * w, y1 - grow * h, x2 + grow * w, y2 + grow * h
    gy, gx = math.ceil((y2 - y1) / size), math.ceil((x2 - x1) / size)
    ys = y1 + (torch.arange(size * gy) + 0.5) * (y2 - y1) / (size * gy)  # sample points, pixel-edge coordinates
    xs = x1 + (torch.arange(size * gx) + 0.5) * (x2 - x1) / (size * gx)
    H, W = image.shape[-2:]
    grid = torch.stack(torch.meshgrid(2 * xs / W - 1, 2 * ys / H - 1, indexing="xy"), dim=-1)  # (Sy, Sx, 2)
    samples = F.grid_sample(image[None].double(), grid[None].double(), mode="bilinear", padding_mode="zeros",
                            align_corners=False)[0]  # (C, size * gy, size * gx)
    return F.avg_pool2d(samples, (gy, gx)).float()  # the mean over each bin's G x G samples


@pytest.mark.parametrize("square", [True, False])
@pytest.mark.parametrize("context", [0, 2])
def test_crops_equal_a_per_box_crop_and_resize_reference(square, context):
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 40, 50, generator=g), torch.rand(3, 64, 30, generator=g)]  # different sizes
    boxes = [torch.tensor([[5.0, 6.0, 19.0, 30.0], [20.3, 1.7, 48.9, 39.5], [40.0, 30.0, 58.0, 44.0]]),  # crosses
             torch.tensor([[2.0, 3.0, 27.0, 60.0], [10.5, 40.25, 17.0, 47.0]])]
    crops = crop_regions(images, boxes, (16, 16), context_padding=context, square=square)
    assert crops.shape == (5, 3, 16, 16)
    ref = torch.stack([_reference_crop(im, b, 16, context, square) for im, bs in zip(images, boxes) for b in bs])
    torch.testing.assert_close(crops, ref, atol=1e-5, rtol=0)


def test_square_crop_of_an_integer_box_twice_the_output_is_its_2x2_average():
    image = torch.rand(1, 80, 80, generator=torch.Generator().manual_seed(1))
    crop = crop_regions([image], [torch.tensor([[10.0, 20.0, 66.0, 40.0]])], (28, 28))  # 56 wide, 20 high
    # the square about the centre (38, 30) with side 56: rows 2..58, columns 10..66
    torch.testing.assert_close(crop[0], F.avg_pool2d(image[:, 2:58, 10:66], 2), atol=1e-6, rtol=0)


def test_blanking_outside_the_box_weights_each_row_by_its_fraction_inside():
    image = torch.rand(1, 80, 80, generator=torch.Generator().manual_seed(2))
    box = [torch.tensor([[10.0, 21.0, 66.0, 40.0]])]  # square: y in [2.5, 58.5], 2 source pixels per row
    kept = crop_regions([image], box, (28, 28), blank_outside=True)
    full = crop_regions([image], box, (28, 28))
    # row j spans [2.5 + 2j, 4.5 + 2j]: rows 10-17 lie inside [21, 40], rows 9 and 18 three quarters, others not
    rows = torch.zeros(28)
    rows[10:18], rows[9], rows[18] = 1.0, 0.75, 0.75
    torch.testing.assert_close(kept, full * rows[:, None], atol=1e-6, rtol=0)


def test_score_combination_on_hand_worked_numbers():
    det = torch.tensor([[0.2, 0.6, 0.2]])  # background, a, b
    cls = torch.tensor([[0.25, 0.75]])
    # w = 1: objectness (1 - 0.2 = 0.8) x classifier
    torch.testing.assert_close(combine_scores(det, cls, 1.0, "sum"), torch.tensor([[0.2, 0.6]]))
    # w = 1/2: sqrt(0.75 * 0.25) for both classes -> (0.5, 0.5); objectness max = 0.6
    torch.testing.assert_close(combine_scores(det, cls, 0.5, "sum"), torch.tensor([[0.4, 0.4]]))
    torch.testing.assert_close(combine_scores(det, cls, 0.5, "max"), torch.tensor([[0.3, 0.3]]))
    # w = 0: the detector's own foreground probabilities
    torch.testing.assert_close(combine_scores(det, cls, 0.0, "sum"), torch.tensor([[0.6, 0.2]]))
    with pytest.raises(ValueError, match="weight"):
        combine_scores(det, cls, 1.5)


def test_topk_emission_then_class_aware_nms():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 9.0], [50.0, 50.0, 60.0, 60.0]])  # A, B, C
    scores = torch.tensor([[0.6, 0.3, 0.1], [0.5, 0.4, 0.1], [0.2, 0.7, 0.1]])  # IoU(A, B) = 0.9
    out = emit_topk(boxes, scores, k=2, nms_thresh=0.5)
    # class 1: A (0.6) suppresses B (0.5), C (0.2) is far; class 2: C (0.7), B (0.4) suppresses A (0.3)
    torch.testing.assert_close(out["scores"], torch.tensor([0.7, 0.6, 0.4, 0.2]))
    assert out["labels"].tolist() == [2, 1, 2, 1]
    assert torch.equal(out["boxes"], boxes[[2, 0, 1, 2]])
    one = emit_topk(boxes, scores, k=1, nms_thresh=0.5)
    assert one["labels"].tolist() == [2, 1] and torch.equal(one["boxes"], boxes[[2, 0]])
    assert len(emit_topk(boxes, scores, k=3, nms_thresh=0.5, detections_per_img=3)["scores"]) == 3


# ---------------------------------------------------------------------------------------------- end to end
DATA = {"n_val": 3, "canvas": 64, "eval_batch_size": 2}


def _classifier_run(path, classes=FASHION_MNIST_CLASSES, in_chans=1):
    args = {"num_classes": len(classes), "in_chans": in_chans, "small_input": True, "width": 8}
    model = create_model("resnet18", **args)
    meta = {"task": "image_classification", "model": {"name": "resnet18", "args": args}, "classes": list(classes),
            "normalization": {"mean": [0.286] * in_chans, "std": [0.353] * in_chans},
            "input_size": [in_chans, 28, 28]}
    save_checkpoint(path / "final", model.state_dict(), meta)
    return path


def _detector_run(path):
    from paperzoo.detection.registry import create_detector

    args = {"num_classes": 11, "min_size": 64, "max_size": 64, "representation_size": 32,
            "rpn_pre_nms_top_n_test": 50, "rpn_post_nms_top_n_test": 20, "box_detections_per_img": 20}
    torch.manual_seed(0)
    model = create_detector("fasterrcnn_resnet18_fpn", **args)
    meta = {"task": "detection", "model": {"name": "fasterrcnn_resnet18_fpn", "args": args},
            "categories": ["__background__", *FASHION_MNIST_CLASSES], "cat_ids": list(range(1, 11)),
            "data": asdict(DetectionDataConfig(**DATA))}
    save_checkpoint(path / "final", model.state_dict(), meta)
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("rescore")
    torch.set_num_threads(1)
    return _detector_run(root / "det"), _classifier_run(root / "cls")


def test_rescoring_a_detector_gives_valid_coco_detections(runs):
    det_run, cls_run = runs
    ck = load_detector(det_run)
    rescorer = load_rescorer(cls_run, ck.categories, topk=2)
    val = build_dataset(DetectionDataConfig(**DATA), "val")
    preds = rescore_predictions(ck.model, rescorer, val, range(len(val)), batch_size=2)
    assert sorted(preds) == [1, 2, 3]
    n = 0
    for p in preds.values():
        boxes, scores, labels = p["boxes"], p["scores"], p["labels"]
        assert boxes.shape == (len(scores), 4) and labels.dtype == torch.int64
        assert ((labels >= 1) & (labels <= 10)).all() and ((scores >= 0) & (scores <= 1)).all()
        assert (scores[:-1] >= scores[1:]).all() and (boxes[:, 2:] >= boxes[:, :2]).all()
        n += len(scores)
    assert n > 0  # an untrained head's near-uniform softmax (~1/11) passes the 0.05 floor: boxes to rescore
    stats = evaluate_run(det_run, rescore=cls_run, rescore_args={"topk": 2})
    assert 0.0 <= stats["AP50"] <= 1.0 and set(stats) >= {"AP", "AP50", "AP75"}


def test_cli_predict_with_rescore_writes_rescored_detections(runs, tmp_path, capsys):
    import json

    from PIL import Image

    det_run, cls_run = runs
    image = build_dataset(DetectionDataConfig(**DATA), "val")[0][0]
    Image.fromarray((image[0] * 255).byte().numpy()).save(tmp_path / "scene.png")
    assert main(["detect", "predict", str(det_run), str(tmp_path / "scene.png"), "-o", str(tmp_path / "out"),
                 "--score-thresh", "0", "--rescore", str(cls_run), "--rescore-topk", "2"]) == 0
    found = json.loads((tmp_path / "out" / "detections.json").read_text())[str(tmp_path / "scene.png")]
    assert found and all(d["category"] in FASHION_MNIST_CLASSES for d in found)


def test_cli_rescore_errors_are_one_line(runs, tmp_path, capsys):
    det_run, _ = runs
    assert main(["detect", "eval", str(det_run), "--rescore", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert "no classifier run" in err and len(err.splitlines()) == 1
    cifar = _classifier_run(tmp_path / "cifar", classes=[f"c{i}" for i in range(10)], in_chans=3)
    assert main(["detect", "eval", str(det_run), "--rescore", str(cifar)]) == 2
    err = capsys.readouterr().err.strip()
    assert "has no class 'T-shirt/top'" in err and len(err.splitlines()) == 1
    two = _classifier_run(tmp_path / "two", in_chans=2)
    assert main(["detect", "eval", str(det_run), "--rescore", str(two)]) == 2
    assert "2-channel inputs" in capsys.readouterr().err
    assert main(["detect", "eval", str(det_run), "--rescore-topk", "2"]) == 2
    assert "needs --rescore" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- fine-tuning on regions
def test_scene_crops_are_the_rescorers_crops_of_the_ground_truth_boxes_with_their_classes(monkeypatch):
    import paperzoo.detection.rescore as R

    monkeypatch.setitem(R.SCENE_CROPS, "test", (4, 101, 0.0, 1))
    ds = scene_crops("test")
    scenes = make_scenes("test", 4, seed=101)
    boxes, labels = scenes.boxes, torch.cat(scenes.labels) - 1  # COCO ids 1..10 -> classes 0..9
    ref = crop_regions([im.float() / 255 for im in scenes.images], boxes, (28, 28), context_padding=1, square=True,
                       blank_outside=True)
    assert ds.images.shape == (sum(len(b) for b in boxes), 1, 28, 28) and ds.images.dtype == torch.uint8
    assert (ds.images.float() - ref * 255).abs().max() <= 0.5  # only the uint8 rounding
    assert torch.equal(ds.labels, labels) and ds.classes == list(FASHION_MNIST_CLASSES)
    assert ds.name == "scene_crops" and ds.mean == (0.2860,)  # Fashion-MNIST's: the fine-tuned model's inputs


def test_training_scene_crops_jitter_each_copy_of_a_box_independently(monkeypatch):
    import paperzoo.detection.rescore as R

    monkeypatch.setitem(R.SCENE_CROPS, "train", (3, 100, 0.0, 2))
    exact = scene_crops("train")
    monkeypatch.setitem(R.SCENE_CROPS, "train", (3, 100, 0.05, 2))  # the same scenes and copies, jittered
    moved = scene_crops("train")
    assert len(moved) == len(exact) and torch.equal(moved.labels, exact.labels)
    start = 0
    for boxes in make_scenes("train", 3, seed=100).boxes:  # per scene: its k boxes, then their second copies
        k = len(boxes)
        first, second = slice(start, start + k), slice(start + k, start + 2 * k)
        assert torch.equal(exact.images[first], exact.images[second])
        assert not torch.equal(moved.images[first], moved.images[second])  # two different draws of every box
        assert not torch.equal(moved.images[first], exact.images[first])
        start += 2 * k
    assert start == len(moved)


def test_flip_averages_the_posteriors_of_the_crop_and_its_mirror():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))  # not mirror-symmetric
    kw = dict(mean=torch.zeros(1, 1, 1), std=torch.ones(1, 1, 1), input_size=(1, 4, 4), class_index=torch.arange(3))
    image, box = [torch.rand(1, 8, 8)], [torch.tensor([[2.0, 2.0, 6.0, 6.0]])]
    x = crop_regions(image, box, (4, 4), context_padding=1, square=True, blank_outside=True)
    both = (net(x).softmax(1) + net(x.flip(-1)).softmax(1)) / 2
    torch.testing.assert_close(Rescorer(net, **kw).classify(image, box), both)
    torch.testing.assert_close(Rescorer(net, flip=False, **kw).classify(image, box), net(x).softmax(1))


def test_training_on_scene_crops_fine_tunes_a_classifier_run(runs, monkeypatch, tmp_path):
    import paperzoo
    import paperzoo.detection.rescore as R

    monkeypatch.setitem(R.SCENE_CROPS, "train", (6, 100, 0.05, 2))
    monkeypatch.setitem(R.SCENE_CROPS, "test", (3, 101, 0.0, 1))
    _, cls_run = runs
    result = paperzoo.train("detect_scenes_rescorer", overrides=[
        f"model.pretrained={cls_run}", "model.args.width=8", "train.epochs=1", "data.batch_size=8",
        "train.precision=fp32", f"run.out_dir={tmp_path}", "run.name=r"])
    meta = load_rescorer(tmp_path / "r", ["__background__", *FASHION_MNIST_CLASSES])
    assert meta.input_size == (1, 28, 28) and result.metrics["test_acc"] >= 0.0
