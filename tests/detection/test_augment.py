"""YOLO's augmentation (Redmon et al. 2016, Sec. 2.2) and fresh scenes: boxes follow the pixels, identity at zero
strength, HSV arithmetic against colorsys, and every draw a function of (seed, epoch, index)."""

from __future__ import annotations

import colorsys
import math

import pytest
import torch

from paperzoo.data.loader import derive_seed
from paperzoo.detection.augment import (
    Compose,
    RandomExposureSaturation,
    RandomHorizontalFlip,
    RandomScaleTranslate,
    affine_boxes,
)
from paperzoo.detection.data import ScenesDetection
from paperzoo.detection.scenes import make_scenes
from paperzoo.detection.task import DetectionLoader, build_dataset
from paperzoo.train.api import resolve_config


def _rectangle(box: tuple[int, int, int, int], height: int = 64, width: int = 64):
    """A dark (3, H, W) image with one bright rectangle covering the pixels of the xyxy ``box``, and its target."""
    x1, y1, x2, y2 = box
    image = torch.zeros(3, height, width)
    image[:, y1:y2, x1:x2] = 1.0
    mask = image[:1] > 0
    return image, {"boxes": torch.tensor([box], dtype=torch.float32), "labels": torch.tensor([3]), "masks": mask}


def _bright_box(region: torch.Tensor) -> list[float]:
    """Tight xyxy box (pixel edges) of a bool (H, W) region."""
    ys, xs = region.any(1).nonzero().flatten(), region.any(0).nonzero().flatten()
    return [float(xs[0]), float(ys[0]), float(xs[-1] + 1), float(ys[-1] + 1)]


def _fixed(scale: float, tx: float, ty: float, **kw) -> RandomScaleTranslate:
    t = RandomScaleTranslate(0.2, 0.2, **kw)
    t.draw = lambda generator=None: (scale, tx, ty)  # the transform with these draws
    return t


def test_affine_boxes_is_the_hand_worked_map_about_the_centre():
    # 64 x 64, s = 1.5, shift (8, -4): x' = 1.5 (x - 32) + 40 = 1.5 x - 8, y' = 1.5 (y - 32) + 28 = 1.5 y - 20
    out = affine_boxes(torch.tensor([[16.0, 20.0, 24.0, 36.0]]), 1.5, (8.0, -4.0), (64, 64))
    assert out.tolist() == [[16.0, 10.0, 28.0, 34.0]]


def test_scaled_and_translated_rectangle_lands_exactly_on_its_transformed_box():
    image, target = _rectangle((16, 20, 24, 36))
    out, t = _fixed(1.5, 8 / 64, -4 / 64)(image, target)  # edges land on pixel edges: the region is exact
    assert t["boxes"].tolist() == [[16.0, 10.0, 28.0, 34.0]] and t["labels"].tolist() == [3]
    assert _bright_box(out[0] > 0.5) == [16.0, 10.0, 28.0, 34.0]
    assert _bright_box(t["masks"][0]) == [16.0, 10.0, 28.0, 34.0] and int(t["masks"].sum()) == 12 * 24
    assert torch.equal(out[0], out[2])  # every channel moves alike
    assert target["boxes"].tolist() == [[16, 20, 24, 36]]  # the input target is not modified


def test_boxes_follow_the_pixels_to_half_a_pixel_for_random_draws():
    g = torch.Generator().manual_seed(0)
    aug = RandomScaleTranslate(0.2, 0.1)
    for _ in range(20):
        x1, y1 = (int(v) for v in torch.randint(16, 30, (2,), generator=g))
        w, h = (int(v) for v in torch.randint(8, 18, (2,), generator=g))
        image, target = _rectangle((x1, y1, x1 + w, y1 + h))
        out, t = aug(image, target, g)
        # bilinear at pixel centres, thresholded at 1/2: the region is the box with its edges rounded to pixels
        assert (torch.tensor(_bright_box(out[0] > 0.5)) - t["boxes"][0]).abs().max() <= 0.5 + 1e-4
        assert (torch.tensor(_bright_box(t["masks"][0])) - t["boxes"][0]).abs().max() <= 0.5 + 1e-4


def test_boxes_leaving_the_image_are_clipped_or_dropped_by_their_visible_area():
    image = torch.zeros(3, 64, 64)
    boxes = torch.tensor([[4.0, 10.0, 20.0, 20.0], [40.0, 10.0, 60.0, 20.0], [16.0, 40.0, 40.0, 50.0]])
    masks = torch.zeros(3, 64, 64, dtype=torch.bool)
    target = {"boxes": boxes, "labels": torch.tensor([1, 2, 3]), "masks": masks}
    # shift 16 px left: box 1 -> x in [-12, 4): 4 of 16 px inside = 25%, kept (min_visible 0.25); box 2 whole;
    # box 3 -> [0, 24) whole. With a 20-px shift box 1 keeps 0 px and is dropped with its label and mask.
    _, t = _fixed(1.0, -16 / 64, 0.0)(image, target)
    assert t["boxes"].tolist() == [[0, 10, 4, 20], [24, 10, 44, 20], [0, 40, 24, 50]]
    assert t["labels"].tolist() == [1, 2, 3]
    _, t = _fixed(1.0, -20 / 64, 0.0)(image, target)
    assert t["labels"].tolist() == [2, 3] and t["masks"].shape == (2, 64, 64)
    assert t["boxes"].tolist() == [[20, 10, 40, 20], [0, 40, 20, 50]]  # box 3 clipped: 20 of 24 px visible
    _, t = _fixed(1.0, -16 / 64, 0.0, min_visible=0.3)(image, target)  # 25% < 30%: dropped
    assert t["labels"].tolist() == [2, 3]


def test_zoom_out_fills_the_uncovered_border_with_fill():
    image = torch.full((3, 32, 32), 0.5)
    out, _ = _fixed(0.5, 0.0, 0.0, fill=0.25)(image, {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0).long()})
    assert torch.allclose(out[:, 8:24, 8:24], torch.tensor(0.5)) and out[0, 0, 0] == 0.25 and out[0, 31, 31] == 0.25


def test_zero_strength_is_the_identity_and_draws_nothing():
    image, target = _rectangle((5, 6, 20, 30))
    g = torch.Generator().manual_seed(1)
    state = g.get_state()
    for aug in (RandomScaleTranslate(0.0, 0.0), RandomExposureSaturation(1.0, 1.0)):
        out, t = aug(image, target, g)
        assert out is image and t is target
    assert torch.equal(g.get_state(), state)
    out, t = _fixed(1.0, 0.0, 0.0)(image, target)  # a drawn identity resamples every pixel onto itself
    assert torch.allclose(out, image, atol=1e-6) and torch.equal(t["boxes"], target["boxes"])


def _hsv_reference(image: torch.Tensor, exposure: float, saturation: float) -> torch.Tensor:
    """colorsys, pixel by pixel: S and V scaled and clipped at 1."""
    out = torch.empty_like(image)
    for y in range(image.shape[1]):
        for x in range(image.shape[2]):
            h, s, v = colorsys.rgb_to_hsv(*image[:, y, x].tolist())
            out[:, y, x] = torch.tensor(colorsys.hsv_to_rgb(h, min(s * saturation, 1.0), min(v * exposure, 1.0)))
    return out


def test_exposure_and_saturation_match_colorsys_in_hsv():
    image = torch.rand(3, 6, 7, generator=torch.Generator().manual_seed(2))
    image[:, 0, 0] = 0.0  # black, and a gray pixel: no hue
    image[:, 0, 1] = 0.4
    aug = RandomExposureSaturation(1.5, 1.5)
    for seed in range(4):
        g = torch.Generator().manual_seed(seed)
        out, _ = aug(image, {}, g)
        replay = torch.Generator().manual_seed(seed)
        u = torch.rand(2, generator=replay)  # saturation first, then exposure; log-uniform in [1/1.5, 1.5]
        f, e = (math.exp(math.log(1.5) * (2 * float(v) - 1)) for v in u)
        assert torch.allclose(out, _hsv_reference(image, e, f), atol=1e-5)


def test_gray_images_get_exposure_only():
    image = torch.linspace(0, 1, 50).reshape(1, 5, 10).expand(3, -1, -1)
    g = torch.Generator().manual_seed(0)
    out, _ = RandomExposureSaturation(1.5, 1.5)(image, {}, g)
    e = math.exp(math.log(1.5) * (2 * float(torch.rand(2, generator=torch.Generator().manual_seed(0))[1]) - 1))
    assert torch.allclose(out, (image * e).clamp(max=1), atol=1e-6)


def test_augmented_scenes_are_a_function_of_seed_epoch_and_index(fmnist_dir):
    aug = Compose([RandomHorizontalFlip(0.5), RandomScaleTranslate(0.2, 0.2), RandomExposureSaturation(1.5, 1.5)])
    ds = ScenesDetection("test", 12, seed=1, root=fmnist_dir, transform=aug, transform_seed=5)
    first = [ds[i] for i in range(len(ds))]
    torch.manual_seed(7)  # the global RNG plays no part
    again = [ds[i] for i in reversed(range(len(ds)))][::-1]
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"]) for a, b in zip(first, again))
    ds.set_epoch(1)
    assert any(not torch.equal(a[0], ds[i][0]) for i, a in enumerate(first))


def test_fresh_scenes_change_per_epoch_and_replay_exactly(fmnist_dir):
    ds = ScenesDetection("train", 6, seed=0, root=fmnist_dir, fresh=True)
    ds.set_epoch(3)
    image, target = ds[4]
    made = make_scenes("train", 1, seed=derive_seed(0, 3, 4, 4), root=fmnist_dir)
    assert torch.equal(image[0], made.images[0, 0].float() / 255) and torch.equal(target["boxes"], made.boxes[0])
    assert target["image_id"] == 5 and len(ds) == 6
    other = ScenesDetection("train", 6, seed=0, root=fmnist_dir, fresh=True)  # a resumed run's new dataset
    other.set_epoch(3)
    assert torch.equal(other[4][0], image)
    other.set_epoch(4)
    assert not torch.equal(other[4][0], image)
    with pytest.raises(ValueError, match="fresh=True"):
        ds.coco_dict()


def test_recipe_options_build_the_augmentation_and_resume_mid_epoch(tmp_path):
    over = ["train.time_budget_s=null", "data.n_train=8", "data.n_val=4", f"run.out_dir={tmp_path}",
            "data.scale_jitter=0.2", "data.translate=0.2", "data.exposure=1.5", "data.saturation=1.5",
            "data.fresh_scenes=true"]
    cfg = resolve_config("detect_scenes", over)
    ds = build_dataset(cfg.data, "train", seed=3)
    assert "RandomScaleTranslate(scale=0.2" in repr(ds.transform) and ds.fresh and not ds.masks
    assert build_dataset(cfg.data, "val").transform is None and not build_dataset(cfg.data, "val").fresh
    a = DetectionLoader(ds, 2, seed=3, device="cpu")
    a.set_epoch(1)
    full = list(a)
    b = DetectionLoader(build_dataset(cfg.data, "train", seed=3), 2, seed=3, device="cpu")
    b.load_state_dict({"epoch": 1, "batch": 2, "seed": 3})
    b.set_epoch(1)
    for (xa, ta), (xb, tb) in zip(full[2:], list(b), strict=True):
        assert all(torch.equal(p, q) for p, q in zip(xa, xb))
        assert all(torch.equal(p["boxes"], q["boxes"]) for p, q in zip(ta, tb))
    plain = build_dataset(resolve_config("detect_scenes", over[:4]).data, "train", seed=3)
    assert isinstance(plain.transform, RandomHorizontalFlip)  # defaults: the flip alone, as before


@pytest.mark.parametrize("bad", ["data.exposure=0.5", "data.scale_jitter=1.0", "data.fresh_scenes=true"])
def test_bad_augmentation_settings_are_config_errors(tmp_path, bad):
    extra = ["data.dataset=coco", f"data.root={tmp_path}"] if bad.startswith("data.fresh") else []
    with pytest.raises(ValueError, match=bad.split("=")[0]):
        resolve_config("detect_scenes", ["train.time_budget_s=null", *extra, bad])


def test_scenes_without_masks_serve_the_same_boxes_and_keep_no_masks(fmnist_dir):
    full = ScenesDetection("test", 5, seed=1, root=fmnist_dir)
    lean = ScenesDetection("test", 5, seed=1, root=fmnist_dir, masks=False,
                           transform=RandomScaleTranslate(0.2, 0.2))
    image, target = lean[2]
    assert "masks" not in target and lean.scenes.masks == []
    assert torch.equal(lean.load(2)[1]["boxes"], full[2][1]["boxes"]) and image.shape == (3, 128, 128)
    with pytest.raises(ValueError, match="masks=False"):
        lean.coco_dict()
