"""Selective search (Uijlings et al. 2013): similarities against their formulas, merging, grouping, proposals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("skimage")

from paperzoo.detection.boxes import box_iou  # noqa: E402
from paperzoo.detection.selective_search import (  # noqa: E402
    MODES,
    Regions,
    _ranked,
    hierarchical_grouping,
    initial_regions,
    merge,
    neighbour_pairs,
    pixel_bins,
    selective_search,
    similarity,
    to_colour_space,
)

RECTS = [(8, 10, 40, 50), (60, 6, 120, 30), (70, 50, 110, 90)]  # xyxy, pixel edges


def rectangles_image() -> np.ndarray:
    """(96, 128, 3) uint8: three flat-coloured rectangles on a flat green background."""
    image = np.full((96, 128, 3), (40, 90, 40), np.uint8)
    for (x1, y1, x2, y2), colour in zip(RECTS, [(220, 30, 30), (30, 30, 220), (240, 240, 60)]):
        image[y1:y2, x1:x2] = colour
    return image


def natural_image(side: int = 64) -> np.ndarray:
    from skimage.data import astronaut
    from skimage.transform import resize

    return (resize(astronaut(), (side, side), anti_aliasing=True) * 255).round().astype(np.uint8)


def hand_made_regions() -> Regions:
    """Two regions in a 10 x 10 image: r0 has 10 pixels in box (0,0,2,5), r1 has 20 pixels in box (4,0,6,10)."""
    return Regions(
        size=np.array([10.0, 20.0]),
        box=np.array([[0, 0, 2, 5], [4, 0, 6, 10]]),
        colour=np.array([[0.5, 0.5, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]]),
        texture=np.array([[0.1, 0.2, 0.7], [0.6, 0.3, 0.1]]),
        image_size=100,
    )


@pytest.mark.parametrize("mode", ["fast", "quality"])
def test_flat_rectangles_are_found_exactly(mode):
    proposals = selective_search(rectangles_image(), mode)
    best = box_iou(torch.tensor(RECTS, dtype=torch.float32), proposals).amax(1)
    assert torch.equal(best, torch.ones(3)), best


def test_each_similarity_equals_its_formula():
    r, i, j = hand_made_regions(), np.array([0]), np.array([1])
    colour = 0.25 + 0.25 + 0.0 + 0.0  # s_colour = sum_k min(c_i^k, c_j^k), Sec. 3.2
    texture = 0.1 + 0.2 + 0.1  # s_texture: the same intersection
    size = 1 - (10 + 20) / 100  # s_size = 1 - (size_i + size_j) / size(im)
    fill = 1 - (6 * 10 - 10 - 20) / 100  # s_fill, with BB_ij = (0, 0, 6, 10)
    for measures, expected in [("C", colour), ("T", texture), ("S", size), ("F", fill),
                               ("CTSF", colour + texture + size + fill), ("TSF", texture + size + fill)]:
        np.testing.assert_allclose(similarity(r, i, j, measures), [expected], err_msg=measures)
    np.testing.assert_allclose(similarity(r, 1, np.array([0, 1]), "C"), [colour, 1.0])  # scalar i vs many j


def test_merge_propagates_histograms_as_size_weighted_average():
    r = hand_made_regions().with_capacity(3)
    merge(r, 0, 1, 2)
    np.testing.assert_allclose(r.colour[2], (10 * r.colour[0] + 20 * r.colour[1]) / 30)  # C_t, Sec. 3.2
    np.testing.assert_allclose(r.texture[2], (10 * r.texture[0] + 20 * r.texture[1]) / 30)
    assert r.size[2] == 30 and r.box[2].tolist() == [0, 0, 6, 10]


def test_merged_histograms_equal_the_histograms_of_the_union():
    rng = np.random.default_rng(0)
    channels = rng.random((12, 16, 3))
    labels = np.repeat(np.arange(4), 48).reshape(12, 16)  # 4 horizontal bands of 3 rows
    regions, _ = initial_regions(labels, *pixel_bins(channels))
    merged = regions.with_capacity(5)
    merge(merged, 1, 2, 4)
    union, _ = initial_regions(np.where(labels >= 2, labels - 1, labels), *pixel_bins(channels))  # band 2 joins band 1
    np.testing.assert_allclose(merged.colour[4], union.colour[1])
    np.testing.assert_allclose(merged.texture[4], union.texture[1])
    assert merged.box[4].tolist() == union.box[1].tolist() == [0, 3, 16, 9]


def test_initial_regions_match_direct_per_region_computation():
    rng = np.random.default_rng(1)
    channels = rng.random((10, 9, 2))
    labels = np.arange(90).reshape(10, 9) // 7 % 5  # 5 labels, scattered runs
    regions, pairs = initial_regions(labels, *pixel_bins(channels))
    for r in range(5):
        ys, xs = np.nonzero(labels == r)
        assert regions.size[r] == len(ys)
        assert regions.box[r].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        direct = np.concatenate([np.histogram(channels[ys, xs, c], bins=25, range=(0, 1))[0] for c in range(2)])
        np.testing.assert_allclose(regions.colour[r], direct / direct.sum())
        assert regions.texture[r].shape == (2 * 8 * 10,) and np.isclose(regions.texture[r].sum(), 1.0)


def test_neighbour_pairs_match_a_per_pixel_loop():
    labels = np.random.default_rng(2).integers(0, 6, (7, 8))
    expected = set()
    for y in range(7):
        for x in range(8):
            for dy, dx in ((0, 1), (1, 0)):
                if y + dy < 7 and x + dx < 8 and labels[y, x] != labels[y + dy, x + dx]:
                    a, b = labels[y, x], labels[y + dy, x + dx]
                    expected.add((min(a, b), max(a, b)))
    assert sorted(map(tuple, neighbour_pairs(labels).tolist())) == sorted(expected)


def test_grouping_merges_until_one_region_covers_the_image():
    labels = np.arange(16).reshape(4, 4) // 2  # 8 regions of 1 x 2 pixels
    regions, pairs = initial_regions(labels, *pixel_bins(np.zeros((4, 4, 3))))
    boxes = hierarchical_grouping(regions, pairs, "S")
    assert len(boxes) == 2 * 8 - 1
    assert boxes[:8].tolist() == regions.box.tolist()  # the initial regions first, unchanged
    assert boxes[-1].tolist() == [0, 0, 4, 4]
    assert boxes[8].tolist() == [0, 0, 4, 1]  # s_size alone: the first (tied) smallest neighbours merge first


def test_grouping_merges_the_most_similar_pair_first():
    labels = np.array([[0, 0, 0, 0, 1, 1, 2, 3, 3, 3]])  # sizes 4, 2, 1, 3 in a row
    regions, pairs = initial_regions(labels, *pixel_bins(np.zeros((1, 10, 1))))
    boxes = hierarchical_grouping(regions, pairs, "S")  # s_size: the pair with the fewest pixels merges first
    assert boxes[4:].tolist() == [[4, 0, 7, 1], [4, 0, 10, 1], [0, 0, 10, 1]]  # r1+r2 (3 px), +r3 (6 px), +r0


def test_texture_orientations_see_the_edge_and_its_polarity():
    step = np.zeros((9, 12, 1))
    step[:, 6:] = 1.0  # brighter towards +x
    _, bins = pixel_bins(step)  # (H, W, 8): orientation o at o * 45 degrees
    edge = bins[4, 5:7]  # (2, 8) the two columns beside the step
    assert (edge[:, 0] == 9).all()  # along +x: the full response, top bin
    assert (edge[:, 1] == edge[:, 7]).all() and (edge[:, 1] > 0).all()  # 45 and 315 degrees: cos 45 of it
    assert (edge[:, 2:7] == 0).all()  # across the edge or against its polarity: rectified to 0
    _, flipped = pixel_bins(1.0 - step)
    assert (flipped[4, 5:7, 4] == 9).all() and (flipped[4, 5:7, 0] == 0).all()


def test_ranking_orders_by_random_times_position_then_drops_lower_ranked_duplicates():
    hierarchy = np.array([[0, 0, 1, 1], [1, 0, 2, 1], [0, 0, 2, 1]])  # creation order, whole image last
    boxes = _ranked([hierarchy, hierarchy], np.random.default_rng(3))
    values = np.random.default_rng(3).random(6) * np.array([3, 2, 1, 3, 2, 1])  # v = RND * position, Sec. 3.3
    expected = []
    for k in np.argsort(values, kind="stable"):
        if hierarchy[k % 3].tolist() not in expected:
            expected.append(hierarchy[k % 3].tolist())
    assert boxes.tolist() == expected


def test_proposals_are_unique_xyxy_boxes_inside_the_image():
    image = natural_image()
    proposals = selective_search(image, "fast")
    assert proposals.dtype == torch.float32 and proposals.ndim == 2 and proposals.shape[1] == 4
    assert len(proposals) > 20
    assert (proposals[:, :2] >= 0).all() and (proposals[:, 2] <= 64).all() and (proposals[:, 3] <= 64).all()
    assert (proposals[:, 2:] > proposals[:, :2]).all()  # x2 > x1, y2 > y1
    assert len(torch.unique(proposals, dim=0)) == len(proposals)


def test_same_seed_same_proposals_other_seed_same_boxes_other_order():
    image = natural_image()
    first, again, other = (selective_search(image, seed=s) for s in (0, 0, 1))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert torch.equal(torch.unique(first, dim=0), torch.unique(other, dim=0))


def test_tensor_and_uint8_inputs_agree():
    image = natural_image()
    tensor = torch.from_numpy(image).permute(2, 0, 1).float() / 255  # (3, H, W)
    assert torch.equal(selective_search(image), selective_search(tensor))


def test_max_proposals_keeps_the_top_ranked_and_min_size_drops_small_boxes():
    image = natural_image()
    proposals = selective_search(image)
    assert torch.equal(selective_search(image, max_proposals=7), proposals[:7])
    sides = torch.minimum(proposals[:, 2] - proposals[:, 0], proposals[:, 3] - proposals[:, 1])
    assert torch.equal(selective_search(image, min_size=10), proposals[sides >= 10])


def test_upscale_maps_boxes_back_to_input_pixels():
    image = rectangles_image()
    proposals = selective_search(image, upscale=2.0)
    assert (proposals[:, 2] <= 128).all() and (proposals[:, 3] <= 96).all()
    assert torch.equal(proposals, proposals.round())
    assert torch.equal(box_iou(torch.tensor(RECTS, dtype=torch.float32), proposals).amax(1), torch.ones(3))


def test_modes_are_the_papers_strategy_sets():
    assert len(MODES["fast"]) == 8 and len(MODES["quality"]) == 80
    assert {s.colour_space for s in MODES["quality"]} == {"hsv", "lab", "rgi", "h", "i"}
    assert {s.k for s in MODES["fast"]} == {50, 100} and {s.measures for s in MODES["fast"]} == {"CTSF", "TSF"}


@pytest.mark.parametrize("space, channels", [("hsv", 3), ("lab", 3), ("rgi", 3), ("h", 1), ("i", 1), ("rgb", 3)])
def test_colour_spaces_stay_in_unit_range(space, channels):
    rgb = np.random.default_rng(4).random((8, 8, 3))
    rgb[0, 0] = 0.0  # black: rgI's chromaticity must not divide by zero
    out = to_colour_space(rgb, space)
    assert out.shape == (8, 8, channels) and out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("image, match", [
    (torch.rand(1, 8, 8), "float"),
    (np.zeros((8, 8, 3), np.float32), "uint8"),
    (torch.zeros(3, 8, 8, dtype=torch.uint8), "float"),
])
def test_bad_images_are_refused_with_one_line(image, match):
    with pytest.raises(ValueError, match=match):
        selective_search(image)


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="mode"):
        selective_search(rectangles_image(), "slow")
