import numpy as np
import pytest
import torch

from paperzoo.detection.anchors import FPN_ASPECT_RATIOS, FPN_SIZES, AnchorGenerator, cell_anchors


def test_cell_anchors_worked_by_hand_ratio_major_and_rounded():
    # ratio 0.5: w = 32 / sqrt(0.5) = 45.25 -> half 22.63 -> 23; h = 32 * sqrt(0.5) = 22.63 -> half 11.31 -> 11.
    # size 64 at ratio 0.5: half-widths 45.25 -> 45 and 22.63 -> 23. Order: ratio outer, size inner.
    expected = torch.tensor(
        [
            [-23.0, -11.0, 23.0, 11.0],  # ratio 0.5, size 32
            [-45.0, -23.0, 45.0, 23.0],  # ratio 0.5, size 64
            [-16.0, -16.0, 16.0, 16.0],  # ratio 1, size 32
            [-32.0, -32.0, 32.0, 32.0],  # ratio 1, size 64
            [-11.0, -23.0, 11.0, 23.0],  # ratio 2, size 32
            [-23.0, -45.0, 23.0, 45.0],  # ratio 2, size 64
        ]
    )
    assert torch.equal(cell_anchors((32, 64), (0.5, 1.0, 2.0)), expected)


def test_cell_anchor_halves_round_half_to_even_like_torch_round():
    # 33 / 2 = 16.5 -> 16 and 35 / 2 = 17.5 -> 18: banker's rounding, not round-half-up.
    assert cell_anchors((33, 35), (1.0,)).tolist() == [[-16, -16, 16, 16], [-18, -18, 18, 18]]


def test_anchors_of_a_tiny_grid_worked_by_hand():
    # Cell anchors of size 16: ratio 1 -> (-8, -8, 8, 8); ratio 2 -> w 11.31 (half 5.66 -> 6), h 22.63 (half 11.31
    # -> 11). Image 11 x 12 over a 2 x 3 map: strides 11 // 2 = 5 (rows) and 12 // 3 = 4 (columns).
    gen = AnchorGenerator(sizes=((16,),), aspect_ratios=((1.0, 2.0),))
    (anchors,) = gen(torch.zeros(1, 3, 11, 12), [torch.zeros(1, 8, 2, 3)])
    rows = []
    for y in (0, 5):  # location-major: y outer, x inner, then the two anchors of that location
        for x in (0, 4, 8):
            rows += [[x - 8, y - 8, x + 8, y + 8], [x - 6, y - 11, x + 6, y + 11]]
    assert torch.equal(anchors, torch.tensor(rows, dtype=torch.float32))


def torchvision_anchors_restated(sizes, ratios, image_hw, grid_hws):
    """Torchvision's anchors written out independently: for each level, each cell (y, x) row by row, each
    (ratio, size) pair ratio-major, an anchor centred at (x * stride_w, y * stride_h) with half-extents
    round(size / sqrt(ratio) / 2) and round(size * sqrt(ratio) / 2), all in float32 with the reciprocal of the
    square root, rounding half to even, stride = image size // grid size."""
    f32 = np.float32
    out = []
    for level_sizes, level_ratios, (gh, gw) in zip(sizes, ratios, grid_hws):
        sh, sw = image_hw[0] // gh, image_hw[1] // gw
        halves = []
        for r in level_ratios:
            h_ratio = np.sqrt(f32(r))
            w_ratio = f32(1) / h_ratio
            for s in level_sizes:
                halves.append((np.round(w_ratio * f32(s) / f32(2)), np.round(h_ratio * f32(s) / f32(2))))
        for y in range(gh):
            for x in range(gw):
                for hw, hh in halves:
                    out.append([x * sw - hw, y * sh - hh, x * sw + hw, y * sh + hh])
    return torch.from_numpy(np.asarray(out, dtype=np.float32))


def test_default_fpn_anchors_equal_torchvision_formula_on_a_non_square_image():
    # A 320 x 480 padded batch; P2..P5 at strides 4..32 and P6 from a stride-2, kernel-1 max pool of P5 (10 x 15
    # -> 5 x 8), so P6's column stride is 480 // 8 = 60, not 64: the generator must take it from the shapes.
    grids = [(80, 120), (40, 60), (20, 30), (10, 15), (5, 8)]
    gen = AnchorGenerator()
    feature_maps = [torch.zeros(2, 4, h, w) for h, w in grids]
    anchors = gen(torch.zeros(2, 3, 320, 480), feature_maps)
    expected = torchvision_anchors_restated(FPN_SIZES, FPN_ASPECT_RATIOS, (320, 480), grids)
    assert len(anchors) == 2
    assert anchors[0].shape == (3 * sum(h * w for h, w in grids), 4)
    for per_image in anchors:
        assert torch.equal(per_image, expected)


def test_anchors_follow_the_feature_maps_dtype_and_each_image_gets_its_own_copy():
    gen = AnchorGenerator(sizes=((32,),), aspect_ratios=((1.0,),))
    anchors = gen(torch.zeros(2, 3, 64, 64), [torch.zeros(2, 1, 4, 4, dtype=torch.float64)])
    assert anchors[0].dtype == torch.float64
    anchors[0] += 1
    assert anchors[1][0].tolist() == [-16, -16, 16, 16]


def test_num_anchors_per_location_and_level_count_checks():
    gen = AnchorGenerator(sizes=((128, 256, 512),), aspect_ratios=((0.5, 1.0, 2.0),))
    assert gen.num_anchors_per_location() == [9]
    with pytest.raises(ValueError, match="2 feature maps for 1 anchor levels"):
        gen(torch.zeros(1, 3, 64, 64), [torch.zeros(1, 1, 4, 4)] * 2)
    with pytest.raises(ValueError, match="levels"):
        AnchorGenerator(sizes=((32,), (64,)), aspect_ratios=((1.0,),))
