"""ShuffleNet V1 / V2: the units' structure (group convs, shuffle, split, concat) and the papers' complexity."""

import pytest
import torch
import torch.nn.functional as F

import paperzoo
from paperzoo.flops import count_flops
from paperzoo.layers import ChannelShuffle
from paperzoo.models.shufflenet import (
    V1_TABLE1_MFLOPS,
    V1_TABLE1_STAGE_OUT,
    V2_TABLE5_CHANNELS,
    ShuffleNetV1,
    ShuffleNetV1Config,
    ShuffleV1Unit,
    ShuffleV2Unit,
)


def _madds_m(name: str, **kw) -> float:
    """Million multiply-adds at 224x224 (FLOPs / 2), counted on the meta device: shapes only, no compute."""
    with torch.device("meta"):
        return count_flops(paperzoo.create_model(name, **kw), inputs=torch.empty(1, 3, 224, 224)) / 2 / 1e6


# ------------------------------------------------------------------------------------------------------ V1
@pytest.mark.parametrize("g", sorted(V1_TABLE1_STAGE_OUT))
def test_v1_multiply_adds_match_table1_within_5_percent(g):
    ours = _madds_m(f"shufflenet_v1_g{g}")
    paper = V1_TABLE1_MFLOPS[g]  # Table 1, "Complexity" row (143 / 140 / 137 / 133 / 137 MFLOPs)
    assert abs(ours - paper) / paper < 0.05, (g, ours, paper)


def test_v1_half_width_matches_table2_within_5_percent():
    # Table 2: ShuffleNet 0.5x is 38 MFLOPs (g = 3 is the configuration the authors released)
    ours = _madds_m("shufflenet_v1_g3", s=0.5)
    assert abs(ours - 38) / 38 < 0.05, ours


@pytest.mark.parametrize("g", sorted(V1_TABLE1_STAGE_OUT))
def test_v1_stage_widths_and_resolutions_follow_table1(g):
    with torch.device("meta"):
        model = paperzoo.create_model(f"shufflenet_v1_g{g}").eval()
    shapes = {}
    for name in ("stage2", "stage3", "stage4"):
        getattr(model, name).register_forward_hook(lambda m, i, o, n=name: shapes.__setitem__(n, tuple(o.shape)))
    model(torch.empty(1, 3, 224, 224, device="meta"))
    c2, c3, c4 = V1_TABLE1_STAGE_OUT[g]
    assert shapes == {"stage2": (1, c2, 28, 28), "stage3": (1, c3, 14, 14), "stage4": (1, c4, 7, 7)}
    assert [len(model.stage2), len(model.stage3), len(model.stage4)] == [4, 8, 4]  # Table 1 "Repeat" 1+3/1+7/1+3


@pytest.mark.parametrize("g", [2, 3, 8])
def test_v1_pointwise_group_convs_and_shuffle(g):
    model = paperzoo.create_model(f"shufflenet_v1_g{g}")
    first = model.stage2[0]
    # "we do not apply group convolution on the first pointwise layer" of Stage 2 (Table 1 note)
    assert first.gconv1.conv.groups == 1
    for unit in [*model.stage2[1:], *model.stage3, *model.stage4]:
        assert unit.gconv1.conv.groups == g and unit.gconv2.conv.groups == g
        mid = unit.gconv1.conv.out_channels
        assert unit.gconv1.conv.weight.shape[1] == unit.gconv1.conv.in_channels // g  # g times fewer weights
        assert mid == unit.gconv2.conv.out_channels // 4 or unit.stride == 2  # bottleneck = 1/4 (Sec. 3.3)
        assert unit.dwconv.conv.groups == mid  # depthwise
        assert isinstance(unit.shuffle, ChannelShuffle) and unit.shuffle.groups == g
        assert isinstance(unit.dwconv.act, torch.nn.Identity)  # no ReLU after the depthwise conv (Sec. 3.2)


def test_v1_shuffle_lets_the_second_group_conv_see_every_group():
    # Fig. 1: without the shuffle, output group i of GConv2 depends only on input group i of GConv1
    torch.manual_seed(0)
    unit = ShuffleV1Unit(48, 48, stride=1, g=3).eval()
    x = torch.randn(1, 48, 6, 6, requires_grad=True)
    unit.gconv2(unit.dwconv(unit.shuffle(unit.gconv1(x))))[:, :16].sum().backward()
    per_group = x.grad.abs().sum((0, 2, 3)).view(3, 16).sum(1)
    assert (per_group > 0).all(), per_group  # output group 0 depends on all three input groups
    x.grad = None
    unit.gconv2(unit.dwconv(unit.gconv1(x)))[:, :16].sum().backward()  # skip the shuffle
    per_group = x.grad.abs().sum((0, 2, 3)).view(3, 16).sum(1)
    assert per_group[0] > 0 and (per_group[1:] == 0).all(), per_group


def test_v1_units_add_or_concat_the_shortcut():
    torch.manual_seed(0)
    x = torch.rand(2, 24, 8, 8)  # non-negative, as the output of the ReLU before every unit
    down = ShuffleV1Unit(24, 240, stride=2, g=3).eval()
    with torch.no_grad():
        out = down(x)
    assert out.shape == (2, 240, 4, 4)
    # Fig. 2c: the first C_in channels are the 3x3/2 average-pooled input, concatenated (then ReLU'd)
    torch.testing.assert_close(out[:, :24], F.avg_pool2d(x, 3, 2, 1))
    unit = ShuffleV1Unit(48, 48, stride=1, g=3).eval()
    torch.nn.init.zeros_(unit.gconv2.bn.weight)
    torch.nn.init.zeros_(unit.gconv2.bn.bias)
    y = torch.randn(2, 48, 5, 7)
    with torch.no_grad():  # Fig. 2b with a zeroed branch: ReLU(x + 0)
        torch.testing.assert_close(unit(y), F.relu(y))


def test_v1_rejects_unknown_group_count():
    with pytest.raises(ValueError, match="g must be one of"):
        ShuffleNetV1(ShuffleNetV1Config(g=5))


# ------------------------------------------------------------------------------------------------------ V2
def test_v2_basic_unit_splits_channels_and_shuffles():
    torch.manual_seed(0)
    unit = ShuffleV2Unit(32, 32, stride=1).eval()
    assert unit.branch1 is None
    x = torch.randn(2, 32, 6, 5)
    with torch.no_grad():
        out = unit(x)
    # Fig. 3c: the left half passes untouched; concat [x1, f(x2)] then shuffle with 2 groups puts it at the
    # even channels and the branch output at the odd ones
    torch.testing.assert_close(out[:, 0::2], x[:, :16])
    with torch.no_grad():
        torch.testing.assert_close(out[:, 1::2], unit.branch2(x[:, 16:]))


def test_v2_downsampling_unit_has_two_branches_and_doubles_width():
    unit = ShuffleV2Unit(24, 48, stride=2).eval()
    assert unit.branch1 is not None
    x = torch.randn(1, 24, 8, 8)
    with torch.no_grad():
        out = unit(x)
        left, right = unit.branch1(x), unit.branch2(x)
    assert out.shape == (1, 48, 4, 4)
    torch.testing.assert_close(out[:, 0::2], left)  # Fig. 3d: no split, both branches stride 2
    torch.testing.assert_close(out[:, 1::2], right)
    # depthwise 3x3/2 with BN and no ReLU opens the left branch
    assert unit.branch1[0].conv.groups == 24 and unit.branch1[0].conv.stride == (2, 2)
    assert isinstance(unit.branch1[0].act, torch.nn.Identity)


@pytest.mark.parametrize("width,paper_mflops", [("0.5", 41), ("1.0", 146), ("1.5", 299), ("2.0", 591)])
def test_v2_multiply_adds_match_table5_within_5_percent(width, paper_mflops):
    name = f"shufflenet_v2_x{width.replace('.', '_')}"
    ours = _madds_m(name)
    assert abs(ours - paper_mflops) / paper_mflops < 0.05, (width, ours)
    with torch.device("meta"):
        assert paperzoo.create_model(name).num_features == V2_TABLE5_CHANNELS[width][3]


def test_small_input_keeps_resolution_and_trains():
    model = paperzoo.create_model("shufflenet_v2_x0_5", num_classes=10, in_chans=1, small_input=True)
    x = torch.randn(4, 1, 32, 32)
    feats = model.forward_features(x)
    assert feats.shape[-2:] == (4, 4)  # total stride 8 instead of 32
    loss = F.cross_entropy(model.forward_head(feats), torch.arange(4))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
