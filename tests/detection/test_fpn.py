"""FPN (Lin et al. 2017, Sec. 3): shapes and strides, torchvision's layout and size, and the top-down sum
against an independent functional re-statement (nearest upsampling written as index arithmetic)."""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F

import paperzoo
from paperzoo.detection.fpn import BackboneWithFPN, FeaturePyramidNetwork


def random_maps(channels: list[int], sizes: list[tuple[int, int]], batch: int = 2) -> OrderedDict:
    g = torch.Generator().manual_seed(0)
    return OrderedDict((f"c{i + 2}", torch.randn(batch, c, h, w, generator=g))
                       for i, (c, (h, w)) in enumerate(zip(channels, sizes)))


def randomize(fpn: FeaturePyramidNetwork) -> None:
    """Non-zero biases too, so that a forgotten bias would show."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in fpn.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def nearest_upsample(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest neighbour to ``size``: output pixel ``j`` reads input pixel ``floor(j * scale)``, ``scale = in / out``.

    The scale is held in float32 as PyTorch's kernel holds it: exact integer arithmetic ``j * in // out`` picks
    another pixel in a few cases (e.g. where ``j * in / out`` is an integer that float32 rounds down).
    """

    def source(n_in: int, n_out: int) -> torch.Tensor:
        scale = torch.tensor(n_in / n_out, dtype=torch.float32)
        return torch.floor(torch.arange(n_out, dtype=torch.float32) * scale).long().clamp(max=n_in - 1)

    (h, w), (oh, ow) = x.shape[-2:], size
    return x[..., source(h, oh)[:, None], source(w, ow)[None, :]]  # (B, C, oh, ow)


def reference_fpn(fpn: FeaturePyramidNetwork, maps: list[torch.Tensor]) -> list[torch.Tensor]:
    """Sec. 3 written out with F.conv2d on the module's weights: P_top = out(lat(C_top)),
    M_i = lat(C_i) + up(M_{i+1}), P_i = out(M_i), P6 = max_pool(P5, 1, 2)."""
    lat = [F.conv2d(c, b[0].weight, b[0].bias) for c, b in zip(maps, fpn.inner_blocks)]
    merged = [None] * len(maps)
    merged[-1] = lat[-1]
    for i in reversed(range(len(maps) - 1)):
        merged[i] = lat[i] + nearest_upsample(merged[i + 1], lat[i].shape[-2:])
    outs = [F.conv2d(m, b[0].weight, b[0].bias, padding=1) for m, b in zip(merged, fpn.layer_blocks)]
    return outs + [F.max_pool2d(outs[-1], kernel_size=1, stride=2)]


def test_top_down_sum_equals_functional_restatement_on_odd_sizes():
    channels, sizes = [3, 5, 7, 6], [(25, 35), (13, 18), (7, 9), (4, 5)]
    fpn = FeaturePyramidNetwork(channels, out_channels=4)
    randomize(fpn)
    maps = random_maps(channels, sizes)
    out = fpn(maps)
    ref = reference_fpn(fpn, list(maps.values()))
    assert list(out) == ["c2", "c3", "c4", "c5", "pool"]
    for got, want in zip(out.values(), ref):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert out["pool"].shape[-2:] == (2, 3)  # ceil(4/2), ceil(5/2)


def test_coarsest_map_reaches_the_finest_level_through_the_top_down_pathway():
    channels = [3, 5, 7]
    fpn = FeaturePyramidNetwork(channels, out_channels=4, extra_block=None)
    randomize(fpn)
    maps = random_maps(channels, [(16, 16), (8, 8), (4, 4)])
    maps["c4"].requires_grad_(True)
    out = fpn(maps)
    assert list(out) == ["c2", "c3", "c4"]  # no "pool" without the extra block
    out["c2"].sum().backward()
    assert maps["c4"].grad.abs().sum() > 0


def test_fpn_parameter_count_for_resnet50_equals_torchvision():
    d = 256
    laterals = sum(c * d + d for c in (256, 512, 1024, 2048))  # 1x1 convs with bias: 984,064
    outputs = 4 * (d * d * 3 * 3 + d)  # 3x3 convs with bias: 2,360,320
    assert laterals + outputs == 3_344_384
    fpn = FeaturePyramidNetwork([256, 512, 1024, 2048], 256)
    assert sum(p.numel() for p in fpn.parameters()) == 3_344_384


def test_state_dict_keys_follow_torchvision_layout():
    fpn = FeaturePyramidNetwork([2, 3, 4, 5], out_channels=4)
    want = [f"{blocks}.{i}.0.{kind}" for blocks in ("inner_blocks", "layer_blocks") for i in range(4)
            for kind in ("weight", "bias")]
    assert list(fpn.state_dict()) == want
    assert fpn.state_dict()["inner_blocks.2.0.weight"].shape == (4, 4, 1, 1)
    assert fpn.state_dict()["layer_blocks.3.0.weight"].shape == (4, 4, 3, 3)


def test_norm_layer_moves_to_index_1_and_drops_the_conv_bias():
    fpn = FeaturePyramidNetwork([2, 3], out_channels=4, norm_layer=torch.nn.BatchNorm2d)
    keys = set(fpn.state_dict())
    assert "inner_blocks.0.1.running_mean" in keys and "layer_blocks.1.1.weight" in keys
    assert "inner_blocks.0.0.bias" not in keys


def test_loads_pre_0_13_torchvision_keys():
    src = FeaturePyramidNetwork([2, 3], out_channels=4)
    randomize(src)
    old = {k.replace(".0.", ".", 1): v.clone() for k, v in src.state_dict().items()}  # inner_blocks.0.weight
    assert "inner_blocks.1.weight" in old
    dst = FeaturePyramidNetwork([2, 3], out_channels=4)
    torch.nn.Sequential(OrderedDict(fpn=dst)).load_state_dict({f"fpn.{k}": v for k, v in old.items()})
    for k, v in src.state_dict().items():
        torch.testing.assert_close(dst.state_dict()[k], v)


def test_init_is_kaiming_uniform_a1_with_zero_bias():
    fpn = FeaturePyramidNetwork([64, 32], out_channels=32)
    for name, p in fpn.named_parameters():
        if name.endswith("bias"):
            assert torch.all(p == 0), name
        else:
            bound = math.sqrt(3.0 / p[0].numel())  # gain sqrt(2 / (1 + a^2)) = 1 for a = 1
            assert p.abs().max() <= bound and p.abs().max() > 0.9 * bound, name


@pytest.mark.parametrize("bad", [dict(extra_block="p6"), dict(in_channels_list=[0, 4])])
def test_bad_arguments_raise(bad):
    kwargs = dict(in_channels_list=[2, 4], out_channels=4) | bad
    with pytest.raises(ValueError):
        FeaturePyramidNetwork(**kwargs)


def test_wrong_number_of_maps_raises():
    fpn = FeaturePyramidNetwork([2, 3], out_channels=4)
    with pytest.raises(ValueError, match="built for 2 maps, got 1"):
        fpn(random_maps([2], [(4, 4)]))


def test_resnet50_backbone_with_fpn_shapes_and_strides_on_odd_input():
    body = paperzoo.create_model("resnet50", features_only=True, out_indices=(1, 2, 3, 4))
    model = BackboneWithFPN(body, out_channels=256).eval()
    assert model.out_channels == 256
    assert model.fpn.in_channels_list == [256, 512, 1024, 2048]
    with torch.no_grad():
        out = model(torch.randn(1, 3, 100, 140))  # neither side a multiple of 32
    # every stride-2 layer (padded) gives ceil(n / 2): strides 4, 8, 16, 32 and 64 for "pool"
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "0": (1, 256, 25, 35), "1": (1, 256, 13, 18), "2": (1, 256, 7, 9), "3": (1, 256, 4, 5),
        "pool": (1, 256, 2, 3)}


def test_backbone_with_fpn_needs_a_features_model():
    with pytest.raises(ValueError, match="features_only"):
        BackboneWithFPN(torch.nn.Conv2d(3, 4, 1))
