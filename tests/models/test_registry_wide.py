"""Every registered image model: reference parameter count, any num_classes / in_chans, small and non-square
inputs, deterministic eval, the forward_features/forward_head split, channels_last, clear input errors."""

import pytest
import torch

import paperzoo
from paperzoo.registry import get_entry, list_models

IMAGE_MODELS = list_models(kind="image")
WITH_REF = [n for n in IMAGE_MODELS if get_entry(n).ref_params is not None]
HEAVY = 100_000_000  # models above this many parameters only run forward passes in the slow suite


def _maybe_slow(names):
    out = []
    for n in names:
        ref = get_entry(n).ref_params or 0
        out.append(pytest.param(n, marks=pytest.mark.slow) if ref > HEAVY else n)
    return out


def test_registry_is_populated():
    assert len(IMAGE_MODELS) > 0


@pytest.mark.parametrize("name", WITH_REF)
def test_param_count_equals_reference(name):
    with torch.device("meta"):
        model = paperzoo.create_model(name)
    assert paperzoo.count_params(model) == get_entry(name).ref_params


@pytest.mark.parametrize("name", _maybe_slow(IMAGE_MODELS))
def test_small_grayscale_input_any_num_classes(name):
    model = paperzoo.create_model(name, num_classes=7, in_chans=1, small_input=True).eval()
    for h, w in [(28, 28), (32, 32), (28, 36)]:
        with torch.no_grad():
            out = model(torch.randn(2, 1, h, w))
        assert out.shape == (2, 7), (name, h, w)
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", _maybe_slow(IMAGE_MODELS))
def test_default_stem_min_size_non_square_deterministic_and_split(name):
    model = paperzoo.create_model(name, num_classes=5).eval()
    mh, mw = model.min_input_size
    x = torch.randn(1, 3, mh, mw + 8)
    with torch.no_grad():
        a = model(x)
        b = model(x)
        feats = model.forward_features(x)
        c = model.forward_head(feats)
        pooled = model.forward_head(feats, pre_logits=True)
    assert a.shape == (1, 5)
    assert torch.equal(a, b), "eval mode must be deterministic"
    torch.testing.assert_close(a, c)
    assert pooled.shape == (1, model.num_features)


@pytest.mark.parametrize("name", _maybe_slow(IMAGE_MODELS))
def test_channels_last_gives_same_output(name):
    model = paperzoo.create_model(name, num_classes=4, small_input=True).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        out = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", _maybe_slow(IMAGE_MODELS))
def test_wrong_channels_and_too_small_raise_clear_errors(name):
    model = paperzoo.create_model(name, num_classes=3, in_chans=1).eval()
    mh, mw = model.min_input_size
    with pytest.raises(ValueError, match=rf"{name}.*channel"):
        model(torch.randn(1, 3, mh, mw))
    if mh > 1:
        with pytest.raises(ValueError, match=rf"{name}.*minimum size is {mh}x{mw}"):
            model(torch.randn(1, 1, mh - 1, mw))


def test_unknown_model_name_lists_close_matches():
    with pytest.raises(KeyError, match="resnet50"):
        paperzoo.create_model("resnet05")


def test_list_models_filters_by_pattern_and_family():
    assert "resnet50" in paperzoo.list_models("resnet*")
    assert all(get_entry(n).family == "resnet" for n in paperzoo.list_models(family="resnet"))
    names = paperzoo.list_models("resnet*")
    assert names.index("resnet18") < names.index("resnet50") < names.index("resnet101")  # natural order
