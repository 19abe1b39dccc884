"""Inception-v3: grid sizes of Table 1, factorized convolutions, the auxiliary head, exact minimum sizes."""

import pytest
import torch

import paperzoo
from paperzoo.models.inception import InceptionOutputs


def _meta_model(**kw):
    with torch.device("meta"):
        return paperzoo.create_model("inception_v3", **kw)


def test_param_counts_with_and_without_aux_head():
    assert paperzoo.count_params(_meta_model()) == 23_834_568  # torchvision, aux_logits=False
    assert paperzoo.count_params(_meta_model(aux_logits=True)) == 27_161_264  # torchvision, aux_logits=True


def test_grid_sizes_of_table1_at_299():
    model = _meta_model().eval()
    shapes = {}
    for name in ("Conv2d_4a_3x3", "Mixed_5d", "Mixed_6e", "Mixed_7c"):
        getattr(model, name).register_forward_hook(lambda m, i, o, n=name: shapes.__setitem__(n, tuple(o.shape[1:])))
    model(torch.empty(1, 3, 299, 299, device="meta"))
    assert shapes == {
        "Conv2d_4a_3x3": (192, 71, 71),
        "Mixed_5d": (288, 35, 35),  # 3 x Inception (Fig. 5) at 35x35x288
        "Mixed_6e": (768, 17, 17),  # Inception (Fig. 6) at 17x17x768
        "Mixed_7c": (2048, 8, 8),  # 2 x Inception (Fig. 7) at 8x8x2048
    }


def test_factorized_convolutions():
    model = _meta_model()
    fig6 = model.Mixed_6b  # 7x7 as 1x7 then 7x1 (Sec. 3.2)
    assert fig6.branch7x7_2.conv.kernel_size == (1, 7) and fig6.branch7x7_3.conv.kernel_size == (7, 1)
    fig5 = model.Mixed_5b  # 5x5 as two 3x3 (Sec. 3.1)
    assert fig5.branch3x3dbl_2.conv.kernel_size == (3, 3) and fig5.branch3x3dbl_3.conv.kernel_size == (3, 3)
    fig7 = model.Mixed_7b  # 1x3 and 3x1 side by side (expanded filter bank)
    assert fig7.branch3x3_2a.conv.kernel_size == (1, 3) and fig7.branch3x3_2b.conv.kernel_size == (3, 1)
    assert model.Mixed_5b.branch1x1.bn.eps == 1e-3  # TF-slim BatchNorm epsilon


def test_aux_head_only_in_training_and_only_when_enabled():
    torch.manual_seed(0)
    model = paperzoo.create_model("inception_v3", num_classes=5, aux_logits=True, small_input=True)
    x = torch.randn(2, 3, 9, 9)  # small stem: Mixed_6e at 4x4, pooled adaptively to 5x5 for the aux head
    out = model.train()(x)
    assert isinstance(out, InceptionOutputs)
    assert out.logits.shape == (2, 5) and out.aux_logits.shape == (2, 5)
    (out.logits.sum() + 0.3 * out.aux_logits.sum()).backward()  # gradients reach the aux head
    assert model.AuxLogits.fc.weight.grad is not None
    with torch.no_grad():
        assert model.eval()(x).shape == (2, 5)  # eval: plain logits
    plain = _meta_model(num_classes=5)
    assert plain.AuxLogits is None
    assert plain.train()(torch.empty(2, 3, 80, 80, device="meta")).shape == (2, 5)


def test_aux_head_at_299_uses_the_fixed_5x5_stride_3_pool():
    model = _meta_model(aux_logits=True).train()
    out = model(torch.empty(2, 3, 299, 299, device="meta"))
    assert out.aux_logits.shape == (2, 1000)
    assert isinstance(model.AuxLogits.pool, torch.nn.AvgPool2d)


def test_minimum_input_sizes_are_exact():
    model = _meta_model().eval()
    assert model.min_input_size == (75, 75)
    model.forward_features(torch.empty(1, 3, 75, 75, device="meta"))
    with pytest.raises(RuntimeError):  # without the check, 74x74 fails deep inside (Mixed_7a)
        model.forward_features(torch.empty(1, 3, 74, 75, device="meta"))

    aux = _meta_model(aux_logits=True)
    assert aux.eval().min_input_size == (75, 75)  # eval never runs the aux head
    assert aux.train().min_input_size == (299, 299)
    with pytest.raises(ValueError, match="minimum size is 299x299"):
        aux(torch.empty(1, 3, 298, 299, device="meta"))
    with pytest.raises(RuntimeError):  # 298 would give Mixed_6e 16x16, too small for 5x5/3 pool + 5x5 conv
        aux.AuxLogits(aux._forward_to_aux(torch.empty(1, 3, 298, 299, device="meta")))

    small = _meta_model(small_input=True).eval()
    assert small.min_input_size == (7, 7)
    assert small.forward_features(torch.empty(1, 3, 7, 7, device="meta")).shape[-2:] == (1, 1)
    with pytest.raises(RuntimeError):
        small.forward_features(torch.empty(1, 3, 6, 7, device="meta"))


def test_small_input_keeps_resolution_to_mixed_5b():
    model = _meta_model(small_input=True).eval()
    shapes = {}
    for name in ("Mixed_5b", "Mixed_6e", "Mixed_7c"):
        getattr(model, name).register_forward_hook(lambda m, i, o, n=name: shapes.__setitem__(n, tuple(o.shape[2:])))
    model(torch.empty(1, 3, 32, 32, device="meta"))
    assert shapes == {"Mixed_5b": (32, 32), "Mixed_6e": (15, 15), "Mixed_7c": (7, 7)}


def test_transform_input_needs_rgb():
    with pytest.raises(ValueError, match="in_chans=3"):
        paperzoo.create_model("inception_v3", in_chans=1, transform_input=True)
