"""``create_model(name, features_only=True, out_indices=...)``: every CNN and Swin gives its multi-scale maps.

Registry-wide, on the meta device (shapes only, so every model runs in the default suite): the maps' shapes are
feature_info's channels and input size / reduction; the features model holds the classifier's own modules under
the same names, without the head, and every parameter it holds takes part in the maps. With real numbers (one
model per family by default, every model in the slow suite): the last level is the map forward_features returns
(or the map its last layers turn into it), and no later layer changes an earlier level's map in place.
"""

import math

import pytest
import torch
import torch.nn.functional as F

import paperzoo
from paperzoo.models.features import FeatureExtractor
from paperzoo.registry import get_entry, list_models

FEATURE_MODELS = [n for n in list_models(kind="image") if get_entry(n).family != "vit"]
# unpadded ("valid") stem convolutions shrink the maps a little below input / reduction
VALID_CONVS = {"inception_v3": 299, "xception": 64}
# one model per family (the CIFAR ResNet beside the ImageNet one) computes real maps in the default suite
FAST = {"resnet18", "resnet20", "seresnet50", "sasa_resnet26", "densenet121", "efficientnet_b0", "mobilenetv1_025",
        "mobilenetv2_050", "mobilenetv3_small_100", "shufflenet_v1_g1", "shufflenet_v2_x0_5", "xception",
        "inception_v3", "swin_tiny_patch2_window4_32"}


def _to_forward_features(model, last):
    """What the classifier's forward_features does after the last level."""
    if model.model_family == "swin":  # the final LayerNorm, on channels-last maps
        return model.norm(last.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    if model.model_family in ("efficientnet", "mobilenetv2"):  # the 1x1 head conv is not a level (as timm)
        return model.head(last)
    return last


def _levels_copied_as_made(features, x):
    """The extractor's steps run one by one, each level's map copied as soon as it exists."""
    maps = []
    for level in features.levels:
        for step in level.steps:
            x = features.get_submodule(step)(x) if isinstance(step, str) else step(x)
        maps.append((x.permute(0, 3, 1, 2) if level.channels_last else x).clone())
    return maps


def test_every_family_has_a_model_checked_with_real_numbers():
    assert {get_entry(n).family for n in FAST} == {get_entry(n).family for n in FEATURE_MODELS}


@pytest.mark.parametrize("name", FEATURE_MODELS)
def test_maps_have_feature_info_shapes_and_the_model_holds_no_head(name):
    size = VALID_CONVS.get(name, 64)
    with torch.device("meta"):
        model = paperzoo.create_model(name, num_classes=5)
        features = FeatureExtractor(model)
        maps = features(torch.randn(2, 3, size, size))
    info = features.feature_info
    assert len(maps) == len(info) == len(model.feature_levels())
    for f, c, r in zip(maps, info.channels(), info.reduction()):
        assert f.shape[:2] == (2, c), (name, f.shape, c)
        if name in VALID_CONVS:
            assert 2 ** round(math.log2(size / f.shape[2])) == r, (name, f.shape, r)
        else:
            assert f.shape[2:] == (size // r, size // r), (name, f.shape, r)
    own = features.state_dict()
    assert own.keys() <= model.state_dict().keys()  # the classifier's names: its checkpoints fit
    assert not [k for k in own if any(k.startswith(h + ".") for h in model.head_names)]
    sum(f.pow(2).mean() for f in maps).backward()
    assert all(p.grad is not None for p in features.parameters()), "a kept parameter takes no part in the maps"


@pytest.mark.parametrize("name", [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in FEATURE_MODELS])
def test_last_level_is_forward_features_and_no_map_is_changed_in_place(name):
    torch.manual_seed(0)
    model = paperzoo.create_model(name, num_classes=5).eval()
    features = FeatureExtractor(model)  # shares the classifier's modules (and so its weights)
    x = torch.randn(1, 3, 80, 80)  # inception_v3's minimum is 75
    with torch.no_grad():
        maps = features(x)
        for f, ref in zip(maps, _levels_copied_as_made(features, x)):
            torch.testing.assert_close(f, ref, rtol=0, atol=0)
        torch.testing.assert_close(_to_forward_features(model, maps[-1]), model.forward_features(x))


def test_create_model_features_only_returns_the_requested_levels_and_drops_later_stages():
    features = paperzoo.create_model("resnet50", features_only=True, out_indices=(1, 2)).eval()
    with torch.no_grad():
        maps = features(torch.randn(1, 3, 64, 64))
    assert [tuple(f.shape) for f in maps] == [(1, 256, 16, 16), (1, 512, 8, 8)]
    assert features.feature_info.channels() == [256, 512] and features.feature_info.reduction() == [4, 8]
    assert features.feature_info.module_name() == ["layer1", "layer2"]
    assert [d["num_chs"] for d in features.feature_info] == [256, 512]
    names = {k.split(".")[0] for k in features.state_dict()}
    assert names == {"conv1", "bn1", "layer1", "layer2"}  # no layer3/4, no fc


def test_unused_blocks_inside_a_container_are_dropped_and_the_rest_keep_their_names():
    model = paperzoo.create_model("efficientnet_b0")
    features = FeatureExtractor(model, out_indices=(-4, 0))  # negative indices count from the last level
    assert features.out_indices == (0, 1)
    stages = {k.split(".")[1] for k in features.state_dict() if k.startswith("stages.")}
    assert stages == {"0", "1"}
    sd = model.state_dict()
    assert all(torch.equal(v, sd[k]) for k, v in features.state_dict().items())


def test_swin_maps_are_channels_first_at_strides_4_to_32():
    features = paperzoo.create_model("swin_tiny_patch2_window4_32", features_only=True, num_classes=0).eval()
    with torch.no_grad():
        maps = features(torch.randn(1, 3, 32, 32))
    assert [tuple(f.shape) for f in maps] == [(1, 96, 16, 16), (1, 192, 8, 8), (1, 384, 4, 4), (1, 768, 2, 2)]
    assert features.feature_info.reduction() == [2, 4, 8, 16]  # patch 2 for small images


def test_small_input_keeps_the_levels_at_smaller_reductions():
    features = paperzoo.create_model("resnet18", features_only=True, small_input=True, in_chans=1)
    assert features.feature_info.reduction() == [1, 1, 2, 4, 8]
    with torch.no_grad():
        assert [f.shape[-1] for f in features.eval()(torch.randn(1, 1, 32, 32))] == [32, 32, 16, 8, 4]


def test_features_model_checks_its_input_like_the_classifier():
    features = paperzoo.create_model("resnet18", features_only=True)
    with pytest.raises(ValueError, match=r"resnet18.*input channel"):
        features(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match=r"resnet18.*minimum size is 32x32"):
        features(torch.randn(1, 3, 16, 16))


def test_bad_requests_are_clear_errors():
    with pytest.raises(ValueError, match=r"vit_tiny_patch16_224 has no multi-scale feature maps"):
        paperzoo.create_model("vit_tiny_patch16_224", features_only=True)
    with pytest.raises(ValueError, match=r"out_indices \(1, 5\) must be distinct levels in 0\.\.4"):
        paperzoo.create_model("resnet18", features_only=True, out_indices=(1, 5))
    with pytest.raises(ValueError, match="needs features_only=True"):
        paperzoo.create_model("resnet18", out_indices=(1, 2))
    with pytest.raises(ValueError, match="gpt_mini is not an image classifier"):
        paperzoo.create_model("gpt_mini", features_only=True)


def test_inception_normalization_for_googles_weights_runs_before_the_first_level():
    model = paperzoo.create_model("inception_v3", transform_input=True, small_input=True, aux_logits=False).eval()
    features = FeatureExtractor(model)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(features(x)[-1], model.forward_features(x))  # which re-normalizes first


def test_a_loaded_classifier_gives_its_weights_to_its_features():
    """Fine-tuned or converted weights: load them into the classifier, then take its features."""
    model = paperzoo.create_model("mobilenetv3_small_100", num_classes=3).eval()
    features = FeatureExtractor(model, out_indices=(2, 4)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        last = features(x)[-1]
    torch.testing.assert_close(last, model.forward_features(x))
    assert F.adaptive_avg_pool2d(last, 1).shape == (1, 576, 1, 1)
