"""Paper facts of MobileNet V1 / V2 / V3 (the registry-wide suite covers shapes, inputs and param counts)."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import paperzoo
from paperzoo.layers import (
    ConvNormAct,
    DepthwiseSeparableConv,
    HardSigmoid,
    HardSwish,
    InvertedResidual,
    separable_conv_cost,
)
from paperzoo.models.mobilenet_v1 import TABLE_1
from paperzoo.models.mobilenet_v2 import TABLE_2
from paperzoo.models.mobilenet_v3 import TABLE_1_LARGE, TABLE_2_SMALL, se_width


def _meta(name, **kw):
    with torch.device("meta"):
        return paperzoo.create_model(name, **kw)


def _madds(name, **kw):
    return paperzoo.count_flops(paperzoo.create_model(name, **kw), (1, 3, 224, 224)) / 2  # FLOPs = 2 x mult-adds


# ---------------------------------------------------------------------------------------------------- V1
def test_v1_is_table_1_28_layers_of_depthwise_separable_convs():
    m = _meta("mobilenetv1_100")
    assert len(m.blocks) == len(TABLE_1) == 13
    convs = [c for c in m.modules() if isinstance(c, nn.Conv2d)]
    linears = [c for c in m.modules() if isinstance(c, nn.Linear)]
    assert len(convs) + len(linears) == 28  # "counting depthwise and pointwise convolutions as separate layers"
    for blk in m.blocks:
        assert isinstance(blk, DepthwiseSeparableConv) and not blk.has_residual  # a plain stack, no shortcuts
        dw, pw = blk.dw.conv, blk.pw.conv
        assert dw.groups == dw.in_channels == dw.out_channels and dw.kernel_size == (3, 3)
        assert pw.kernel_size == (1, 1) and pw.groups == 1
        assert isinstance(blk.dw.act, nn.ReLU6) and isinstance(blk.pw.act, nn.ReLU6)  # BN + nonlinearity after both
    assert [b.pw.conv.out_channels for b in m.blocks] == [r.c for r in TABLE_1]
    assert [b.dw.conv.stride[0] for b in m.blocks] == [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1]


@pytest.mark.parametrize("name,alpha,madds_m,params_m", [
    ("mobilenetv1_100", 1.0, 569, 4.2), ("mobilenetv1_075", 0.75, 325, 2.6),
    ("mobilenetv1_050", 0.5, 149, 1.3), ("mobilenetv1_025", 0.25, 41, 0.5),
])
def test_v1_width_multiplier_matches_table_6(name, alpha, madds_m, params_m):
    # Table 6 of the paper: mult-adds and parameters of MobileNet-224 at each width multiplier.
    assert _meta(name).cfg.alpha == alpha
    assert paperzoo.count_params(_meta(name)) / 1e6 == pytest.approx(params_m, abs=0.05)
    assert _madds(name) / 1e6 == pytest.approx(madds_m, rel=0.01)


def test_v1_depthwise_separable_vs_full_convolution_table_4():
    # Table 4: the same network with full 3x3 convs has 29.3M weights and 4866M mult-adds; depthwise separable
    # layers cut that to 4.2M and 569M (Eq. 5 per layer: 1/N + 1/k²). Stem and FC are shared by both.
    std_p = sep_p = 3 * 3 * 3 * 32 + 1024 * 1000
    std_m = sep_m = 3 * 3 * 3 * 32 * 112 * 112 + 1024 * 1000
    side, m = 112, 32
    for row in TABLE_1:
        side //= row.s
        cost = separable_conv_cost(m, row.c, 3, side, side)
        assert cost["separable_madds"] / cost["standard_madds"] == pytest.approx(1 / row.c + 1 / 9)
        std_p, sep_p = std_p + cost["standard_params"], sep_p + cost["separable_params"]
        std_m, sep_m = std_m + cost["standard_madds"], sep_m + cost["separable_madds"]
        m = row.c
    assert std_p / 1e6 == pytest.approx(29.3, abs=0.05) and std_m / 1e6 == pytest.approx(4866, rel=1e-3)
    assert sep_p / 1e6 == pytest.approx(4.2, abs=0.05) and sep_m / 1e6 == pytest.approx(569, rel=1e-3)
    conv_params = sum(c.weight.numel() for c in _meta("mobilenetv1_100").modules() if isinstance(c, nn.Conv2d))
    assert conv_params + 1024 * 1000 == sep_p  # our model holds exactly those weights (plus BN and FC bias)


def test_v1_paper_activation_option():
    m = paperzoo.create_model("mobilenetv1_025", act=nn.ReLU)  # the paper's Fig. 3 uses ReLU
    assert all(isinstance(b.pw.act, nn.ReLU) for b in m.blocks)


# ---------------------------------------------------------------------------------------------------- V2
def test_v2_stages_follow_table_2_and_bottlenecks_are_linear():
    m = _meta("mobilenetv2_100")
    assert [len(s) for s in m.stages] == [r.n for r in TABLE_2] == [1, 2, 3, 4, 3, 3, 1]
    in_chs = 32
    for row, stage in zip(TABLE_2, m.stages):
        for j, blk in enumerate(stage):
            assert isinstance(blk, InvertedResidual)
            assert blk.dw.conv.stride[0] == (row.s if j == 0 else 1)
            assert blk.dw.conv.out_channels == in_chs * row.t  # expansion t
            assert isinstance(blk.dw.act, nn.ReLU6)
            assert isinstance(blk.project.act, nn.Identity)  # linear bottleneck (Sec. 3.2)
            assert blk.has_residual == (j > 0)  # shortcut between bottlenecks when shapes match
            in_chs = row.c
    assert isinstance(m.stages[0][0].expand, nn.Identity)  # t = 1: no expansion layer
    assert m.head.conv.out_channels == m.num_features == 1280


def test_v2_matches_paper_cost_and_keeps_1280_head_when_thinned():
    assert _madds("mobilenetv2_100") / 1e6 == pytest.approx(300, rel=0.01)  # Table 4: 300M MAdds, 3.4M params
    assert paperzoo.count_params(_meta("mobilenetv2_100")) / 1e6 == pytest.approx(3.4, abs=0.11)
    assert _meta("mobilenetv2_050").num_features == 1280  # not thinned for alpha < 1
    assert _meta("mobilenetv2_140").num_features == 1792  # 1280 * 1.4


def test_v2_residual_is_identity_plus_branch():
    blk = paperzoo.create_model("mobilenetv2_050").eval().stages[2][1]
    x = torch.randn(1, blk.dw.conv.in_channels // 6, 8, 8)
    with torch.no_grad():
        branch = blk.project(blk.dw(blk.expand(x)))
        torch.testing.assert_close(blk(x), x + branch)


# ---------------------------------------------------------------------------------------------------- V3
def test_h_swish_and_h_sigmoid_are_the_papers_formulas():
    x = torch.linspace(-6, 6, 241)
    torch.testing.assert_close(HardSwish()(x), x * F.relu6(x + 3) / 6)
    torch.testing.assert_close(HardSwish()(x), F.hardswish(x))
    torch.testing.assert_close(HardSigmoid()(x), F.hardsigmoid(x))


@pytest.mark.parametrize("name,table,se_widths", [
    ("mobilenetv3_large_100", TABLE_1_LARGE, [24, 32, 32, 120, 168, 168, 240, 240]),
    ("mobilenetv3_small_100", TABLE_2_SMALL, [8, 24, 64, 64, 32, 40, 72, 144, 144]),
])
def test_v3_se_widths_gate_and_placement(name, table, se_widths):
    m = _meta(name)
    got = [b.se.fc1.out_channels for b in m.blocks if not isinstance(b.se, nn.Identity)]
    assert got == se_widths == [se_width(r.exp) for r in table if r.se]  # make_divisible(exp/4, 8)
    for row, blk in zip(table, m.blocks):
        assert blk.dw.conv.out_channels == row.exp and blk.project.conv.out_channels == row.out
        assert blk.dw.conv.kernel_size == (row.k, row.k)
        if row.se:
            assert isinstance(blk.se.gate, HardSigmoid) and isinstance(blk.se.act, nn.ReLU)
            assert blk.se.fc1.in_channels == row.exp  # SE acts on the expanded, depthwise-filtered features


def test_v3_se_sits_between_depthwise_and_projection():
    blk = paperzoo.create_model("mobilenetv3_small_100").eval().blocks[4]
    order = []
    for name in ("expand", "dw", "se", "project"):
        getattr(blk, name).register_forward_hook(lambda *_, n=name: order.append(n))
    blk(torch.randn(1, 40, 8, 8))
    assert order == ["expand", "dw", "se", "project"]


@pytest.mark.parametrize("name,table,n_relu", [("mobilenetv3_large_100", TABLE_1_LARGE, 6),
                                              ("mobilenetv3_small_100", TABLE_2_SMALL, 3)])
def test_v3_h_swish_placement(name, table, n_relu):
    m = _meta(name)
    acts = [type(b.dw.act) for b in m.blocks]
    assert acts == [nn.ReLU] * n_relu + [HardSwish] * (len(table) - n_relu)  # the NL column: RE early, HS late
    for b in m.blocks:
        if isinstance(b.expand, ConvNormAct):
            assert type(b.expand.act) is type(b.dw.act)
    assert isinstance(m.stem.act, HardSwish) and isinstance(m.last_conv.act, HardSwish)
    assert isinstance(m.head_act, HardSwish)
    assert not any(isinstance(x, nn.BatchNorm1d) for x in m.modules())  # head layers are "NBN"


@pytest.mark.parametrize("name,madds_m,params_m,last,head", [
    ("mobilenetv3_large_100", 219, 5.4, 960, 1280), ("mobilenetv3_small_100", 56, 2.5, 576, 1024),
])
def test_v3_cost_matches_table_3_and_efficient_last_stage(name, madds_m, params_m, last, head):
    m = _meta(name)
    assert m.last_conv.conv.out_channels == last and m.head_fc.in_features == last and m.num_features == head
    assert paperzoo.count_params(m) / 1e6 == pytest.approx(params_m, abs=0.1)  # Table 3 truncates 5.48 to 5.4
    # our count leaves out element-wise ops (activations, SE scaling), hence 2 % rather than exact
    assert _madds(name) / 1e6 == pytest.approx(madds_m, rel=0.02)


def test_v3_head_pools_before_the_1280_layer():
    m = paperzoo.create_model("mobilenetv3_small_100", num_classes=3).eval()
    feats = m.forward_features(torch.randn(1, 3, 64, 64))
    assert feats.shape == (1, 576, 2, 2)
    assert m.forward_head(feats, pre_logits=True).shape == (1, 1024)


# ------------------------------------------------------------------------------------------------ small input
@pytest.mark.parametrize("name", ["mobilenetv1_025", "mobilenetv2_050", "mobilenetv3_small_100"])
def test_small_input_downsamples_8x(name):
    m = paperzoo.create_model(name, small_input=True, num_classes=10).eval()
    with torch.no_grad():
        assert m.forward_features(torch.randn(1, 3, 32, 32)).shape[-2:] == (4, 4)
        assert m.forward_features(torch.randn(1, 3, 28, 28)).shape[-2:] == (4, 4)
    default = paperzoo.create_model(name, num_classes=10).eval()
    with torch.no_grad():
        assert default.forward_features(torch.randn(1, 3, 64, 64)).shape[-2:] == (2, 2)  # 32x
    assert m.min_input_size == (8, 8) and default.min_input_size == (32, 32)


@pytest.mark.parametrize("name", ["mobilenetv1_025", "mobilenetv2_050", "mobilenetv3_small_100", "efficientnet_b0"])
def test_one_training_step_reaches_every_parameter(name):
    torch.manual_seed(0)
    extra = {} if name.startswith("mobilenetv1") else {"drop_path_rate": 0.1}  # V1 has no residuals to drop
    model = paperzoo.create_model(name, small_input=True, in_chans=1, num_classes=10, **extra)
    model.train()
    x, y = torch.randn(2, 1, 16, 16), torch.randint(0, 10, (2,))
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    assert torch.isfinite(loss)
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing
