"""Faster R-CNN-FPN: torchvision's size and state-dict keys, its checkpoints loading (old key names too) with the
same outputs, frozen BatchNorm, trainable levels, and the train / eval contract on small images."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import paperzoo
from paperzoo.detection.faster_rcnn import (
    FasterRCNN,
    create_detector,
    detector_names,
    fasterrcnn_resnet18_fpn,
    fasterrcnn_resnet50_fpn,
    fpn_backbone,
)
from paperzoo.layers.frozen_bn import FrozenBatchNorm2d, freeze_batch_norm

# 96x128 images stay as they are, and few proposals: fast tests (RoIAlign's cost grows with the RoIs)
pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors: threads only contend on the shared CPU

SMALL = {"min_size": 96, "max_size": 128, "rpn_pre_nms_top_n_train": 200, "rpn_post_nms_top_n_train": 100,
         "rpn_pre_nms_top_n_test": 100, "rpn_post_nms_top_n_test": 50, "box_batch_size_per_image": 64}


# --------------------------------------------------------------------------- torchvision's layout, written out
def torchvision_keys(num_classes: int = 91, frozen_bn: bool = True) -> dict[str, tuple[int, ...] | None]:
    """torchvision's fasterrcnn_resnet50_fpn state dict (>= 0.13 names), from its structure: ResNet-50 body
    (Bottleneck blocks 3, 4, 6, 3; a conv+norm downsample on each stage's first block), FPN convs wrapped at
    index 0, the RPN conv inside Conv2dNormActivation inside a Sequential, the 2fc head and predictor.
    Values: the shapes checked here (None: not checked)."""
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
    for i, c in enumerate((256, 512, 1024, 2048)):
        keys[f"backbone.fpn.inner_blocks.{i}.0.weight"] = (256, c, 1, 1)
        keys[f"backbone.fpn.inner_blocks.{i}.0.bias"] = (256,)
        keys[f"backbone.fpn.layer_blocks.{i}.0.weight"] = (256, 256, 3, 3)
        keys[f"backbone.fpn.layer_blocks.{i}.0.bias"] = (256,)
    keys.update({"rpn.head.conv.0.0.weight": (256, 256, 3, 3), "rpn.head.conv.0.0.bias": (256,),
                 "rpn.head.cls_logits.weight": (3, 256, 1, 1), "rpn.head.cls_logits.bias": (3,),
                 "rpn.head.bbox_pred.weight": (12, 256, 1, 1), "rpn.head.bbox_pred.bias": (12,),
                 "roi_heads.box_head.fc6.weight": (1024, 256 * 7 * 7), "roi_heads.box_head.fc6.bias": (1024,),
                 "roi_heads.box_head.fc7.weight": (1024, 1024), "roi_heads.box_head.fc7.bias": (1024,),
                 "roi_heads.box_predictor.cls_score.weight": (num_classes, 1024),
                 "roi_heads.box_predictor.cls_score.bias": (num_classes,),
                 "roi_heads.box_predictor.bbox_pred.weight": (4 * num_classes, 1024),
                 "roi_heads.box_predictor.bbox_pred.bias": (4 * num_classes,)})
    return keys


@pytest.mark.parametrize("frozen_bn, params, n_keys", [(True, 41_755_286, 295), (False, 41_808_406, 348)])
def test_resnet50_fpn_has_torchvisions_parameter_count_and_state_dict_keys(frozen_bn, params, n_keys):
    model = fasterrcnn_resnet50_fpn(num_classes=91, frozen_bn=frozen_bn)
    assert sum(p.numel() for p in model.parameters()) == params
    expected, ours = torchvision_keys(91, frozen_bn), model.state_dict()
    assert set(ours) == set(expected), (sorted(set(ours) - set(expected))[:5], sorted(set(expected) - set(ours))[:5])
    assert len(ours) == len(expected) == n_keys
    for key, shape in expected.items():
        if shape is not None:
            assert tuple(ours[key].shape) == shape, key


# ---------------------------------------------------------------------------------------------- frozen BN
def random_bn(channels: int, seed: int = 0) -> nn.BatchNorm2d:
    g = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(channels)
    with torch.no_grad():
        bn.weight.copy_(torch.randn(channels, generator=g))
        bn.bias.copy_(torch.randn(channels, generator=g))
        bn.running_mean.copy_(torch.randn(channels, generator=g))
        bn.running_var.copy_(torch.rand(channels, generator=g) * 2 + 0.01)
    return bn


def test_frozen_batchnorm_equals_batchnorm_in_eval_and_keeps_its_affine_terms_as_buffers():
    bn = random_bn(6).eval()
    frozen = FrozenBatchNorm2d(6)
    frozen.load_state_dict(bn.state_dict())  # BatchNorm2d's num_batches_tracked is accepted and ignored
    x = torch.randn(2, 6, 5, 7)
    torch.testing.assert_close(frozen(x), bn(x), rtol=1e-5, atol=1e-6)
    assert list(frozen.parameters()) == []
    assert set(frozen.state_dict()) == {"weight", "bias", "running_mean", "running_var"}
    frozen.train()
    torch.testing.assert_close(frozen(x), bn(x), rtol=1e-5, atol=1e-6)  # training mode changes nothing


def test_freeze_batch_norm_replaces_every_batchnorm_with_its_values():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), random_bn(4, 1), nn.Sequential(nn.ReLU(), random_bn(4, 2))).eval()
    x = torch.randn(1, 3, 9, 9)
    before = net(x)
    freeze_batch_norm(net)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in net.modules()) == 2
    torch.testing.assert_close(net(x), before)


# --------------------------------------------------------------------------------------------- trainable layers
@pytest.mark.parametrize("trainable", [0, 1, 3, 5])
def test_trainable_layers_train_torchvisions_deepest_stages(trainable):
    backbone = fpn_backbone("resnet18", frozen_bn=False, trainable_layers=trainable)
    # torchvision's rule: layer4, layer3, layer2, layer1, conv1 (with bn1) in that order
    train = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable] + (["bn1"] if trainable == 5 else [])
    for name, p in backbone.body.named_parameters():
        assert p.requires_grad == any(name.startswith(t) for t in train), name
    assert all(p.requires_grad for p in backbone.fpn.parameters())


def test_trainable_layers_out_of_range_is_one_clear_error():
    with pytest.raises(ValueError, match="trainable_layers must be in 0..5"):
        fpn_backbone("resnet18", trainable_layers=6)


def test_levels_that_do_not_double_their_stride_are_refused():
    with pytest.raises(ValueError, match=r"strides \[1, 1, 2, 4\]: an FPN needs"):
        fpn_backbone("resnet20")  # the CIFAR ResNet keeps full resolution through its stem and first stage


@pytest.mark.parametrize("name, channels", [("resnet34", [64, 128, 256, 512]),
                                            ("mobilenetv3_large_100", [24, 40, 112, 960])])
def test_any_registered_cnn_feeds_the_fpn_its_channels(name, channels):
    backbone = fpn_backbone(name, frozen_bn=False, trainable_layers=5)
    assert backbone.fpn.in_channels_list == channels
    out = backbone(torch.randn(1, 3, 64, 96))
    assert list(out) == ["0", "1", "2", "3", "pool"] and out["0"].shape == (1, 256, 16, 24)


# ----------------------------------------------------------------------------------------------- checkpoints
def randomize(model: nn.Module, seed: int) -> nn.Module:
    """Every parameter and float buffer random (variances positive), so that any misplaced tensor shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                r = torch.rand(t.shape, generator=g) if "running_var" in name else torch.randn(t.shape, generator=g)
                t.copy_(r * 0.5 + 0.5 if "running_var" in name else r * 0.05)
    return model


def to_old_torchvision_keys(sd: dict) -> dict:
    """torchvision < 0.13 names: the RPN conv and the FPN convs not wrapped; no BatchNorm counters."""
    old = {}
    for k, v in sd.items():
        if k.endswith("num_batches_tracked"):
            continue
        k = k.replace("rpn.head.conv.0.0.", "rpn.head.conv.")
        for blocks in ("inner_blocks", "layer_blocks"):
            for i in range(4):
                k = k.replace(f"backbone.fpn.{blocks}.{i}.0.", f"backbone.fpn.{blocks}.{i}.")
        old[k] = v
    return old


def images(seed: int = 0, sizes=((96, 128), (80, 112))) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, h, w, generator=g) for h, w in sizes]


def assert_same_detections(a: list[dict], b: list[dict], **tol) -> None:
    for da, db in zip(a, b):
        assert len(da["boxes"]) > 0
        for key in ("boxes", "scores", "labels"):
            torch.testing.assert_close(da[key], db[key], **tol if key != "labels" else {})


@pytest.mark.parametrize("frozen_bn, old_names", [(True, False), (True, True), (False, True)])
def test_torchvision_state_dict_loads_strictly_and_gives_the_same_detections(tmp_path, frozen_bn, old_names):
    source = randomize(fasterrcnn_resnet18_fpn(num_classes=5, frozen_bn=frozen_bn, **SMALL), seed=1).eval()
    sd = source.state_dict()
    sd = to_old_torchvision_keys(sd) if old_names else sd
    torch.save(sd, tmp_path / "tv.pth")
    model = randomize(fasterrcnn_resnet18_fpn(num_classes=5, frozen_bn=frozen_bn, **SMALL), seed=2).eval()
    paperzoo.load_weights(model, tmp_path / "tv.pth", source="torchvision")
    with torch.no_grad():
        assert_same_detections(model(images()), source(images()))


def test_plain_load_state_dict_accepts_the_old_names_too():
    """The RPN head and the FPN rename torchvision < 0.13 keys themselves, for torch's own strict loading."""
    source = randomize(fasterrcnn_resnet18_fpn(num_classes=5, frozen_bn=True, **SMALL), seed=4)
    model = fasterrcnn_resnet18_fpn(num_classes=5, frozen_bn=True, **SMALL)
    model.load_state_dict(to_old_torchvision_keys(source.state_dict()), strict=True)
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_frozen_bn_eps_reaches_every_frozen_norm():
    """torchvision's COCO v1 checkpoint needs eps 0 (its FrozenBatchNorm2d had none when it was trained)."""
    model = create_detector("fasterrcnn_fpn", backbone="resnet18", frozen_bn=True, frozen_bn_eps=0.0)
    norms = [m for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert len(norms) == 20 and all(m.eps == 0.0 for m in norms)


def test_batchnorm_run_loads_into_the_frozen_bn_model_with_the_same_eval_detections(tmp_path):
    source = randomize(fasterrcnn_resnet18_fpn(num_classes=5, frozen_bn=False, **SMALL), seed=3).eval()
    torch.save(source.state_dict(), tmp_path / "run.pth")
    model = fasterrcnn_resnet18_fpn(num_classes=5, frozen_bn=True, **SMALL).eval()
    paperzoo.load_weights(model, tmp_path / "run.pth", source="paperzoo")
    with torch.no_grad():  # the folded scale and shift round differently from BatchNorm's formula
        assert_same_detections(model(images()), source(images()), rtol=1e-4, atol=1e-3)


def test_a_checkpoint_for_another_model_is_refused(tmp_path):
    torch.save(fasterrcnn_resnet18_fpn(num_classes=5).state_dict(), tmp_path / "r18.pth")
    with pytest.raises(paperzoo.WeightLoadError, match="missing keys"):
        paperzoo.load_weights(create_detector("fasterrcnn_resnet34_fpn", num_classes=5), tmp_path / "r18.pth",
                              source="torchvision")


# ------------------------------------------------------------------------------------------ train / eval contract
def small_model(**kw) -> FasterRCNN:
    torch.manual_seed(0)
    return fasterrcnn_resnet18_fpn(num_classes=4, **SMALL, **kw)


def targets() -> list[dict]:
    return [{"boxes": torch.tensor([[10.0, 12.0, 50.0, 60.0], [60.0, 20.0, 120.0, 90.0]]),
             "labels": torch.tensor([1, 3])},
            {"boxes": torch.tensor([[5.0, 5.0, 40.0, 30.0]]), "labels": torch.tensor([2])}]


def test_training_returns_the_four_finite_losses_and_backpropagates():
    model = small_model().train()
    losses = model(images(), targets())
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    for module in (model.backbone.body.conv1, model.rpn.head.cls_logits, model.roi_heads.box_predictor.bbox_pred):
        assert module.weight.grad is not None and module.weight.grad.abs().sum() > 0


def test_an_image_without_objects_trains():
    model = small_model().train()
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    losses = model(images(sizes=((96, 128),)), empty)
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_box_reg"] == 0 and losses["loss_rpn_box_reg"] == 0  # nothing to regress
    sum(losses.values()).backward()


def test_eval_returns_boxes_in_original_coordinates_with_sorted_scores():
    model = small_model().eval()
    sizes = ((60, 80), (150, 110))  # upscaled x1.6 and downscaled to 128 x 93: boxes must be scaled back
    seen = {}
    model.roi_heads.register_forward_hook(lambda m, args, out: seen.update(resized=out[0], sizes=args[2]))
    with torch.no_grad():
        out = model(images(sizes=sizes))
    for det, internal, (h, w), (rh, rw) in zip(out, seen["resized"], sizes, seen["sizes"]):
        assert len(det["boxes"]) > 0 and det["labels"].dtype == torch.int64
        scale = torch.tensor([w / rw, h / rh, w / rw, h / rh])
        torch.testing.assert_close(det["boxes"], internal["boxes"] * scale)
        assert (det["boxes"] >= 0).all() and (det["boxes"][:, [0, 2]] <= w + 1e-3).all()
        assert (det["boxes"][:, [1, 3]] <= h + 1e-3).all()
        assert torch.equal(det["scores"], det["scores"].sort(descending=True).values)


def test_external_proposals_replace_the_rpn():
    model = small_model().train()
    proposals = [torch.tensor([[0.0, 0.0, 60.0, 60.0], [30.0, 10.0, 100.0, 80.0]]), torch.tensor([[5.0, 5, 50, 40]])]
    losses = model(images(), targets(), proposals=proposals)
    assert set(losses) == {"loss_classifier", "loss_box_reg"}


@pytest.mark.parametrize("target, message", [
    ({"boxes": torch.tensor([[10.0, 10, 5, 20]]), "labels": torch.tensor([1])}, r"targets\[0\] box 0 .* negative"),
    ({"boxes": torch.tensor([[1.0, 2, 3, 2]]), "labels": torch.tensor([1])}, "zero or negative size"),
    ({"boxes": torch.tensor([[1.0, 2, 5, 6]]), "labels": torch.tensor([4])}, r"label 4, outside 1..3"),
    ({"boxes": torch.tensor([[1.0, 2, 5, 6]]), "labels": torch.tensor([0])}, "0 is the background"),
    ({"boxes": torch.zeros(2, 5), "labels": torch.tensor([1, 1])}, r"float \(N, 4\) tensor, got \(2, 5\)"),
    ({"boxes": torch.tensor([[1.0, 2, 5, 6]]), "labels": torch.tensor([1.0])}, "must be int64"),
])
def test_bad_targets_are_one_clear_value_error(target, message):
    model = small_model().train()
    with pytest.raises(ValueError, match=message):
        model(images(sizes=((96, 128),)), [target])


def test_training_without_targets_is_refused():
    with pytest.raises(ValueError, match="needs targets"):
        small_model().train()(images())


# ------------------------------------------------------------------------------------------------ the registry
def test_registry_builds_by_name_with_the_family_for_weight_loading():
    names = detector_names()
    assert {"fasterrcnn_resnet50_fpn", "fasterrcnn_resnet18_fpn", "fasterrcnn_fpn"} <= set(names)
    model = create_detector("fasterrcnn_fpn", backbone="resnet18", num_classes=3, min_size=128)
    assert (model.model_name, model.model_family, model.num_classes) == ("fasterrcnn_fpn", "fasterrcnn", 3)
    assert model.transform.min_size == (128,)
    with pytest.raises(KeyError, match="did you mean fasterrcnn_resnet50_fpn"):
        create_detector("fasterrcnn_resnet50_fnp")


def test_mobilenet_detector_runs_on_a_small_image():
    model = create_detector("fasterrcnn_mobilenetv3_large_fpn", num_classes=3, **SMALL).eval()
    with torch.no_grad():
        (det,) = model(images(sizes=((96, 128),)))
    assert det["boxes"].shape[1] == 4 and len(det["scores"]) == len(det["labels"])
