"""Paper formulas of the shared CNN layers (h-swish, SE, channel shuffle, depthwise-separable cost, stochastic
depth and its per-block schedule)."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from paperzoo.flops import count_flops
from paperzoo.layers import (
    DepthwiseSeparableConv,
    InvertedResidual,
    SqueezeExcite,
    channel_shuffle,
    channel_unshuffle,
    drop_path,
    drop_path_rates,
    hard_sigmoid,
    hard_swish,
    make_divisible,
    separable_conv_cost,
)


def test_hard_swish_and_hard_sigmoid_equal_torch():
    x = torch.linspace(-6, 6, 1001)
    torch.testing.assert_close(hard_swish(x), F.hardswish(x))
    torch.testing.assert_close(hard_sigmoid(x), F.hardsigmoid(x))
    # h-swish(x) = x * ReLU6(x + 3) / 6, written out
    torch.testing.assert_close(hard_swish(x), x * torch.clamp(x + 3, 0, 6) / 6)


def test_se_block_is_squeeze_fc_relu_fc_sigmoid_scale():
    se = SqueezeExcite(32, rd_ratio=1 / 4)
    x = torch.randn(2, 32, 5, 7)
    z = x.mean((2, 3))  # squeeze (Eq. 2)
    w1, b1 = se.fc1.weight.flatten(1), se.fc1.bias
    w2, b2 = se.fc2.weight.flatten(1), se.fc2.bias
    s = torch.sigmoid(F.linear(F.relu(F.linear(z, w1, b1)), w2, b2))  # excite (Eq. 3)
    torch.testing.assert_close(se(x), x * s[:, :, None, None])  # scale (Eq. 4)
    assert se.fc1.out_channels == 8


def test_channel_shuffle_is_a_permutation_undone_by_its_inverse():
    x = torch.arange(12.0).view(1, 12, 1, 1)
    y = channel_shuffle(x, 3)
    # groups (0..3), (4..7), (8..11) -> interleaved 0,4,8,1,5,9,...
    assert y.flatten().tolist() == [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]
    assert sorted(y.flatten().tolist()) == x.flatten().tolist()
    z = torch.randn(2, 24, 3, 3)
    torch.testing.assert_close(channel_unshuffle(channel_shuffle(z, 4), 4), z)


def test_depthwise_separable_reduction_matches_mobilenet_eq5():
    m, n, k, h, w = 64, 128, 3, 14, 14
    cost = separable_conv_cost(m, n, k, h, w)
    ratio = cost["separable_madds"] / cost["standard_madds"]
    assert abs(ratio - (1 / n + 1 / k**2)) < 1e-12
    # and the modules really have those weights / mult-adds (BN excluded)
    std = nn.Conv2d(m, n, k, padding=1, bias=False)
    ds = DepthwiseSeparableConv(m, n, k)
    ds_weights = ds.dw.conv.weight.numel() + ds.pw.conv.weight.numel()
    assert std.weight.numel() == cost["standard_params"]
    assert ds_weights == cost["separable_params"]
    x = torch.zeros(1, m, h, w)
    assert count_flops(std, inputs=x) == 2 * cost["standard_madds"]
    conv_flops = count_flops(nn.Sequential(ds.dw.conv, ds.pw.conv), inputs=x)
    assert conv_flops == 2 * cost["separable_madds"]


def test_inverted_residual_has_linear_bottleneck_and_shortcut():
    blk = InvertedResidual(16, 16, 3, 1, expand_ratio=6)
    assert isinstance(blk.project.act, nn.Identity)  # no non-linearity after the projection
    assert blk.has_residual
    assert not InvertedResidual(16, 24, 3, 2).has_residual


def test_make_divisible_rounds_to_multiple_without_dropping_more_than_10_percent():
    assert make_divisible(32 * 0.75) == 24
    assert make_divisible(10) == 16  # min_value = divisor
    assert make_divisible(91) == 88 and make_divisible(92) == 96
    assert make_divisible(13.6, 8) == 16  # 8 < 0.9 * 13.6, so bump up


def test_drop_path_keeps_expectation_and_is_identity_in_eval():
    x = torch.ones(20000, 4)
    y = drop_path(x, 0.3, training=True)
    assert abs(y.mean().item() - 1.0) < 0.03
    vals = torch.unique(y)
    assert len(vals) == 2 and vals[0] == 0 and abs(vals[1].item() - 1 / 0.7) < 1e-6
    assert torch.equal(drop_path(x, 0.3, training=False), x)


def test_drop_path_schedules_grow_linearly_to_or_short_of_the_total():
    # endpoint=True: 0 .. total (timm's ResNet / ViT / Swin); endpoint=False: total·i/n (the TF EfficientNet rule)
    assert drop_path_rates(0.3, 4) == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert drop_path_rates(0.2, 4, endpoint=False) == pytest.approx([0.0, 0.05, 0.1, 0.15])
    assert drop_path_rates(0.2, 1) == [0.2] and drop_path_rates(0.2, 1, endpoint=False) == [0.0]
    assert all(type(r) is float for r in drop_path_rates(0.1, 3))  # plain floats: models build on "meta"
