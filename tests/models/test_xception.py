"""Xception: the flows of Fig. 5, separable convs without an intermediate non-linearity, residual modules."""

import torch
import torch.nn as nn

import paperzoo
from paperzoo.models.xception import SeparableConv2d, XceptionModule


def _meta_model(**kw):
    with torch.device("meta"):
        return paperzoo.create_model("xception", **kw).eval()


def test_flows_have_the_shapes_of_fig5_at_299():
    model = _meta_model()
    x = torch.empty(1, 3, 299, 299, device="meta")
    x = model.conv2(model.conv1(x))
    assert x.shape == (1, 64, 147, 147)  # two unpadded 3x3 convs, the first with stride 2
    x = model.entry_flow(x)
    assert x.shape == (1, 728, 19, 19)  # "19x19x728 feature maps" leave the entry flow
    x = model.middle_flow(x)
    assert x.shape == (1, 728, 19, 19)
    x = model.exit_flow(x)
    assert x.shape == (1, 2048, 10, 10)
    assert len(model.middle_flow) == 8  # "repeated 8 times"


def test_36_convolutional_layers_in_14_modules():
    # Sec. 3: "36 convolutional layers forming the feature extraction base ... structured into 14 modules,
    # all of which have linear residual connections around them, except for the first and last modules"
    model = _meta_model()
    seps = [m for m in model.modules() if isinstance(m, SeparableConv2d)]
    assert 2 + len(seps) == 36  # the two stem convs + every separable conv (a 1x1 shortcut is not a layer)
    modules = [m for m in model.modules() if isinstance(m, XceptionModule)]
    assert len(modules) == 12  # + the stem module and the final separable-conv module = 14


def test_separable_conv_is_linear_with_nothing_between_depthwise_and_pointwise():
    # Sec. 4.7 / Fig. 10: the best Xception has no non-linearity between the depthwise and pointwise steps
    torch.manual_seed(0)
    sep = SeparableConv2d(8, 16)
    assert [type(m) for m in sep.children()] == [nn.Conv2d, nn.Conv2d]
    assert sep.depthwise.groups == 8 and sep.depthwise.kernel_size == (3, 3)
    assert sep.pointwise.kernel_size == (1, 1)
    a, b = torch.randn(2, 8, 5, 5), torch.randn(2, 8, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(sep(2 * a - b), 2 * sep(a) - sep(b), rtol=1e-5, atol=1e-5)
    # and its cost: 3*3*M + M*N weights instead of 3*3*M*N
    assert sum(p.numel() for p in sep.parameters()) == 9 * 8 + 8 * 16


def test_middle_module_is_identity_plus_residual():
    torch.manual_seed(0)
    module = XceptionModule(16, 16, reps=3).eval()
    assert module.shortcut is None
    nn.init.zeros_(module.layers[-1].bn.weight)
    nn.init.zeros_(module.layers[-1].bn.bias)
    x = torch.randn(2, 16, 7, 7)
    with torch.no_grad():
        torch.testing.assert_close(module(x), x)  # the residual branch is zero: output = input
    # and the first ReLU does not overwrite the input that the shortcut still needs
    y = torch.randn(2, 16, 7, 7)
    y0 = y.clone()
    with torch.no_grad():
        module(y)
    torch.testing.assert_close(y, y0)


def test_entry_and_exit_modules_project_the_shortcut():
    entry = XceptionModule(64, 128, reps=2, stride=2, start_with_relu=False)
    assert isinstance(entry.layers[0].act, nn.Identity)  # first module starts with a separable conv
    assert entry.shortcut.conv.kernel_size == (1, 1) and entry.shortcut.conv.stride == (2, 2)
    exit_module = XceptionModule(728, 1024, reps=2, stride=2, grow_first=False)
    widths = [(m.conv.depthwise.in_channels, m.conv.pointwise.out_channels) for m in exit_module.layers]
    assert widths == [(728, 728), (728, 1024)]  # exit flow: SeparableConv 728, then 1024


def test_small_input_keeps_resolution():
    model = _meta_model(small_input=True)
    out = model.forward_features(torch.empty(1, 3, 32, 32, device="meta"))
    assert out.shape == (1, 2048, 4, 4)  # total stride 8
    assert model.min_input_size == (8, 8)
    assert _meta_model().min_input_size == (32, 32)
