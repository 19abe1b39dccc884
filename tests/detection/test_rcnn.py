"""R-CNN and Fast R-CNN (paperzoo.detection.rcnn): the warp, the single-level RoI pool, and both detectors end to end.

Run: .venv/bin/python -m pytest -q tests/detection/test_rcnn.py
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from paperzoo.detection.rcnn import RCNN, FastRCNN, SingleLevelRoIPool, dilate_for_context, warp_regions
from paperzoo.detection.registry import create_detector, detector_names
from paperzoo.detection.roi_ops import roi_pool
from paperzoo.models._base import ImageClassifier
from paperzoo.models.features import FeatureInfo, FeatureLevel

PLAIN = dict(image_mean=(0.0, 0.0, 0.0), image_std=(1.0, 1.0, 1.0))  # normalized pixels = raw pixels


def _crop_resize(image: Tensor, x1: int, y1: int, x2: int, y2: int, size: int) -> Tensor:
    """The reference: slice the region, then a plain bilinear resize."""
    crop = image[None, :, y1:y2, x1:x2]
    return F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False)[0]


def test_warp_equals_crop_and_bilinear_resize_of_the_context_padded_box():
    torch.manual_seed(0)
    images = torch.randn(2, 3, 40, 50)
    # S = 8, p = 2: each side grows by p / (S - 2p) = 1/2 of the box's size, 12 x 8 -> 24 x 16.
    rois = torch.tensor([[0, 10.0, 12.0, 22.0, 20.0], [1, 20.0, 10.0, 32.0, 30.0]])
    warped = warp_regions(images, rois, output_size=8, context_padding=2)
    assert warped.shape == (2, 3, 8, 8)
    torch.testing.assert_close(warped[0], _crop_resize(images[0], 4, 8, 28, 24, 8))
    torch.testing.assert_close(warped[1], _crop_resize(images[1], 14, 0, 38, 40, 8))


def test_warp_reads_the_mean_zero_outside_the_image():
    torch.manual_seed(1)
    image = torch.randn(1, 3, 30, 30)
    # Grown to (-2, -4, 22, 12), across the top-left corner; the first column samples x = -1, where a pixel's
    # worth of the mean blends in (roi_align alone would clamp onto column 0).
    rois = torch.tensor([[0, 4.0, 0.0, 16.0, 8.0]])
    warped = warp_regions(image, rois, output_size=8, context_padding=2)
    padded = F.pad(image[0], (8, 8, 8, 8))  # App. A: missing pixels are the mean, 0 once subtracted
    torch.testing.assert_close(warped[0], _crop_resize(padded, 6, 4, 30, 20, 8))


def test_context_padding_leaves_the_box_in_the_central_s_minus_2p_pixels():
    box = torch.tensor([[30.0, 40.0, 130.0, 90.0]])
    grown = dilate_for_context(box, 227, 16)
    scale = 227 / (grown[0, 2:] - grown[0, :2])  # warped pixels per source pixel, per axis
    torch.testing.assert_close((box[0, 2:] - box[0, :2]) * scale, torch.tensor([195.0, 195.0]))
    torch.testing.assert_close((box[0, :2] - grown[0, :2]) * scale, torch.tensor([16.0, 16.0]))
    with pytest.raises(ValueError, match="context_padding"):
        dilate_for_context(box, 32, 16)


def test_single_level_pooler_equals_roi_pool_on_the_map():
    torch.manual_seed(2)
    fmap = torch.randn(2, 5, 12, 16)
    proposals = [torch.tensor([[3.0, 5.0, 60.0, 40.0], [0.0, 0.0, 17.0, 9.0]]), torch.tensor([[10.0, 2.0, 50.0, 47.0]])]
    pooled = SingleLevelRoIPool(output_size=3, spatial_scale=0.25)({"0": fmap}, proposals, [(48, 64)] * 2)
    rois = torch.tensor([[0, 3.0, 5.0, 60.0, 40.0], [0, 0.0, 0.0, 17.0, 9.0], [1, 10.0, 2.0, 50.0, 47.0]])
    torch.testing.assert_close(pooled, roi_pool(fmap, rois, 3, 0.25))


# ------------------------------------------------------------------------------------------- whole detectors
def _tiny(name: str, **kw) -> nn.Module:
    # CIFAR ResNet-20 (0.27 M parameters) as R-CNN's classifier (warp 32) and Fast R-CNN's backbone (stride 4)
    args = dict(classifier="resnet20") if name == "rcnn" else dict(backbone="resnet20")
    return create_detector(name, num_classes=3, min_size=64, max_size=96, **args, **kw)


IMAGES = [torch.rand(3, 48, 40), torch.rand(3, 36, 60)]  # both resized (short side 48 / 36 -> 64)
TARGETS = [{"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0]]), "labels": torch.tensor([1])},
           {"boxes": torch.tensor([[10.0, 5.0, 35.0, 30.0], [40.0, 2.0, 58.0, 20.0]]), "labels": torch.tensor([2, 1])}]
# Pairwise disjoint boxes, so no NMS removes any of them.
PROPOSALS = [torch.tensor([[4.0, 6.0, 30.0, 40.0], [31.0, 0.0, 39.0, 47.0]]),
             torch.tensor([[10.0, 5.0, 35.0, 30.0], [40.0, 2.0, 58.0, 20.0], [0.0, 31.0, 20.0, 36.0]])]


@pytest.mark.parametrize("name", ["rcnn", "fast_rcnn"])
def test_train_mode_gives_finite_losses_that_reach_the_cnn(name):
    torch.manual_seed(3)
    model = _tiny(name).train()
    losses = model(IMAGES, TARGETS, PROPOSALS)
    assert set(losses) == {"loss_classifier", "loss_box_reg"}
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    sum(losses.values()).backward()
    cnn = model.roi_heads.box_head.classifier if name == "rcnn" else model.backbone
    first_conv = next(p for p in cnn.parameters() if p.dim() == 4)
    assert first_conv.grad is not None and first_conv.grad.abs().sum() > 0


def _force_label(model: nn.Module, label: int) -> None:
    """A hand-set predictor: class ``label`` wins every region and no box moves."""
    predictor = model.roi_heads.box_predictor
    with torch.no_grad():
        for p in predictor.parameters():
            p.zero_()
        predictor.cls_score.bias[label] = 10.0


@pytest.mark.parametrize("name", ["rcnn", "fast_rcnn"])
def test_eval_returns_the_proposals_in_original_coordinates(name):
    model = _tiny(name).eval()
    _force_label(model, 2)
    with torch.no_grad():
        detections = model(IMAGES, proposals=PROPOSALS)
    for det, proposals in zip(detections, PROPOSALS):
        assert set(det) == {"boxes", "scores", "labels"}
        assert (det["labels"] == 2).all() and len(det["boxes"]) == len(proposals)
        order = torch.argsort(det["boxes"][:, 0])  # equal scores: compare as sets, ordered by x1
        torch.testing.assert_close(det["boxes"][order], proposals[torch.argsort(proposals[:, 0])], atol=1e-4, rtol=0)


def _white_box_image() -> tuple[Tensor, Tensor]:
    image = torch.zeros(3, 40, 40)
    image[:, 8:24, 10:26] = 1.0
    return image, torch.tensor([10.0, 8.0, 26.0, 24.0])


def _hand_set_case(model: nn.Module) -> None:
    """Proposals: the object, the object shifted half its width, a background box; the object must win."""
    image, gt = _white_box_image()
    proposals = torch.stack((gt, gt + torch.tensor([8.0, 0.0, 8.0, 0.0]), torch.tensor([2.0, 28.0, 14.0, 38.0])))
    model.eval()
    with torch.no_grad():
        det = model([image], proposals=[proposals])[0]
    assert int(det["labels"][0]) == 1
    torch.testing.assert_close(det["boxes"][0], gt)
    assert det["scores"][0] > 0.9 and (det["scores"][1:] < det["scores"][0]).all()


class MeanIntensity(ImageClassifier):
    """A hand-made "classifier" whose one penultimate feature is the region's mean pixel."""

    num_features = 1

    def forward_features(self, x: Tensor) -> Tensor:
        return x.mean(dim=(1, 2, 3))[:, None]  # (K, 1)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return x


def test_rcnn_hand_set_on_region_brightness_finds_the_object():
    model = RCNN(MeanIntensity(), num_classes=2, warp_size=16, context_padding=2, min_size=40, max_size=40, **PLAIN)
    with torch.no_grad():  # the box fills (12/16)^2 of its warp: mean ~0.56 for the object, ~0.28 half off it
        model.roi_heads.box_predictor.cls_score.weight.copy_(torch.tensor([[0.0], [20.0]]))
        model.roi_heads.box_predictor.cls_score.bias.copy_(torch.tensor([0.0, -5.0]))
        model.roi_heads.box_predictor.bbox_pred.weight.zero_()
    _hand_set_case(model)


class Pixels(nn.Module):
    """A stride-1 'backbone' returning the image itself as its one feature map."""

    feature_info = FeatureInfo([FeatureLevel((), channels=3, reduction=1)], (0,))

    def forward(self, x: Tensor) -> list[Tensor]:
        return [x]


def test_fast_rcnn_hand_set_on_pooled_brightness_finds_the_object():
    model = FastRCNN(Pixels(), num_classes=2, pool_size=2, representation_size=1, min_size=40, max_size=40, **PLAIN)
    heads = model.roi_heads
    with torch.no_grad():  # fc6 = mean of the 2 x 2 max-pooled bins: 1 on the object, 0.5 half off it, 0 off
        heads.box_head.fc6.weight.fill_(1 / 12), heads.box_head.fc6.bias.zero_()
        heads.box_head.fc7.weight.fill_(1.0), heads.box_head.fc7.bias.zero_()
        heads.box_predictor.cls_score.weight.copy_(torch.tensor([[0.0], [20.0]]))
        heads.box_predictor.cls_score.bias.copy_(torch.tensor([0.0, -15.0]))
        heads.box_predictor.bbox_pred.weight.zero_()
    _hand_set_case(model)


@pytest.mark.parametrize("name", ["rcnn", "fast_rcnn"])
def test_missing_or_malformed_proposals_raise_one_clear_error(name):
    model = _tiny(name).eval()
    with pytest.raises(ValueError, match="pass proposals="):
        model(IMAGES)
    with pytest.raises(ValueError, match="proposals of image 1"):
        model(IMAGES, proposals=[PROPOSALS[0], torch.zeros(3)])
    with pytest.raises(ValueError, match="2 images"):
        model(IMAGES, proposals=PROPOSALS[:1])


def test_registry_builds_the_lineage_with_its_family_and_paper_defaults():
    assert {"rcnn", "fast_rcnn", "rcnn_resnet18", "fast_rcnn_resnet18"} <= set(detector_names())
    fast = create_detector("fast_rcnn_resnet18", num_classes=5)
    assert fast.model_family == "fast_rcnn" and fast.model_name == "fast_rcnn_resnet18"
    assert fast.roi_heads.box_roi_pool.spatial_scale == 1 / 16  # C4 of ResNet-18, like VGG16's conv5_3
    assert fast.roi_heads.box_head.fc6.in_features == 256 * 7 * 7
    assert fast.roi_heads.fg_bg_sampler.batch_size_per_image == 64  # Fast R-CNN Sec. 2.3: 128 RoIs / 2 images
    rcnn = create_detector("rcnn", classifier="resnet20", num_classes=5)
    assert rcnn.model_family == "rcnn" and rcnn.roi_heads.box_roi_pool.output_size == 32  # resnet20's input size
    assert rcnn.num_classes == fast.num_classes == 5
