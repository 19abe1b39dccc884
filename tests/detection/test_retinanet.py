"""RetinaNet: the focal loss against hand-worked values and cross-entropy, the prior init, torchvision's size and
keys (its checkpoints loading, old key names too, with the same detections), the train / eval contract, a tiny
overfit and the recipe through the CLI."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import paperzoo
from paperzoo.detection.boxes import box_iou
from paperzoo.detection.faster_rcnn import fpn_backbone
from paperzoo.detection.fpn import FeaturePyramidNetwork
from paperzoo.detection.registry import create_detector, detector_names
from paperzoo.detection.retinanet import (
    RETINANET_ANCHOR_SIZES,
    RetinaNet,
    focal_loss_split,
    octave_anchor_sizes,
    retinanet_fpn,
    retinanet_resnet50_fpn,
    sigmoid_focal_loss,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors: threads only contend on the shared CPU

HALVED = octave_anchor_sizes((16, 32, 64, 128, 256))  # the scenes recipe's anchors
SMALL = {"min_size": 96, "max_size": 128, "anchor_sizes": HALVED}


# --------------------------------------------------------------------------------------------- the focal loss
def test_focal_loss_matches_hand_worked_values():
    """FL = -alpha_t (1 - p_t)^2 log p_t, alpha = 0.25 (Eq. 5), worked out by hand for p = 0.5 and p = 0.9."""
    logits = torch.tensor([0.0, 0.0, math.log(9.0), math.log(9.0)])  # p = 0.5, 0.5, 0.9, 0.9
    targets = torch.tensor([1.0, 0.0, 1.0, 0.0])
    expected = torch.tensor([
        0.25 * 0.5 ** 2 * math.log(2),  # object, p_t = 0.5: 0.0433
        0.75 * 0.5 ** 2 * math.log(2),  # background, p_t = 0.5: 0.1300
        0.25 * 0.1 ** 2 * -math.log(0.9),  # easy object, p_t = 0.9: 2.6e-4, 400x less than its CE
        0.75 * 0.9 ** 2 * -math.log(0.1),  # hard background, p_t = 0.1: 1.399
    ])
    torch.testing.assert_close(sigmoid_focal_loss(logits, targets), expected)


def test_focal_loss_with_gamma_zero_and_no_alpha_is_binary_cross_entropy():
    g = torch.Generator().manual_seed(0)
    logits, targets = torch.randn(50, 7, generator=g) * 4, (torch.rand(50, 7, generator=g) > 0.8).float()
    p = torch.sigmoid(logits.double())
    bce = -(targets * torch.log(p) + (1 - targets) * torch.log(1 - p))  # Eq. 1
    torch.testing.assert_close(sigmoid_focal_loss(logits, targets, alpha=None, gamma=0.0), bce.float())
    with_alpha = sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=0.0)  # Eq. 3: alpha-balanced CE
    torch.testing.assert_close(with_alpha, (bce * (0.25 * targets + 0.75 * (1 - targets))).float())


def test_focal_loss_is_float32_and_finite_for_bf16_and_saturated_logits():
    logits = torch.tensor([-100.0, 100.0, 30.0], dtype=torch.bfloat16)
    out = sigmoid_focal_loss(logits, torch.tensor([1.0, 0.0, 1.0]))
    assert out.dtype == torch.float32 and torch.isfinite(out).all() and out[2] < 1e-9


def test_loss_split_normalises_by_positive_anchors_and_adds_up():
    """One image, 4 anchors x 2 classes: anchor 0 foreground of class 1, anchors 1-2 background, anchor 3 ignored."""
    logits = torch.tensor([[[-1.0, 2.0], [-3.0, 0.5], [-2.0, -4.0], [5.0, 5.0]]])
    targets = torch.tensor([[[0.0, 1.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]])
    valid, num_pos = torch.tensor([[True, True, True, False]]), torch.tensor([1])
    loss = sigmoid_focal_loss(logits, targets)
    parts = focal_loss_split(loss, logits, targets, valid, num_pos)
    el = loss[0]
    torch.testing.assert_close(parts["pos"], el[0, 1])
    torch.testing.assert_close(parts["hard_neg"], el[1, 1])  # the only background element with p >= 0.5
    torch.testing.assert_close(parts["easy_neg"], el[0, 0] + el[1, 0] + el[2, 0] + el[2, 1])
    torch.testing.assert_close(parts["all"], parts["pos"] + parts["hard_neg"] + parts["easy_neg"])
    two = focal_loss_split(loss.repeat(2, 1, 1), logits.repeat(2, 1, 1), targets.repeat(2, 1, 1),
                           valid.repeat(2, 1), torch.tensor([2, 0]))  # per image / max(1, positives), mean
    torch.testing.assert_close(two["all"], (parts["all"] / 2 + parts["all"]) / 2)


# ------------------------------------------------------------------------------------ torchvision's layout
def torchvision_keys(num_classes: int = 91, frozen_bn: bool = True) -> dict[str, tuple[int, ...] | None]:
    """torchvision's retinanet_resnet50_fpn (v1) state dict (>= 0.13 names), from its structure: the ResNet-50
    body (layer1 kept although its map is not used), an FPN on C3-C5 (512, 1024, 2048 channels) whose P6 / P7
    convs sit in ``extra_blocks`` and take P5 (256 channels), and two subnets of four wrapped 3x3 convs."""
    norm = ["weight", "bias", "running_mean", "running_var"] + ([] if frozen_bn else ["num_batches_tracked"])
    keys: dict[str, tuple[int, ...] | None] = {"backbone.body.conv1.weight": (64, 3, 7, 7)}
    keys.update({f"backbone.body.bn1.{n}": None for n in norm})
    for stage, blocks in enumerate((3, 4, 6, 3), start=1):
        for b in range(blocks):
            prefix = f"backbone.body.layer{stage}.{b}"
            for c in (1, 2, 3):
                keys[f"{prefix}.conv{c}.weight"] = None
                keys.update({f"{prefix}.bn{c}.{n}": None for n in norm})
            if b == 0:
                keys[f"{prefix}.downsample.0.weight"] = None
                keys.update({f"{prefix}.downsample.1.{n}": None for n in norm})
    for i, c in enumerate((512, 1024, 2048)):
        keys[f"backbone.fpn.inner_blocks.{i}.0.weight"] = (256, c, 1, 1)
        keys[f"backbone.fpn.inner_blocks.{i}.0.bias"] = (256,)
        keys[f"backbone.fpn.layer_blocks.{i}.0.weight"] = (256, 256, 3, 3)
        keys[f"backbone.fpn.layer_blocks.{i}.0.bias"] = (256,)
    for p in ("p6", "p7"):
        keys[f"backbone.fpn.extra_blocks.{p}.weight"] = (256, 256, 3, 3)
        keys[f"backbone.fpn.extra_blocks.{p}.bias"] = (256,)
    for subnet, out, n in (("classification_head", "cls_logits", 9 * num_classes), ("regression_head", "bbox_reg", 36)):
        for i in range(4):
            keys[f"head.{subnet}.conv.{i}.0.weight"] = (256, 256, 3, 3)
            keys[f"head.{subnet}.conv.{i}.0.bias"] = (256,)
        keys[f"head.{subnet}.{out}.weight"] = (n, 256, 3, 3)
        keys[f"head.{subnet}.{out}.bias"] = (n,)
    return keys


@pytest.mark.parametrize("frozen_bn, params, n_keys", [(True, 34_014_999, 301), (False, 34_068_119, 354)])
def test_resnet50_fpn_has_torchvisions_parameter_count_and_state_dict_keys(frozen_bn, params, n_keys):
    model = retinanet_resnet50_fpn(frozen_bn=frozen_bn)
    assert sum(p.numel() for p in model.parameters()) == params
    expected, ours = torchvision_keys(91, frozen_bn), model.state_dict()
    assert set(ours) == set(expected), (sorted(set(ours) - set(expected))[:5], sorted(set(expected) - set(ours))[:5])
    assert len(ours) == n_keys
    for key, shape in expected.items():
        if shape is not None:
            assert tuple(ours[key].shape) == shape, key


def test_anchor_sizes_are_three_octave_scales_truncated_as_torchvision():
    assert RETINANET_ANCHOR_SIZES[0] == (32, 40, 50) and RETINANET_ANCHOR_SIZES[-1] == (512, 645, 812)
    assert HALVED[0] == (16, 20, 25)


def test_p6_p7_come_from_p5_as_torchvision_v1_or_from_c5_as_the_paper():
    x = {"0": torch.randn(1, 8, 16, 16), "1": torch.randn(1, 16, 8, 8), "2": torch.randn(1, 32, 4, 4)}
    for extra, p6_in in (("p6p7", 6), ("p6p7_c5", 32)):
        fpn = FeaturePyramidNetwork([8, 16, 32], 6, extra_block=extra)
        assert fpn.extra_blocks.p6.in_channels == p6_in
        out = fpn(x)
        assert list(out) == ["0", "1", "2", "p6", "p7"]
        assert out["p6"].shape == (1, 6, 2, 2) and out["p7"].shape == (1, 6, 1, 1)
        source = out["2"] if extra == "p6p7" else x["2"]
        torch.testing.assert_close(out["p7"], fpn.extra_blocks.p7(F.relu(fpn.extra_blocks.p6(source))))


# ------------------------------------------------------------------------------------------------ init
def test_prior_init_starts_every_anchor_at_foreground_probability_pi():
    torch.manual_seed(0)
    model = retinanet_fpn(num_classes=5, **SMALL)
    cls = model.head.classification_head
    torch.testing.assert_close(cls.cls_logits.bias, torch.full_like(cls.cls_logits.bias, -math.log(99.0)))
    convs = [m for m in model.head.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 10 and all(abs(float(m.weight.detach().std()) - 0.01) < 1e-3 for m in convs)
    with torch.no_grad():
        features = list(model.backbone(torch.rand(2, 3, 96, 128)).values())
        logits, deltas = model.head(features)
    assert logits.shape == (2, 9 * sum(f.shape[-2] * f.shape[-1] for f in features), 5)
    assert abs(float(torch.sigmoid(logits).mean()) - 0.01) < 1e-3  # Sec. 3.3: ~0.01 everywhere
    assert float(deltas.abs().max()) < 0.1  # the box subnet starts near the anchors


# ----------------------------------------------------------------------------------------- train / eval contract
def images(seed: int = 0, sizes=((96, 128), (80, 112))) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, h, w, generator=g) for h, w in sizes]


def targets() -> list[dict]:
    return [{"boxes": torch.tensor([[10.0, 12.0, 50.0, 60.0], [60.0, 20.0, 120.0, 90.0]]),
             "labels": torch.tensor([1, 3])},
            {"boxes": torch.tensor([[5.0, 5.0, 40.0, 30.0]]), "labels": torch.tensor([2])}]


def reference_losses(model: RetinaNet, imgs, tgts, alpha, gamma) -> tuple[torch.Tensor, torch.Tensor]:
    """The losses recomputed one image at a time from the head's outputs, as torchvision writes them: Eq. 5 on
    the non-ignored anchors (one-hot class targets), L1 on the foreground deltas, each / max(1, positives)."""
    batch, tgts = model.transform(list(imgs), [dict(t) for t in tgts])
    features = list(model.backbone(batch.tensors).values())
    anchors = model.anchor_generator(batch.tensors, features)[0]
    logits, deltas = model.head(features)
    cls, box = [], []
    for lg, dl, t in zip(logits, deltas, tgts):
        matched = model.matcher(box_iou(t["boxes"], anchors))
        fg = torch.where(matched >= 0)[0]
        onehot = torch.zeros_like(lg)
        onehot[fg, t["labels"][matched[fg]]] = 1.0
        keep = matched != -2
        p = torch.sigmoid(lg[keep])
        p_t = p * onehot[keep] + (1 - p) * (1 - onehot[keep])
        a_t = 1.0 if alpha is None else alpha * onehot[keep] + (1 - alpha) * (1 - onehot[keep])
        cls.append((-a_t * (1 - p_t) ** gamma * torch.log(p_t)).sum() / max(1, len(fg)))
        target = model.box_coder.encode(t["boxes"][matched[fg]], anchors[fg])
        box.append((dl[fg] - target).abs().sum() / max(1, len(fg)))
    return torch.stack(cls).mean(), torch.stack(box).mean()


@pytest.mark.parametrize("cls_loss, alpha, gamma", [("focal", 0.25, 2.0), ("ce", None, 0.0)])
def test_training_losses_equal_a_per_image_reference_and_backpropagate(cls_loss, alpha, gamma):
    torch.manual_seed(0)
    model = retinanet_fpn(num_classes=4, cls_loss=cls_loss, **SMALL).train()
    with torch.no_grad():  # away from the prior, so that hard negatives exist
        model.head.classification_head.cls_logits.bias.normal_(0, 2)
    losses = model(images(), targets())
    assert {"loss_classifier", "loss_box_reg", "cls_pos", "cls_hard_neg", "cls_easy_neg", "num_pos"} == set(losses)
    with torch.no_grad():
        ref_cls, ref_box = reference_losses(model, images(), targets(), alpha, gamma)
    torch.testing.assert_close(losses["loss_classifier"], ref_cls, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(losses["loss_box_reg"], ref_box, rtol=1e-4, atol=1e-5)
    split = losses["cls_pos"] + losses["cls_hard_neg"] + losses["cls_easy_neg"]
    torch.testing.assert_close(split, losses["loss_classifier"].detach())
    assert losses["cls_hard_neg"] > 0 and losses["num_pos"] >= 1
    (losses["loss_classifier"] + losses["loss_box_reg"]).backward()
    for module in (model.backbone.body.conv1, model.head.classification_head.cls_logits,
                   model.head.regression_head.bbox_reg):
        assert module.weight.grad is not None and module.weight.grad.abs().sum() > 0


def test_an_image_without_objects_trains_on_background_only():
    torch.manual_seed(0)
    model = retinanet_fpn(num_classes=4, **SMALL).train()
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    losses = model(images(sizes=((96, 128),)), empty)
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_box_reg"] == 0 and losses["cls_pos"] == 0 and losses["num_pos"] == 0
    assert losses["loss_classifier"] > 0  # every anchor is a (very easy) negative, divided by max(1, 0)
    losses["loss_classifier"].backward()


def test_bad_configuration_and_targets_are_one_clear_value_error():
    with pytest.raises(ValueError, match="cls_loss"):
        retinanet_fpn(num_classes=4, cls_loss="softmax")
    model = retinanet_fpn(num_classes=4, **SMALL).train()
    with pytest.raises(ValueError, match="needs targets"):
        model(images())
    with pytest.raises(ValueError, match="outside 1..3"):
        model(images(), [{"boxes": torch.tensor([[1.0, 1, 9, 9]]), "labels": torch.tensor([4])}] * 2)


def test_eval_returns_boxes_in_original_coordinates_sorted_without_background():
    torch.manual_seed(0)
    model = retinanet_fpn(num_classes=4, detections_per_img=50, topk_candidates=100, **SMALL).eval()
    model.score_thresh = 0.0  # at the prior (p ~ 0.01) nothing passes 0.05
    sizes = ((60, 80), (150, 110))  # upscaled x1.6, and downscaled to 128 x 93: boxes must be scaled back
    seen = []
    original = model.detect
    model.detect = lambda *a: seen.append((original(*a), a[-1])) or seen[-1][0]
    with torch.no_grad():
        out = model(images(sizes=sizes))
    for det, (resized, (rh, rw)), (h, w) in zip(out, seen, sizes):
        assert 0 < len(det["boxes"]) <= 50 and det["labels"].dtype == torch.int64
        assert ((det["labels"] >= 1) & (det["labels"] <= 3)).all()
        assert (det["scores"][:-1] >= det["scores"][1:]).all()
        scale = torch.tensor([w / rw, h / rh, w / rw, h / rh])
        torch.testing.assert_close(det["boxes"], resized["boxes"] * scale)
        assert (det["boxes"][:, 2] <= w + 1e-3).all() and (det["boxes"][:, 3] <= h + 1e-3).all()


def test_detect_keeps_the_top_k_per_level_above_the_threshold():
    model = retinanet_fpn(num_classes=3, **SMALL).eval()
    model.topk_candidates, model.score_thresh, model.nms_thresh = 2, 0.3, 1.0  # NMS 1.0 suppresses nothing
    anchors = torch.tensor([[0.0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10], [0, 20, 40, 60], [50, 50, 90, 90]])
    p = torch.tensor([[0.9, 0.1, 0.2], [0.1, 0.6, 0.5], [0.2, 0.25, 0.7], [0.1, 0.2, 0.1], [0.1, 0.95, 0.4]])
    det = model.detect(torch.logit(p), torch.zeros(5, 4), anchors, [3, 2], (100, 100))
    # level 1: (1, c1) 0.6, (1, c2) 0.5, (2, c2) 0.7 pass -> top 2: 0.7, 0.6; level 2: (4, c1) 0.95, (4, c2) 0.4
    torch.testing.assert_close(det["scores"], torch.tensor([0.95, 0.7, 0.6, 0.4]))
    assert det["labels"].tolist() == [1, 2, 1, 2]  # the background column (p 0.9 at anchor 0) is not a class
    torch.testing.assert_close(det["boxes"], anchors[[4, 2, 1, 4]])


# ------------------------------------------------------------------------------------ torchvision checkpoints
def randomize(model: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                r = torch.rand(t.shape, generator=g) if "running_var" in name else torch.randn(t.shape, generator=g)
                t.copy_(r * 0.5 + 0.5 if "running_var" in name else r * 0.05)
    return model


def to_old_torchvision_keys(sd: dict) -> dict:
    """torchvision < 0.13 names: FPN convs not wrapped, subnet convs at conv.0, conv.2, ...; no BN counters."""
    old = {}
    for k, v in sd.items():
        if k.endswith("num_batches_tracked"):
            continue
        for blocks in ("inner_blocks", "layer_blocks"):
            for i in range(3):
                k = k.replace(f"backbone.fpn.{blocks}.{i}.0.", f"backbone.fpn.{blocks}.{i}.")
        for subnet in ("classification_head", "regression_head"):
            for i in range(4):
                k = k.replace(f"head.{subnet}.conv.{i}.0.", f"head.{subnet}.conv.{2 * i}.")
        old[k] = v
    return old


def small_random(seed: int, frozen_bn: bool) -> RetinaNet:
    model = randomize(retinanet_fpn(num_classes=5, frozen_bn=frozen_bn, topk_candidates=50, **SMALL), seed).eval()
    model.score_thresh = 0.0  # random weights: any score will do, the 50 best of each level
    return model


def assert_same_detections(a: list[dict], b: list[dict]) -> None:
    for da, db in zip(a, b):
        assert len(da["boxes"]) > 0
        for key in ("boxes", "scores", "labels"):
            torch.testing.assert_close(da[key], db[key])


@pytest.mark.parametrize("frozen_bn, old_names", [(True, True), (False, True), (False, False)])
def test_torchvision_state_dict_loads_strictly_and_gives_the_same_detections(tmp_path, frozen_bn, old_names):
    source = small_random(1, frozen_bn)
    sd = to_old_torchvision_keys(source.state_dict()) if old_names else source.state_dict()
    torch.save(sd, tmp_path / "tv.pth")
    model = small_random(2, frozen_bn)
    paperzoo.load_weights(model, tmp_path / "tv.pth", source="torchvision")
    with torch.no_grad():
        assert_same_detections(model(images()), source(images()))


def test_plain_load_state_dict_accepts_the_old_head_names_too():
    source = small_random(3, True)
    model = retinanet_fpn(num_classes=5, frozen_bn=True, **SMALL)
    model.load_state_dict(to_old_torchvision_keys(source.state_dict()), strict=True)
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_our_state_dict_round_trips_through_safetensors_with_equal_outputs(tmp_path):
    from safetensors.torch import save_file

    source = small_random(4, False)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, tmp_path / "run.safetensors")
    model = small_random(5, False)
    paperzoo.load_weights(model, tmp_path / "run.safetensors")
    with torch.no_grad():
        assert_same_detections(model(images()), source(images()))


# ------------------------------------------------------------------------------------------ registry, training
def test_registry_builds_retinanet_on_another_cnn_with_the_family_for_weight_loading():
    assert {"retinanet_fpn", "retinanet_resnet50_fpn"} <= set(detector_names())
    model = create_detector("retinanet_fpn", backbone="mobilenetv3_large_100", num_classes=3, **SMALL).eval()
    assert model.model_family == "retinanet" and model.model_name == "retinanet_fpn"
    assert list(model.backbone(torch.rand(1, 3, 96, 128))) == ["0", "1", "2", "p6", "p7"]
    model.score_thresh = 0.0
    with torch.no_grad():
        assert len(model(images(sizes=((96, 128),)))[0]["boxes"]) > 0


def test_a_few_dozen_steps_overfit_two_scenes():
    """Two scenes at half size on a narrow pyramid (64 channels): the training loss falls to under a third."""
    from paperzoo.detection.data import ScenesDetection

    ds = ScenesDetection("train", 2, canvas=128, seed=0)
    imgs = [ds[i][0] for i in range(2)]
    tgts = [{k: ds[i][1][k] for k in ("boxes", "labels")} for i in range(2)]
    torch.manual_seed(0)
    backbone = fpn_backbone("resnet18", frozen_bn=False, trainable_layers=5, out_indices=(-3, -2, -1),
                            extra_block="p6p7", out_channels=64)
    model = RetinaNet(backbone, ds.num_classes, min_size=64, max_size=64,
                      anchor_sizes=octave_anchor_sizes((8, 16, 32, 64, 128))).train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    history = []
    for _ in range(30):
        losses = model(imgs, tgts)
        loss = losses["loss_classifier"] + losses["loss_box_reg"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(float(loss.detach()))
    assert all(math.isfinite(v) for v in history)
    assert sum(history[-3:]) / 3 < sum(history[:3]) / 3 / 3, history


@pytest.mark.slow
def test_cli_trains_and_evaluates_the_recipe(tmp_path, capsys):
    pytest.importorskip("pycocotools")
    from paperzoo.cli import main

    tiny = ["train.time_budget_s=null", "data.n_train=4", "data.n_val=2", "data.batch_size=2",
            "data.eval_batch_size=2", "train.max_steps=2", "train.epochs=1", "train.log_every=1",
            "run.progress=off", "run.tensorboard=false", "run.plots=false", "train.threads=1",
            "model.args.cls_loss=ce"]
    assert main(["detect", "train", "detect_scenes_retinanet", "--set", *tiny,
                 "--out-dir", str(tmp_path), "--name", "run"]) == 0
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert "cls_easy_neg" in metrics and "loss_classifier" in metrics
    assert main(["detect", "eval", str(tmp_path / "run")]) == 0
    assert "AP50" in capsys.readouterr().out
