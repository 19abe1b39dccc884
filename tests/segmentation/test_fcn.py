"""FCN (Long et al. 2015) as torchvision's fcn_resnet50: parameter counts, state-dict layout, checkpoint loading,
ResNet's dilation option, and Q3 -- a fully convolutional network takes any input size, a fully connected head
does not."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import paperzoo
from paperzoo.registry import create_model
from paperzoo.segmentation.fcn import FCN, FCNHead, FullyConnectedSegmenter, convolutionalize, fcn_backbone
from paperzoo.segmentation.registry import create_segmenter

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------ torchvision's layout
def torchvision_fcn_resnet50_shapes(num_classes: int = 21, aux: bool = True) -> dict[str, tuple[int, ...]]:
    """Key -> shape of torchvision's ``fcn_resnet50`` state dict, written from its layout (ResNet-50 blocks
    (3, 4, 6, 3) of widths 64..512 x4, downsample on each stage's first block, FCNHead(2048) and FCNHead(1024)
    as Sequential(conv, bn, relu, dropout, conv)), not from our model."""
    shapes: dict[str, tuple[int, ...]] = {}

    def bn(prefix: str, c: int) -> None:
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{name}"] = (c,)
        shapes[f"{prefix}.num_batches_tracked"] = ()

    shapes["backbone.conv1.weight"] = (64, 3, 7, 7)
    bn("backbone.bn1", 64)
    in_c = 64
    for stage, (n, planes) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512)), start=1):
        for i in range(n):
            p = f"backbone.layer{stage}.{i}"
            shapes[f"{p}.conv1.weight"] = (planes, in_c, 1, 1)
            bn(f"{p}.bn1", planes)
            shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            bn(f"{p}.bn2", planes)
            shapes[f"{p}.conv3.weight"] = (planes * 4, planes, 1, 1)
            bn(f"{p}.bn3", planes * 4)
            if i == 0:
                shapes[f"{p}.downsample.0.weight"] = (planes * 4, in_c, 1, 1)
                bn(f"{p}.downsample.1", planes * 4)
            in_c = planes * 4
    for head, c in (("classifier", 2048), ("aux_classifier", 1024))[: 2 if aux else 1]:
        shapes[f"{head}.0.weight"] = (c // 4, c, 3, 3)
        bn(f"{head}.1", c // 4)
        shapes[f"{head}.4.weight"] = (num_classes, c // 4, 1, 1)
        shapes[f"{head}.4.bias"] = (num_classes,)
    return shapes


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def fcn50_aux():
    return create_segmenter("fcn_resnet50", aux_loss=True).eval()


def test_fcn_resnet50_has_torchvisions_parameter_counts(fcn50_aux):
    assert n_params(create_segmenter("fcn_resnet50")) == 32_957_013
    assert n_params(fcn50_aux) == 35_322_218


def test_fcn_resnet50_state_dict_has_torchvisions_keys_and_shapes(fcn50_aux):
    ours = {k: tuple(v.shape) for k, v in fcn50_aux.state_dict().items()}
    assert ours == torchvision_fcn_resnet50_shapes(aux=True)
    plain = {k: tuple(v.shape) for k, v in create_segmenter("fcn_resnet50", num_classes=5).state_dict().items()}
    assert plain == torchvision_fcn_resnet50_shapes(num_classes=5, aux=False)


def test_fcn_head_is_conv3x3_bn_relu_dropout_conv1x1_with_a_quarter_of_the_channels():
    head = FCNHead(512, 7)
    assert [type(m) for m in head] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Dropout, nn.Conv2d]
    assert head[0].weight.shape == (128, 512, 3, 3) and head[0].bias is None and head[3].p == 0.1
    assert head[4].weight.shape == (7, 128, 1, 1)


def test_fcn_resnet50_gives_out_and_aux_at_the_input_size_from_stride_8_maps(fcn50_aux):
    x = torch.randn(1, 3, 72, 88)
    maps = fcn50_aux.backbone(x)
    assert [tuple(m.shape) for m in maps] == [(1, 1024, 9, 11), (1, 2048, 9, 11)]  # layer3, layer4 at H/8
    with torch.no_grad():
        out = fcn50_aux(x)
        expected = F.interpolate(fcn50_aux.classifier(maps[-1]), size=(72, 88), mode="bilinear",
                                 align_corners=False)
    assert set(out) == {"out", "aux"} and out["aux"].shape == out["out"].shape == (1, 21, 72, 88)
    torch.testing.assert_close(out["out"], expected)


def test_in_chans_reaches_the_backbone_stem():
    model = create_segmenter("fcn", num_classes=11, in_chans=1)
    assert model.backbone.conv1.weight.shape[1] == 1 and model.in_chans == 1
    assert model(torch.randn(2, 1, 64, 64))["out"].shape == (2, 11, 64, 64)
    with pytest.raises(ValueError, match="expected 1 input channel"):
        model(torch.randn(2, 3, 64, 64))


# ----------------------------------------------------------------------------------------- loading checkpoints
def fake_torchvision_checkpoint(seed: int = 0, num_classes: int = 21) -> dict[str, torch.Tensor]:
    """A state dict in torchvision's layout with random values (BN statistics too), as its COCO file has:
    trained with the auxiliary classifier."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in torchvision_fcn_resnet50_shapes(num_classes, aux=True).items():
        if key.endswith("num_batches_tracked"):
            sd[key] = torch.tensor(100)
        elif key.endswith("running_var"):
            sd[key] = torch.rand(shape, generator=g) + 0.5
        else:
            sd[key] = torch.randn(shape, generator=g) * 0.05
    return sd


def test_a_torchvision_checkpoint_loads_with_every_tensor_in_place(tmp_path, fcn50_aux):
    sd = fake_torchvision_checkpoint()
    path = tmp_path / "fcn_resnet50_coco.pth"
    torch.save(sd, path)
    model = create_segmenter("fcn_resnet50", aux_loss=True)
    paperzoo.load_weights(model, path, source="torchvision")
    got = model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in sd.items()) and set(got) == set(sd)


def test_without_the_aux_classifier_the_checkpoint_loads_and_gives_the_same_out(tmp_path, fcn50_aux):
    sd = fake_torchvision_checkpoint(seed=1)
    path = tmp_path / "coco.pth"
    torch.save(sd, path)
    with_aux = paperzoo.load_weights(create_segmenter("fcn_resnet50", aux_loss=True), path, source="torchvision")
    plain = paperzoo.load_weights(create_segmenter("fcn_resnet50"), path, source="torchvision")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(x)["out"], with_aux.eval()(x)["out"], rtol=0, atol=0)


def test_a_saved_state_dict_round_trips_with_equal_outputs(tmp_path):
    model = create_segmenter("fcn", num_classes=11, aux_loss=True).eval()
    torch.save(model.state_dict(), tmp_path / "fcn.pt")
    again = create_segmenter("fcn", num_classes=11, aux_loss=True)
    paperzoo.load_weights(again, tmp_path / "fcn.pt").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a, b = model(x), again(x)
    assert torch.equal(a["out"], b["out"]) and torch.equal(a["aux"], b["aux"])


# ----------------------------------------------------------------------------------------- ResNet's dilation
@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_dilating_layer3_and_layer4_keeps_output_stride_8(name):
    plain = create_model(name, features_only=True, out_indices=(2, 3, 4))
    dilated = create_model(name, features_only=True, out_indices=(2, 3, 4),
                           replace_stride_with_dilation=(False, True, True))
    x = torch.randn(1, 3, 64, 64)
    assert [m.shape[-1] for m in plain(x)] == [8, 4, 2] and plain.feature_info.reduction() == [8, 16, 32]
    assert [m.shape[-1] for m in dilated(x)] == [8, 8, 8] and dilated.feature_info.reduction() == [8, 8, 8]
    # the dilations torchvision uses: a stage's first block keeps the previous stage's, the others double it
    conv = "conv2" if name == "resnet50" else "conv1"
    assert dilated.layer3[0].get_submodule(conv).dilation == (1, 1)
    assert dilated.layer3[1].get_submodule(conv).dilation == (2, 2)
    assert dilated.layer4[0].get_submodule(conv).dilation == (2, 2)
    assert dilated.layer4[1].get_submodule(conv).dilation == (4, 4)
    assert dilated.layer4[0].get_submodule(conv).stride == (1, 1)


def test_a_dilated_resnet_has_the_same_weights_as_the_plain_one():
    plain = create_model("resnet50")
    dilated = create_model("resnet50", replace_stride_with_dilation=[False, True, True])  # a YAML list works too
    assert {k: v.shape for k, v in plain.state_dict().items()} == {k: v.shape for k, v in dilated.state_dict().items()}


def test_dilation_off_is_exactly_the_plain_resnet():
    torch.manual_seed(0)
    plain = create_model("resnet18", num_classes=10).eval()
    off = create_model("resnet18", num_classes=10, replace_stride_with_dilation=(False, False, False)).eval()
    off.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(plain(x), off(x))
    assert all(m.dilation == (1, 1) and m.padding in ((1, 1), (3, 3), (0, 0))
               for m in off.modules() if isinstance(m, nn.Conv2d))


def test_a_dilated_3x3_is_torchs_dilated_conv_with_padding_keeping_the_size():
    layer3 = create_model("resnet18", replace_stride_with_dilation=(False, True, True)).layer3[1]
    x = torch.randn(1, 256, 9, 7)
    torch.testing.assert_close(layer3.conv2(x), F.conv2d(x, layer3.conv2.weight, padding=2, dilation=2))


@pytest.mark.parametrize("flags", [(True, True), (True, True, True, True), ("yes", True, True)])
def test_replace_stride_with_dilation_needs_one_bool_per_stage_after_the_first(flags):
    with pytest.raises(ValueError, match="replace_stride_with_dilation needs 3 bools"):
        create_model("resnet18", replace_stride_with_dilation=flags)


# ---------------------------------------------------------------------------------- skip layers (Sec. 4.2)
def fcn8s(**kw):
    return create_segmenter("fcn", num_classes=11, width=8, skips=2, replace_stride_with_dilation=None, **kw)


def test_skip_layers_score_layer3_and_layer2_of_an_undilated_backbone_back_to_stride_4():
    model, plain = fcn8s(), create_segmenter("fcn", num_classes=11, width=8)
    assert model.backbone.feature_info.reduction() == [4, 8, 16]  # layer2, layer3, layer4 on the small-input stem
    assert model.output_stride == plain.output_stride == 4
    # the same backbone and head; each skip adds one 1x1 conv to 11 classes (layer3: 32 channels, layer2: 16)
    assert n_params(model) - n_params(plain) == (32 + 1) * 11 + (16 + 1) * 11
    assert [tuple(s.weight.shape) for s in model.skips] == [(11, 32, 1, 1), (11, 16, 1, 1)]  # deepest first


def test_skip_layers_start_at_zero_so_the_net_starts_from_the_coarse_predictions():
    torch.manual_seed(0)
    model = fcn8s().eval()
    assert all(not p.any() for s in model.skips for p in s.parameters())
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        coarse = model.classifier(model.backbone(x)[-1])  # (2, 11, 4, 3) at stride 16
        chain = F.interpolate(F.interpolate(coarse, size=(8, 6), mode="bilinear"), size=(16, 12), mode="bilinear")
        torch.testing.assert_close(model(x)["out"], F.interpolate(chain, size=(64, 48), mode="bilinear"))


def test_skip_layers_add_each_finer_maps_scores_to_the_upsampled_coarser_ones():
    torch.manual_seed(0)
    model = fcn8s(aux_loss=True).eval()
    for s in model.skips:
        nn.init.normal_(s.weight), nn.init.normal_(s.bias)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        layer2, layer3, layer4 = model.backbone(x)  # strides 4, 8, 16
        up = lambda t, ref: F.interpolate(t, size=ref.shape[-2:], mode="bilinear")  # noqa: E731
        s16 = model.classifier(layer4)
        s8 = up(s16, layer3) + F.conv2d(layer3, model.skips[0].weight, model.skips[0].bias)
        s4 = up(s8, layer2) + F.conv2d(layer2, model.skips[1].weight, model.skips[1].bias)
        out = model(x)
        torch.testing.assert_close(out["out"], up(s4, x))
        torch.testing.assert_close(out["aux"], up(model.aux_classifier(layer3), x))  # aux stays on layer3


@pytest.mark.parametrize("skips, message", [(-1, "cannot be negative"), (5, "it has 5 levels")])
def test_a_bad_number_of_skip_layers_is_a_one_line_value_error(skips, message):
    with pytest.raises(ValueError, match=message):
        create_segmenter("fcn", num_classes=3, width=8, skips=skips, replace_stride_with_dilation=None)


# ---------------------------------------------------------------------------- Q3: any input size, or only one
SIZES = [(64, 64), (96, 80), (128, 128)]


def test_q3_one_fcn_takes_every_input_size_and_returns_maps_of_that_size():
    model = create_segmenter("fcn", num_classes=11, aux_loss=True).eval()
    assert model.output_stride == 4  # the scenes' default: 32x32 score maps for a 128x128 scene
    with torch.no_grad():
        for h, w in SIZES:
            out = model(torch.randn(1, 3, h, w))
            assert out["out"].shape == out["aux"].shape == (1, 11, h, w)


def test_q3_a_fully_connected_head_takes_only_the_size_it_was_built_for():
    backbone = fcn_backbone("resnet18", aux_loss=False, small_input=True, stem_stride=2, width=8)
    model = FullyConnectedSegmenter(backbone, num_classes=11, input_size=(64, 64)).eval()
    assert model.fc.in_features == 64 * 16 * 16  # layer4 of width 8: 64 channels at stride 4 (dilated)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64))["out"].shape == (1, 11, 64, 64)
        for h, w in SIZES[1:]:
            with pytest.raises(ValueError, match=rf"built for 64x64 inputs: .*a {h}x{w} input gives .*only a fully "
                                                 "convolutional network takes any input size"):
                model(torch.randn(1, 3, h, w))
        # without the check, the matrix product itself refuses: the weight has C*h*w columns, fixed
        with pytest.raises(RuntimeError, match="cannot be multiplied"):
            model.fc(backbone(torch.randn(1, 3, 96, 80))[-1].flatten(1))


def test_convolutionalizing_a_fully_connected_layer_keeps_its_outputs_and_slides_it_over_larger_inputs():
    torch.manual_seed(0)
    fc = nn.Linear(4 * 3 * 3, 5)
    conv = convolutionalize(fc, (4, 3, 3))
    x = torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(conv(x).flatten(1), fc(x.flatten(1)))
    big = torch.randn(1, 4, 7, 6)
    heat = conv(big)  # (1, 5, 5, 4): fc's scores at every 3x3 window (Sec. 3.1, Fig. 2)
    assert heat.shape == (1, 5, 5, 4)
    torch.testing.assert_close(heat[0, :, 2, 1], fc(big[:, :, 2:5, 1:4].flatten(1))[0])
    with pytest.raises(ValueError, match="not C\\*h\\*w"):
        convolutionalize(fc, (4, 2, 3))


def test_a_backbone_without_resnets_options_is_refused_in_one_line_and_fcn_wraps_any_feature_model():
    with pytest.raises(ValueError, match="does not take these arguments"):
        create_segmenter("fcn", backbone="mobilenetv2_100", num_classes=3)
    model = FCN(create_model("resnet18", features_only=True, out_indices=(-1,)), FCNHead(512, 3))
    assert model(torch.randn(1, 3, 64, 64))["out"].shape == (1, 3, 64, 64)


def test_q3_picture_shows_one_fcn_on_three_sizes_and_what_the_fc_head_does(tmp_path):
    import numpy as np
    from PIL import Image

    from paperzoo.viz.segmentation import _fc_verdict, plot_any_input_size

    model = create_segmenter("fcn", num_classes=11, width=8)
    fc = FullyConnectedSegmenter(fcn_backbone("resnet18", aux_loss=False, small_input=True, stem_stride=2, width=8),
                                 num_classes=11, input_size=(64, 64))
    images = [torch.rand(3, h, w) for h, w in SIZES]
    path = plot_any_input_size(model, images, tmp_path / "q3.png", mean=(0.5,) * 3, std=(0.25,) * 3, fc_model=fc)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 300
        assert np.asarray(im.convert("RGB")).std() > 5
    assert model.training and fc.training  # modes restored
    assert [_fc_verdict(fc, im[None]) for im in images] == [
        "fully connected head: runs", "fully connected head: refused (built for 64x64)",
        "fully connected head: refused (built for 64x64)"]
