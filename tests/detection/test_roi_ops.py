"""RoI pooling and RoIAlign against direct per-bin implementations of their formulas.

The references below are written plainly, one RoI, one bin and one sampling point at a time, in the order of
operations of torchvision's CPU kernels, with every scalar held in the kernel's floating type ``T`` (numpy
float32 or float64), so that the quantized bin edges of RoI pooling can be compared exactly.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from paperzoo.detection.roi_ops import RoIAlign, RoIPool, roi_align, roi_pool

H, W = 9, 11  # feature map
SCALE = 0.5  # image pixels -> feature pixels, so the image is about 18 x 22


def c_round(v: float) -> int:
    """C's round(): halves away from zero."""
    return int(math.floor(v + 0.5)) if v >= 0 else -int(math.floor(-v + 0.5))


def reference_roi_pool(features: np.ndarray, rois: np.ndarray, oh: int, ow: int, scale: float) -> np.ndarray:
    T = features.dtype.type
    K, (_, C, Hf, Wf) = len(rois), features.shape
    out = np.zeros((K, C, oh, ow), dtype=T)
    for n in range(K):
        b = int(rois[n, 0])
        x1, y1, x2, y2 = (c_round(T(v) * T(scale)) for v in rois[n, 1:])
        roi_w, roi_h = max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)
        bin_h, bin_w = T(roi_h) / T(oh), T(roi_w) / T(ow)
        for ph in range(oh):
            for pw in range(ow):
                hs = min(max(int(np.floor(T(ph) * bin_h)) + y1, 0), Hf)
                he = min(max(int(np.ceil(T(ph + 1) * bin_h)) + y1, 0), Hf)
                ws = min(max(int(np.floor(T(pw) * bin_w)) + x1, 0), Wf)
                we = min(max(int(np.ceil(T(pw + 1) * bin_w)) + x1, 0), Wf)
                if he > hs and we > ws:  # an empty bin stays 0
                    out[n, :, ph, pw] = features[b, :, hs:he, ws:we].max(axis=(1, 2))
    return out


def bilinear(fmap: np.ndarray, y, x) -> np.ndarray:
    """One sampling point of RoIAlign, all channels: 0 outside [-1, H] x [-1, W], clamped to the map inside."""
    T = fmap.dtype.type
    _, Hf, Wf = fmap.shape
    if not (-1.0 <= y <= Hf and -1.0 <= x <= Wf):
        return np.zeros(fmap.shape[0], dtype=T)
    y, x = max(y, T(0)), max(x, T(0))
    y_lo, x_lo = int(y), int(x)
    if y_lo >= Hf - 1:
        y_lo = y_hi = Hf - 1
        y = T(y_lo)
    else:
        y_hi = y_lo + 1
    if x_lo >= Wf - 1:
        x_lo = x_hi = Wf - 1
        x = T(x_lo)
    else:
        x_hi = x_lo + 1
    ly, lx = y - T(y_lo), x - T(x_lo)
    hy, hx = T(1) - ly, T(1) - lx
    return (
        hy * hx * fmap[:, y_lo, x_lo]
        + hy * lx * fmap[:, y_lo, x_hi]
        + ly * hx * fmap[:, y_hi, x_lo]
        + ly * lx * fmap[:, y_hi, x_hi]
    )


def reference_roi_align(
    features: np.ndarray, rois: np.ndarray, oh: int, ow: int, scale: float, sampling_ratio: int, aligned: bool
) -> np.ndarray:
    T = features.dtype.type
    K, C = len(rois), features.shape[1]
    out = np.zeros((K, C, oh, ow), dtype=T)
    offset = T(0.5) if aligned else T(0)
    for n in range(K):
        fmap = features[int(rois[n, 0])]
        x1, y1, x2, y2 = (T(v) * T(scale) - offset for v in rois[n, 1:])
        roi_w, roi_h = x2 - x1, y2 - y1
        if not aligned:
            roi_w, roi_h = max(roi_w, T(1)), max(roi_h, T(1))
        bin_h, bin_w = roi_h / T(oh), roi_w / T(ow)
        gh = sampling_ratio if sampling_ratio > 0 else int(np.ceil(roi_h / T(oh)))
        gw = sampling_ratio if sampling_ratio > 0 else int(np.ceil(roi_w / T(ow)))
        count = T(max(gh * gw, 1))
        for ph in range(oh):
            for pw in range(ow):
                total = np.zeros(C, dtype=T)
                for iy in range(gh):
                    y = y1 + T(ph) * bin_h + T(iy + 0.5) * bin_h / T(gh)
                    for ix in range(gw):
                        x = x1 + T(pw) * bin_w + T(ix + 0.5) * bin_w / T(gw)
                        total = total + bilinear(fmap, y, x)
                out[n, :, ph, pw] = total / count
    return out


def make_rois(dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """Random boxes over image coordinates plus the hard cases, as (batch_index, x1, y1, x2, y2)."""
    g = torch.Generator().manual_seed(seed)
    n = 24
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 34 - 8  # corners up to 8 px outside the image
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * 28
    batch = torch.randint(0, 3, (n, 1), generator=g).double()
    random = torch.cat([batch, xy, xy + wh], dim=1)
    special = torch.tensor(
        [
            [0, 2.0, 3.0, 2.3, 3.2],  # tiny (under one feature pixel)
            [1, 5.0, 5.0, 5.0, 5.0],  # zero size
            [2, 9.0, 8.0, 4.0, 2.0],  # inverted
            [1, -30.0, -25.0, 60.0, 50.0],  # larger than the map on every side
            [0, -12.0, 4.0, 3.0, 12.0],  # crosses the left border
            [2, 14.0, 10.0, 40.0, 30.0],  # crosses the right and bottom borders
            [1, 40.0, 30.0, 52.0, 44.0],  # entirely outside the map
            [0, -6.0, -6.0, -2.5, -1.0],  # entirely outside, above-left, near the [-1, 0) band
            [2, 3.0, 1.0, 9.0, 5.0],  # halves after scaling: exercises C's rounding
            [0, 0.0, 0.0, 22.0, 18.0],  # the whole image
        ],
        dtype=torch.float64,
    )
    return torch.cat([random, special]).to(dtype)


def make_features(dtype: torch.dtype, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, 4, H, W, generator=g, dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("output_size", [(2, 2), (3, 5), (7, 7)])
def test_roi_pool_equals_per_bin_max_of_quantized_bins(dtype, output_size):
    features, rois = make_features(dtype), make_rois(dtype)
    got = roi_pool(features, rois, output_size, SCALE)
    want = reference_roi_pool(features.numpy(), rois.numpy(), *output_size, SCALE)
    assert got.dtype == dtype
    assert torch.equal(got, torch.from_numpy(want)), (got - torch.from_numpy(want)).abs().max()


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 1, 2])
def test_roi_align_equals_per_bin_average_of_bilinear_samples(dtype, atol, aligned, sampling_ratio):
    features, rois = make_features(dtype), make_rois(dtype)
    got = roi_align(features, rois, (3, 4), SCALE, sampling_ratio, aligned)
    want = torch.from_numpy(reference_roi_align(features.numpy(), rois.numpy(), 3, 4, SCALE, sampling_ratio, aligned))
    torch.testing.assert_close(got, want, atol=atol, rtol=0)


def test_roi_pool_rounds_halves_away_from_zero_like_c():
    # Column x of the map holds the value x; a one-bin RoI at x = 0.5 must start at column 1, not 0 (half-to-even).
    features = torch.arange(W, dtype=torch.float64).expand(1, 1, H, W)
    rois = torch.tensor([[0, 0.5, 0.0, 0.5, 0.0], [0, 2.5, 0.0, 2.5, 0.0]], dtype=torch.float64)
    assert roi_pool(features, rois, 1, 1.0).flatten().tolist() == [1.0, 3.0]


def test_roi_pool_gradient_goes_to_the_first_maximum_of_each_bin():
    # On a constant map every pixel ties; the kernel's argmax (row-major, strict >) picks each bin's first pixel.
    features = torch.zeros(1, 1, 6, 6, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 0.0, 0.0, 5.0, 5.0]], dtype=torch.float64)  # 6 x 6 pixels, 2 x 2 bins of 3 x 3
    roi_pool(features, rois, 2, 1.0).sum().backward()
    want = torch.zeros(6, 6, dtype=torch.float64)
    want[0, 0] = want[0, 3] = want[3, 0] = want[3, 3] = 1.0
    assert torch.equal(features.grad[0, 0], want)


def test_roi_pool_gradient_matches_finite_differences():
    features = make_features(torch.float64)[:, :1, :5, :6].clone().requires_grad_(True)
    rois = make_rois(torch.float64)[::2]  # at scale 1/4 they cover most of the small map
    assert torch.autograd.gradcheck(lambda f: roi_pool(f, rois, (2, 3), 0.25), (features,))


@pytest.mark.parametrize("sampling_ratio, aligned", [(-1, False), (2, True), (1, False)])
def test_roi_align_gradient_matches_finite_differences(sampling_ratio, aligned):
    features = make_features(torch.float64)[:, :1, :4, :5].clone().requires_grad_(True)
    rois = make_rois(torch.float64)[::4]
    fn = lambda f: roi_align(f, rois, 2, 0.25, sampling_ratio, aligned)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (features,))


def test_roi_align_padding_to_the_largest_sample_grid_does_not_leak_between_rois():
    # Adaptive sampling gives the big RoI many points per bin and the small one a single point: computed together
    # (padded to the big one's grid) or alone, each RoI must give the same result.
    features, rois = make_features(torch.float64), make_rois(torch.float64)
    together = roi_align(features, rois, 2, SCALE, -1, True)
    alone = torch.cat([roi_align(features, rois[i : i + 1], 2, SCALE, -1, True) for i in range(len(rois))])
    torch.testing.assert_close(together, alone, atol=1e-12, rtol=0)


def test_roi_align_aligned_averages_a_linear_map_at_the_box_centre():
    # f(y, x) = x, with pixel centres at integer + 0.5 (aligned=True): the mean over an interior box is its centre
    # in pixel-index coordinates, x_centre - 0.5. Without the shift it is off by half a pixel.
    features = torch.arange(W, dtype=torch.float64).expand(1, 1, H, W)
    rois = torch.tensor([[0, 2.0, 2.0, 6.0, 5.0]], dtype=torch.float64)
    assert roi_align(features, rois, 1, 1.0, 2, aligned=True).item() == pytest.approx(3.5)
    assert roi_align(features, rois, 1, 1.0, 2, aligned=False).item() == pytest.approx(4.0)


def test_roi_align_points_beyond_one_pixel_outside_the_map_read_zero():
    features = torch.ones(1, 1, H, W, dtype=torch.float64)
    rois = torch.tensor([[0, -3.0, 2.0, -2.0, 3.0], [0, -0.8, 2.0, 0.2, 3.0]], dtype=torch.float64)
    # Sampled at x = -2.5 (outside the band: 0) and x = -0.3 (clamped to column 0: 1).
    assert roi_align(features, rois, 1, 1.0, 1).flatten().tolist() == [0.0, 1.0]


def test_no_gradient_flows_to_the_rois():
    features = make_features(torch.float64).requires_grad_(True)
    rois = make_rois(torch.float64).requires_grad_(True)
    (roi_align(features, rois, 2, SCALE).sum() + roi_pool(features, rois, 2, SCALE).sum()).backward()
    assert rois.grad is None and features.grad is not None


@pytest.mark.parametrize("op", [roi_pool, roi_align])
def test_no_rois_give_an_empty_batch(op):
    assert op(make_features(torch.float32), torch.zeros(0, 5), (3, 2), SCALE).shape == (0, 4, 3, 2)


def test_modules_equal_the_functions():
    features, rois = make_features(torch.float32), make_rois(torch.float32)
    assert torch.equal(RoIPool((3, 2), SCALE)(features, rois), roi_pool(features, rois, (3, 2), SCALE))
    align = RoIAlign(4, SCALE, sampling_ratio=2, aligned=True)
    assert torch.equal(align(features, rois), roi_align(features, rois, 4, SCALE, 2, True))
    assert "sampling_ratio=2" in repr(align)


@pytest.mark.parametrize(
    "features, rois, output_size",
    [
        (torch.zeros(1, 2, 4, 4), torch.zeros(3, 4), 2),  # rois without a batch index
        (torch.zeros(2, 4, 4), torch.zeros(3, 5), 2),  # features without a batch dimension
        (torch.zeros(1, 2, 4, 4), torch.zeros(3, 5), 0),  # empty output
        (torch.zeros(1, 2, 4, 4), torch.zeros(3, 5), (2, 2, 2)),  # not a pair
    ],
)
@pytest.mark.parametrize("op", [roi_pool, roi_align])
def test_bad_shapes_raise_a_clear_value_error(op, features, rois, output_size):
    with pytest.raises(ValueError):
        op(features, rois, output_size)


def test_building_the_work_in_small_chunks_of_rois_changes_nothing(monkeypatch):
    # RoIAlign's sparse matrix and RoI pooling's padded gather are built a chunk of RoIs at a time (RoI pooling's
    # sorted by size); with chunks of a few RoIs both must still equal the per-bin references.
    from paperzoo.detection import roi_ops

    monkeypatch.setattr(roi_ops, "_MAX_MATRIX_ENTRIES", 200)  # 3 x 4 bins x 4 x 4 taps = 192 entries: one RoI
    monkeypatch.setattr(roi_ops, "_ROI_POOL_CHUNK", 5)
    features, rois = make_features(torch.float64), make_rois(torch.float64)
    got = roi_align(features, rois, (3, 4), SCALE, 2, False)
    want = reference_roi_align(features.numpy(), rois.numpy(), 3, 4, SCALE, 2, False)
    torch.testing.assert_close(got, torch.from_numpy(want), atol=1e-12, rtol=0)
    got = roi_pool(features, rois, (3, 5), SCALE)
    assert torch.equal(got, torch.from_numpy(reference_roi_pool(features.numpy(), rois.numpy(), 3, 5, SCALE)))


@pytest.mark.parametrize("autocast", [False, True])
def test_bf16_features_are_pooled_with_float32_coordinates(autocast):
    # bf16 holds 8 significant bits: x = 301.3 would become 300 and the box would move. Like torchvision's autocast
    # wrappers, the ops compute in float32 and return bf16.
    features = torch.randn(1, 4, 40, 400, generator=torch.Generator().manual_seed(0)).bfloat16()
    rois = torch.tensor([[0, 301.3, 10.7, 333.9, 25.2], [0, 5.5, 3.25, 390.0, 38.0]])
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        aligned, pooled = roi_align(features, rois, 3, 1.0, 2), roi_pool(features, rois, 3, 1.0)
    assert aligned.dtype == pooled.dtype == torch.bfloat16
    want = roi_align(features.float(), rois, 3, 1.0, 2).bfloat16()  # float32 work, one rounding at the end
    assert torch.equal(aligned, want)
    assert torch.equal(pooled, roi_pool(features.float(), rois, 3, 1.0).bfloat16())
