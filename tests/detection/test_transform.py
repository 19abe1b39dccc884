"""The detection input transform: torchvision's resize sizes, the same pixels, zero padding to a multiple of 32,
boxes that follow the image and come back through postprocess, multi-scale draws, and clear errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from paperzoo.detection.transform import DetectionTransform, ImageList, resize_boxes

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def coco_transform(**kwargs) -> DetectionTransform:
    return DetectionTransform(800, 1333, MEAN, STD, **kwargs).eval()


@pytest.mark.parametrize(
    "hw, resized, padded",
    [
        ((480, 640), (800, 1066), (800, 1088)),  # landscape: floor(640 * 800 / 480) = 1066
        ((640, 480), (1066, 800), (1088, 800)),  # portrait
        ((333, 500), (800, 1201), (800, 1216)),  # 333 * (800 / 333) in float64 is 800, not 799 as in float32
        ((20, 1000), (26, 1333), (32, 1344)),  # long side capped by max_size: scale 1.333
        ((10, 10), (800, 800), (800, 800)),  # tiny square upsampled
    ],
)
def test_resize_sizes_and_padding_match_torchvision(hw, resized, padded):
    images, _ = coco_transform()([torch.rand(3, *hw)])
    assert images.image_sizes == [resized]
    assert tuple(images.tensors.shape) == (1, 3, *padded)
    assert padded[0] % 32 == 0 and padded[1] % 32 == 0


def test_pixels_are_normalized_bilinear_resize_with_zero_padding():
    g = torch.Generator().manual_seed(0)
    small, large = torch.rand(3, 30, 47, generator=g), torch.rand(3, 60, 41, generator=g)
    transform = DetectionTransform(64, 100, MEAN, STD).eval()
    images, _ = transform([small, large])
    mean, std = torch.tensor(MEAN)[:, None, None], torch.tensor(STD)[:, None, None]
    for i, img in enumerate((small, large)):
        h, w = images.image_sizes[i]
        # recompute_scale_factor=True samples with the ratio old / new side, which is what an explicit size does
        expected = F.interpolate(((img - mean) / std)[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        torch.testing.assert_close(images.tensors[i, :, :h, :w], expected)
        assert images.tensors[i, :, h:, :].abs().sum() == 0 and images.tensors[i, :, :, w:].abs().sum() == 0
    # 30x47: the cap binds, scale 100 / 47, 30 * 2.128 = 63.8 -> 63; 60x41: scale 64 / 41, 60 * 1.561 = 93.7 -> 93
    assert images.image_sizes == [(63, 100), (93, 64)]
    assert tuple(images.tensors.shape) == (2, 3, 96, 128)


def test_constant_mean_image_normalizes_to_zero():
    image = torch.tensor(MEAN)[:, None, None].expand(3, 32, 32).clone()
    images, _ = coco_transform()([image])
    assert images.tensors.abs().max() < 1e-5


def test_boxes_follow_the_resize_and_inputs_are_untouched():
    boxes = torch.tensor([[0.0, 0.0, 640.0, 480.0], [64.0, 48.0, 128.0, 96.0]])
    target = {"boxes": boxes.clone(), "labels": torch.tensor([1, 2])}
    _, targets = coco_transform()([torch.rand(3, 480, 640)], [target])
    ratio_w, ratio_h = 1066 / 640, 800 / 480
    expected = torch.tensor([[0.0, 0.0, 1066.0, 800.0], [64 * ratio_w, 48 * ratio_h, 128 * ratio_w, 96 * ratio_h]])
    torch.testing.assert_close(targets[0]["boxes"], expected)
    assert torch.equal(targets[0]["labels"], target["labels"])
    assert torch.equal(target["boxes"], boxes)  # the caller's dict keeps its boxes


def test_masks_follow_the_resize():
    masks = torch.zeros(1, 40, 60, dtype=torch.uint8)
    masks[0, 10:20, 30:60] = 1
    _, targets = DetectionTransform(80, 1000, MEAN, STD).eval()([torch.rand(3, 40, 60)],
                                                                [{"boxes": torch.zeros(1, 4), "masks": masks}])
    resized = targets[0]["masks"]
    assert resized.shape == (1, 80, 120) and resized.dtype == torch.uint8
    assert resized[0, 20:40, 60:120].all() and resized.sum() == 20 * 60


def test_postprocess_inverts_the_box_scaling():
    transform = coco_transform()
    original = [(480, 640), (333, 500)]
    boxes = [torch.tensor([[10.0, 20.0, 300.0, 400.0]]), torch.tensor([[0.0, 0.0, 500.0, 333.0], [5, 6, 7, 8.0]])]
    images, targets = transform([torch.rand(3, *hw) for hw in original], [{"boxes": b} for b in boxes])
    detections = [{"boxes": t["boxes"], "scores": torch.ones(len(t["boxes"]))} for t in targets]
    back = transform.postprocess(detections, images.image_sizes, original)
    for det, b in zip(back, boxes):
        torch.testing.assert_close(det["boxes"], b)
        assert det["scores"].shape == (len(b),)
    assert not torch.equal(detections[0]["boxes"], back[0]["boxes"])  # scaled back, not returned as they were


def test_resize_boxes_uses_per_axis_ratios():
    out = resize_boxes(torch.tensor([[10.0, 10.0, 20.0, 20.0]]), (100, 200), (50, 800))
    torch.testing.assert_close(out, torch.tensor([[40.0, 5.0, 80.0, 10.0]]))


def test_training_draws_each_min_size_from_torch_rng_and_eval_uses_the_last():
    transform = DetectionTransform((32, 48, 64), 1000, MEAN, STD, size_divisible=1).train()
    image = torch.rand(3, 16, 16)
    torch.manual_seed(0)
    drawn = [transform([image])[0].image_sizes[0][0] for _ in range(30)]
    assert set(drawn) == {32, 48, 64}
    torch.manual_seed(0)
    assert [transform([image])[0].image_sizes[0][0] for _ in range(30)] == drawn  # reproducible under a seed
    assert transform.eval()([image])[0].image_sizes == [(64, 64)]


def test_fixed_size_ignores_the_aspect_ratio():
    images, targets = DetectionTransform(800, 1333, MEAN, STD, fixed_size=(64, 96)).eval()(
        [torch.rand(3, 32, 32)], [{"boxes": torch.tensor([[0.0, 0.0, 32.0, 32.0]])}])
    assert images.image_sizes == [(64, 96)]
    torch.testing.assert_close(targets[0]["boxes"], torch.tensor([[0.0, 0.0, 96.0, 64.0]]))


def test_image_list_to_keeps_sizes():
    images = ImageList(torch.zeros(1, 3, 32, 32), [(30, 31)]).to("cpu")
    assert images.image_sizes == [(30, 31)] and images.tensors.shape == (1, 3, 32, 32)


@pytest.mark.parametrize(
    "images, targets, message",
    [
        ([torch.rand(32, 32)], None, r"image 0: expected a \(3, H, W\) tensor, got shape \(32, 32\)"),
        ([torch.rand(3, 8, 8), torch.rand(4, 32, 32)], None, r"image 1: expected a \(3, H, W\) tensor"),
        ([torch.rand(3, 0, 32)], None, r"image 0: expected a \(3, H, W\)"),
        ([torch.zeros(3, 32, 32, dtype=torch.uint8)], None, "image 0: expected a float image"),
        ([], None, "non-empty list"),
        ([torch.rand(3, 8, 8)], [], "got 0 targets for 1 images"),
        ([torch.rand(3, 8, 8)], [{"boxes": torch.zeros(4)}], r"target 0: 'boxes' must be an \(N, 4\) tensor"),
        ([torch.rand(3, 8, 8)], [{"labels": torch.zeros(1)}], r"target 0: 'boxes' must be an \(N, 4\)"),
    ],
)
def test_bad_input_raises_one_clear_value_error(images, targets, message):
    with pytest.raises(ValueError, match=message):
        coco_transform()(images, targets)


def test_an_image_without_boxes_passes_through():
    _, targets = coco_transform()([torch.rand(3, 40, 50)], [{"boxes": torch.zeros(0, 4)}])
    assert targets[0]["boxes"].shape == (0, 4)
