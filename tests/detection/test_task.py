"""The detection task on the shared trainer: data order, evaluation wiring, train / resume / CLI end to end."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

import paperzoo
from paperzoo.cli import main
from paperzoo.detection.task import DetectionLoader, DetectionTask, build_dataset, load_detector
from paperzoo.train.api import resolve_config
from paperzoo.train.checkpoint import find_checkpoint, read_weights

pytest.importorskip("pycocotools")

# a small, fast Faster R-CNN for the scenes: few anchors kept, few RoIs sampled
TINY = ["train.time_budget_s=null", "data.n_train=8", "data.n_val=4", "data.batch_size=2", "data.eval_batch_size=4",
        "train.log_every=1",
        "run.progress=off", "run.tensorboard=false", "run.plots=false", "train.threads=1",
        "model.args.rpn_pre_nms_top_n_train=200", "model.args.rpn_post_nms_top_n_train=100",
        "model.args.rpn_pre_nms_top_n_test=100", "model.args.rpn_post_nms_top_n_test=50",
        "model.args.box_batch_size_per_image=32", "model.args.representation_size=64"]


def _cfg(tmp_path, *extra):
    return resolve_config("detect_scenes", [*TINY, f"run.out_dir={tmp_path}", *extra])


class Oracle(nn.Module):
    """Returns each image's ground truth as detections (score 1): a perfect detector for the evaluation path."""

    def __init__(self, dataset):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.truth = {dataset[i][0].numpy().tobytes(): dataset[i][1] for i in range(len(dataset))}

    def forward(self, images, targets=None, proposals=None):
        out = []
        for im in images:
            t = self.truth[im.numpy().tobytes()]
            out.append({"boxes": t["boxes"], "labels": t["labels"], "scores": torch.ones(len(t["labels"]))})
        return out


def test_evaluation_of_a_perfect_detector_is_ap_one_and_names_the_test_split(tmp_path):
    task = DetectionTask(_cfg(tmp_path))
    m = task.evaluate(Oracle(task.val_set))
    assert task.primary_metric == "test_AP"
    assert m["test_AP"] == pytest.approx(1.0) and m["test_AP50"] == pytest.approx(1.0)


def test_evaluation_of_boxes_shifted_to_iou_below_half_scores_zero(tmp_path):
    task = DetectionTask(_cfg(tmp_path))
    oracle = Oracle(task.val_set)
    for t in oracle.truth.values():  # shift every box by its own width: IoU 0
        w = t["boxes"][:, 2] - t["boxes"][:, 0]
        t["boxes"] = t["boxes"] + torch.stack([w, 0 * w, w, 0 * w], 1)
    assert task.evaluate(oracle)["test_AP50"] == pytest.approx(0.0)


def test_loader_order_and_flips_repeat_per_epoch_and_resume_mid_epoch(tmp_path):
    cfg = _cfg(tmp_path)
    ds = build_dataset(cfg.data, "train", seed=3)
    a = DetectionLoader(ds, 2, seed=3, device="cpu")
    a.set_epoch(1)
    full = list(a)
    b = DetectionLoader(build_dataset(cfg.data, "train", seed=3), 2, seed=3, device="cpu")
    b.load_state_dict({"epoch": 1, "batch": 2, "seed": 3})
    b.set_epoch(1)
    rest = list(b)
    assert len(full) == 4 and len(rest) == 2
    for (xa, ta), (xb, tb) in zip(full[2:], rest):
        assert all(torch.equal(p, q) for p, q in zip(xa, xb))
        assert all(torch.equal(p["boxes"], q["boxes"]) for p, q in zip(ta, tb))
    a.set_epoch(2)
    other = list(a)
    assert any(not torch.equal(p, q) for (xa, _), (xb, _) in zip(full, other) for p, q in zip(xa, xb))


def test_flipped_training_images_keep_their_boxes_on_the_item(tmp_path):
    cfg = _cfg(tmp_path, "data.hflip=1.0")
    flipped, plain = build_dataset(cfg.data, "train"), build_dataset(_cfg(tmp_path, "data.hflip=0.0").data, "train")
    for i in range(4):
        (x, t), (y, u) = flipped[i], plain[i]
        assert torch.equal(x, y.flip(-1))
        w = x.shape[-1]
        assert torch.equal(t["boxes"], torch.stack([w - u["boxes"][:, 2], u["boxes"][:, 1], w - u["boxes"][:, 0],
                                                    u["boxes"][:, 3]], 1))


def test_training_interrupted_mid_epoch_resumes_bitwise(tmp_path, monkeypatch):
    from paperzoo.train import checkpoint as ckpt

    ref = paperzoo.train(_cfg(tmp_path, "run.name=ref", "train.epochs=2"))
    monkeypatch.setenv("PAPERZOO_FAULT", "step:3:INT")  # Ctrl-C after step 3 of 8 (mid-epoch 1)
    monkeypatch.setattr(ckpt, "_FAULT_COUNTS", {})
    cut = paperzoo.train(_cfg(tmp_path, "run.name=cut", "train.epochs=2"))
    assert ref.status == "done" and cut.status == "interrupted" and cut.step == 3
    monkeypatch.delenv("PAPERZOO_FAULT")
    done = paperzoo.train(resume=cut.run_dir)
    wa, wb = (read_weights(find_checkpoint(r.run_dir, "final")) for r in (ref, done))
    assert done.step == 8 and wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_cli_trains_evaluates_and_predicts(tmp_path, capsys):
    code = main(["detect", "train", "detect_scenes", "--set", *TINY, "train.max_steps=2", "train.epochs=1",
                 "--out-dir", str(tmp_path), "--name", "run"])
    assert code == 0
    run = tmp_path / "run"
    assert main(["detect", "eval", str(run), "--json", str(tmp_path / "m.json")]) == 0
    out = capsys.readouterr().out
    assert "AP50" in out and set(json.loads((tmp_path / "m.json").read_text())) >= {"AP", "AP50", "AP75"}
    ck = load_detector(run)
    image = tmp_path / "scene.png"
    from PIL import Image

    x, _ = build_dataset(_cfg(tmp_path).data, "val")[0]
    Image.fromarray((x.permute(1, 2, 0) * 255).round().byte().numpy()).save(image)
    assert main(["detect", "predict", str(run), str(image), "-o", str(tmp_path / "pred"), "--score-thresh", "0"]) == 0
    dets = json.loads((tmp_path / "pred" / "detections.json").read_text())[str(image)]
    assert (tmp_path / "pred" / "scene.png").is_file()
    assert all(d["category"] == ck.categories[d["label"]] and 0 <= d["score"] <= 1 for d in dets)


def test_cli_rejects_a_classification_run_and_a_missing_image(tmp_path, capsys):
    assert main(["detect", "eval", str(tmp_path / "nothing")]) == 2
    assert "error" in capsys.readouterr().err


def test_an_unknown_detector_name_is_one_line_with_exit_status_2(tmp_path, capsys):
    code = main(["detect", "train", "detect_scenes", "--model", "fasterrcnn_resnet81_fpn", "--out-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "unknown detector 'fasterrcnn_resnet81_fpn'" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_fast_rcnn_trains_on_cached_selective_search_proposals_that_flip_with_the_image(tmp_path):
    extra = ["data.proposals=selective_search", f"data.proposal_cache={tmp_path / 'cache'}", "data.hflip=1.0",
             "train.max_steps=1", "train.epochs=1"]
    cfg = resolve_config("detect_scenes_fast_rcnn", [*TINY[:10], f"run.out_dir={tmp_path}", *extra])
    flipped, plain = build_dataset(cfg.data, "train"), build_dataset(_cfg(tmp_path, *extra[:2]).data, "train")
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 1  # the flip-free build reused the first
    (x, t), (_, u) = flipped[0], plain[0]
    w = x.shape[-1]
    assert len(t["proposals"]) > 0 and torch.equal(t["proposals"][:, 0], w - u["proposals"][:, 2])
    result = paperzoo.train(cfg)
    assert result.status == "done" and "test_AP50" in result.metrics


def test_a_region_classifier_without_proposals_is_refused_with_one_line(tmp_path, capsys):
    code = main(["detect", "train", "detect_scenes_rcnn", "--set", *TINY[:10], "data.proposals=rpn",
                 "--out-dir", str(tmp_path)])
    assert code == 2 and "set data.proposals=selective_search" in capsys.readouterr().err


def test_a_gray_classifier_starts_the_backbone_with_its_head_dropped_and_first_conv_adapted(tmp_path):
    from safetensors.torch import save_file

    from paperzoo import create_model
    from paperzoo.detection.registry import create_detector
    from paperzoo.weights import adapt_input_conv, load_backbone

    clf = create_model("resnet18", num_classes=10, in_chans=1)
    save_file(clf.state_dict(), tmp_path / "clf.safetensors")
    det = create_detector("fasterrcnn_resnet18_fpn", num_classes=11)
    changes = load_backbone(det, tmp_path / "clf.safetensors")
    body, src = det.backbone.body.state_dict(), clf.state_dict()
    assert torch.equal(body["conv1.weight"], adapt_input_conv(src["conv1.weight"], 3))
    assert all(torch.equal(body[k], src[k]) for k in body if k != "conv1.weight")
    assert any(c.startswith("fc.weight") for c in changes) and any(c.startswith("conv1.weight") for c in changes)
    from paperzoo.weights import WeightLoadError

    with pytest.raises(WeightLoadError, match="lacks 119 backbone tensors"):
        save_file({"conv1.weight": src["conv1.weight"]}, tmp_path / "part.safetensors")
        load_backbone(det, tmp_path / "part.safetensors")


@pytest.mark.parametrize("recipe", ["detect_scenes", "detect_scenes_fast_rcnn", "detect_scenes_rcnn",
                                    "detect_scenes_retinanet", "detect_scenes_yolo", "detect_scenes_detr"])
def test_detection_recipes_are_valid_and_build_their_detector(recipe, tmp_path):
    from paperzoo.detection.registry import detector_names

    cfg = resolve_config(recipe, [f"run.out_dir={tmp_path}"])
    assert cfg.task == "detection" and cfg.model.name in detector_names()
    task = DetectionTask(resolve_config(recipe, [*TINY[:10], f"run.out_dir={tmp_path}",
                                                 f"data.proposal_cache={tmp_path}"]))
    model = task.build_model()
    assert model.num_classes == len(task.categories) == 11
