"""ResNet options beyond the registered layouts: the small-input stem's stride."""

import pytest
import torch

import paperzoo


def test_stem_stride_2_halves_stage1_resolution_and_keeps_flops_at_double_width():
    full = paperzoo.create_model("resnet18", small_input=True, width=16, num_classes=10, in_chans=1)
    half = paperzoo.create_model("resnet18", small_input=True, width=32, stem_stride=2, num_classes=10, in_chans=1)
    x = torch.randn(2, 1, 28, 28)
    f_full, f_half = {}, {}
    full.layer1.register_forward_hook(lambda m, i, o: f_full.update(l1=o.shape))  # update returns None
    half.layer1.register_forward_hook(lambda m, i, o: f_half.update(l1=o.shape))
    assert full(x).shape == half(x).shape == (2, 10)
    assert f_full["l1"] == (2, 16, 28, 28)
    assert f_half["l1"] == (2, 32, 14, 14)  # same 3x3-conv FLOPs: (28² · 16²) == (14² · 32²)
    assert half.min_input_size == (16, 16) and full.min_input_size == (8, 8)
    with pytest.raises(ValueError, match="input"):
        half(torch.randn(1, 1, 8, 8))


def test_stem_stride_is_refused_outside_the_small_input_stem_and_must_be_1_or_2():
    with pytest.raises(ValueError, match="small_input"):
        paperzoo.create_model("resnet18", stem_stride=2)
    with pytest.raises(ValueError, match="1 or 2"):
        paperzoo.create_model("resnet18", small_input=True, stem_stride=3)
