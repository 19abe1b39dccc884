"""Paper facts of EfficientNet: B0 is Table 1, B1-B7 come out of the compound-scaling rule, MBConv details."""

import pytest
import torch
import torch.nn as nn

import paperzoo
from paperzoo.layers import ConvNormAct
from paperzoo.models.efficientnet import (
    COMPOUND_COEFFICIENTS,
    TABLE_1_B0,
    EfficientNetConfig,
    compound_coefficients,
    scale_depth,
    scale_width,
)

# Written out by hand (not computed by the code under test): stem, the seven stage widths and the head, then
# repeats per stage, for make_divisible(c·w, 8) and ceil(n·d). They agree with the reference models' feature
# widths (e.g. B3: 24, 32, 48, 136, 384) and, through the registry-wide test, with their parameter counts.
EXPECTED = {
    "b0": ([32, 16, 24, 40, 80, 112, 192, 320, 1280], [1, 2, 2, 3, 3, 4, 1]),
    "b1": ([32, 16, 24, 40, 80, 112, 192, 320, 1280], [2, 3, 3, 4, 4, 5, 2]),
    "b2": ([32, 16, 24, 48, 88, 120, 208, 352, 1408], [2, 3, 3, 4, 4, 5, 2]),
    "b3": ([40, 24, 32, 48, 96, 136, 232, 384, 1536], [2, 3, 3, 5, 5, 6, 2]),
    "b4": ([48, 24, 32, 56, 112, 160, 272, 448, 1792], [2, 4, 4, 6, 6, 8, 2]),
    "b5": ([48, 24, 40, 64, 128, 176, 304, 512, 2048], [3, 5, 5, 7, 7, 9, 3]),
    "b6": ([56, 32, 40, 72, 144, 200, 344, 576, 2304], [3, 6, 6, 8, 8, 11, 3]),
    "b7": ([64, 32, 48, 80, 160, 224, 384, 640, 2560], [4, 7, 7, 10, 10, 13, 4]),
}


def _meta(name, **kw):
    with torch.device("meta"):
        return paperzoo.create_model(name, **kw)


def test_b0_is_table_1():
    assert [(r.t, r.k, r.c, r.n) for r in TABLE_1_B0] == [
        (1, 3, 16, 1), (6, 3, 24, 2), (6, 5, 40, 2), (6, 3, 80, 3), (6, 5, 112, 3), (6, 5, 192, 4), (6, 3, 320, 1)]
    # resolution column 112, 112, 56, 28, 14, 14, 7, 7 -> strides of the stages
    assert [r.s for r in TABLE_1_B0] == [1, 2, 2, 2, 1, 2, 1]


@pytest.mark.parametrize("variant", list(EXPECTED))
def test_compound_scaling_derives_the_tables_of_b1_to_b7(variant):
    widths, repeats = EXPECTED[variant]
    m = _meta(f"efficientnet_{variant}")
    got_widths = [m.stem.conv.out_channels] + [s[0].project.conv.out_channels for s in m.stages] + [m.num_features]
    assert got_widths == widths
    assert [len(s) for s in m.stages] == repeats
    w, d, r, dropout = COMPOUND_COEFFICIENTS[variant]
    assert [scale_width(c, w) for c in [32] + [row.c for row in TABLE_1_B0] + [1280]] == widths
    assert [scale_depth(row.n, d) for row in TABLE_1_B0] == repeats
    assert paperzoo.get_entry(f"efficientnet_{variant}").input_size == (r, r)
    assert m.drop.p == dropout and m.cfg.drop_path_rate == 0.2


def test_rounding_rules():
    assert scale_width(112, 1.4) == 160  # 156.8 -> nearest multiple of 8
    assert scale_width(40, 1.1) == 48  # 44 -> 48 (ties go up)
    assert scale_width(16, 1.1) == 16  # 17.6 -> 16, within 10 % of 17.6
    assert scale_depth(2, 1.1) == 3 and scale_depth(4, 3.1) == 13  # always rounded up


def test_eq3_compound_coefficient():
    d, w, r = compound_coefficients(1.0)
    assert (d, w, r) == (1.2, 1.1, 1.15)  # the grid-searched alpha, beta, gamma (Sec. 3.3)
    assert d * w**2 * r**2 == pytest.approx(2.0, abs=0.1)  # FLOPs roughly double per unit of phi
    d2, w2, r2 = compound_coefficients(2.0)
    assert (d2, w2, r2) == pytest.approx((1.44, 1.21, 1.3225))
    # the published B-series coefficients grow monotonically in every dimension
    coeffs = [COMPOUND_COEFFICIENTS[f"b{i}"] for i in range(8)]
    for a, b in zip(coeffs, coeffs[1:]):
        assert b[0] >= a[0] and b[1] > a[1] and b[2] > a[2]


def test_mbconv_blocks():
    m = _meta("efficientnet_b0")
    in_chs = 32
    for row, stage in zip(TABLE_1_B0, m.stages):
        for j, blk in enumerate(stage):
            assert isinstance(blk.expand, ConvNormAct) == (row.t != 1)
            assert blk.dw.conv.out_channels == in_chs * row.t and blk.dw.conv.groups == in_chs * row.t
            assert blk.dw.conv.kernel_size == (row.k, row.k) and blk.dw.conv.stride[0] == (row.s if j == 0 else 1)
            # SE reduced width is a quarter of the block's *input* width, not of the expansion
            assert blk.se.fc1.out_channels == max(1, int(in_chs * 0.25))
            assert isinstance(blk.se.act, nn.SiLU) and isinstance(blk.se.gate, nn.Sigmoid)
            assert isinstance(blk.dw.act, nn.SiLU) and isinstance(blk.project.act, nn.Identity)  # swish; linear out
            assert blk.has_residual == (j > 0)
            in_chs = row.c
    assert isinstance(m.stem.act, nn.SiLU) and isinstance(m.head.act, nn.SiLU)


def test_stochastic_depth_grows_linearly_and_only_on_residual_blocks():
    torch.manual_seed(0)
    m = paperzoo.create_model("efficientnet_b0")
    blocks = [b for s in m.stages for b in s]
    assert len(blocks) == 16
    rates = [b.drop_path.p if b.has_residual else None for b in blocks]
    expected = [0.2 * i / 16 if b.has_residual else None for i, b in enumerate(blocks)]
    assert rates == pytest.approx(expected)
    assert all(isinstance(b.drop_path, nn.Identity) for b in blocks if not b.has_residual)
    # training: residual branches are dropped per sample; eval: deterministic
    blk = m.stages[5][3]
    x = torch.randn(64, blk.dw.conv.in_channels // 6, 4, 4)
    blk.train()
    with torch.no_grad():
        branch = blk.project(blk.se(blk.dw(blk.expand(x))))  # BN in train mode uses batch stats: same batch
        y = blk(x)
    dropped = [(y[i] - x[i]).abs().max() < 1e-6 for i in range(64)]
    assert 0 < sum(dropped) < 64
    kept = [i for i in range(64) if not dropped[i]]
    torch.testing.assert_close(y[kept], x[kept] + branch[kept] / (1 - blk.drop_path.p))


@pytest.mark.parametrize("variant,gflops,params_m", [
    ("b0", 0.39, 5.3),
    pytest.param("b1", 0.70, 7.8, marks=pytest.mark.slow),
    pytest.param("b2", 1.0, 9.2, marks=pytest.mark.slow),
    pytest.param("b3", 1.8, 12.2, marks=pytest.mark.slow),
])
def test_cost_matches_table_2(variant, gflops, params_m):
    name = f"efficientnet_{variant}"
    r = paperzoo.get_entry(name).input_size[0]
    m = paperzoo.create_model(name)
    assert paperzoo.count_params(m) / 1e6 == pytest.approx(params_m, abs=0.1)
    # Table 2's "FLOPs" are multiply-adds; ours count 2 per multiply-add and skip element-wise ops
    assert paperzoo.count_flops(m, (1, 3, r, r)) / 2e9 == pytest.approx(gflops, rel=0.05)


def test_bn_eps_is_exposed_and_applied():
    cfg = EfficientNetConfig()
    assert cfg.bn_eps == 1e-5
    m = paperzoo.create_model("efficientnet_b0", bn_eps=1e-3, bn_momentum=0.01)
    bns = [x for x in m.modules() if isinstance(x, nn.BatchNorm2d)]
    assert {b.eps for b in bns} == {1e-3} and {b.momentum for b in bns} == {0.01}


def test_small_input_keeps_resolution():
    m = paperzoo.create_model("efficientnet_b0", small_input=True, in_chans=1, num_classes=10).eval()
    with torch.no_grad():
        assert m.forward_features(torch.randn(2, 1, 32, 32)).shape == (2, 1280, 4, 4)
        assert m(torch.randn(2, 1, 28, 28)).shape == (2, 10)
