"""R-CNN and Fast R-CNN: classify given region proposals, then refine their boxes (the R-CNN line, steps 1 and 2).

* R-CNN — *Rich feature hierarchies for accurate object detection and semantic segmentation* (Girshick, Donahue,
  Darrell, Malik 2014, arXiv:1311.2524): each proposal's image crop is warped to a fixed size and a whole CNN
  is run on it.
* Fast R-CNN — *Fast R-CNN* (Girshick 2015, arXiv:1504.08083): the CNN runs once per image; each proposal's
  feature is max-pooled from the shared map (RoI pooling, Sec. 2.1).

Both take external proposals (e.g. :func:`paperzoo.detection.selective_search.selective_search`) and end in the
same :class:`~paperzoo.detection.roi_heads.RoIHeads` as Faster R-CNN — proposal sampling, the multi-task loss
(Fast R-CNN Eq. 1), per-class box decoding and NMS — so the three models differ only in where the region
features come from:

    ============  =======================================================  ================================
    model         region features (the RoIHeads "pooler")                  head (the RoIHeads "box head")
    ============  =======================================================  ================================
    R-CNN         warp the image crop (+ context) to S x S: RegionWarp     a whole classifier: RegionCNN
    Fast R-CNN    RoI max pooling on one shared map: SingleLevelRoIPool    fc6, fc7: TwoMLPHead
    Faster R-CNN  RoIAlign on the FPN levels, proposals from the RPN       fc6, fc7: TwoMLPHead
    ============  =======================================================  ================================

Deviations from the papers:

* R-CNN: the per-class linear SVMs on fc7 (Sec. 2.3) are replaced by the fine-tuned softmax, which Fast R-CNN
  Sec. 5.4 found as good (VGG16 on VOC07: 66.9 vs 66.8 mAP) without a separate training stage; the class-specific
  box regressors (App. C: ridge regression on pool5 features of proposals with IoU > 0.6, fitted afterwards) are a
  linear layer on the classifier's penultimate features, trained jointly on the foreground regions (IoU >= 0.5)
  with RoIHeads' smooth L1 (Fast R-CNN Eq. 3, Detectron's beta = 1/9). Fine-tuning samples per image
  (RoIHeads): 64 regions, 25% of them IoU >= 0.5 — the paper's 32 + 96 per batch of 128 over two images — instead
  of uniformly over the batch. The warp is plain bilinear sampling, without antialiasing.
* Fast R-CNN: background proposals have IoU in [0, 0.5) (torchvision's), not [0.1, 0.5) (Sec. 2.3); one
  scale (Sec. 5.2: s = 600, longer side <= 1000); no truncated SVD (Sec. 3.1); fc6/fc7 have 1024 units
  (torchvision's TwoMLPHead) rather than VGG16's 4096.
* Both: images go through :class:`~paperzoo.detection.transform.DetectionTransform` (normalize, resize, pad), and
  the proposals, given in original image coordinates, are scaled with them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers.frozen_bn import freeze_batch_norm
from ..registry import create_model, get_entry
from .boxes import clip_boxes_to_image
from .faster_rcnn import check_targets, freeze_levels
from .registry import register_detector
from .roi_heads import FastRCNNPredictor, RoIHeads, TwoMLPHead, _to_rois
from .roi_ops import roi_align, roi_pool
from .transform import DetectionTransform, resize_boxes

__all__ = ["dilate_for_context", "warp_regions", "RegionWarp", "RegionCNN", "SingleLevelRoIPool",
           "ProposalDetector", "RCNN", "FastRCNN", "rcnn", "fast_rcnn", "rcnn_resnet18", "rcnn_resnet50",
           "fast_rcnn_resnet18", "fast_rcnn_resnet50"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Fine-tuning sampling, R-CNN Sec. 2.3 and Fast R-CNN Sec. 2.3: 128 regions per batch of 2 images, 25% foreground
# (IoU >= 0.5). Test-time per-class NMS at IoU 0.3, the threshold of both papers' released code.
PAPER_ROI_HEADS = dict(fg_iou_thresh=0.5, bg_iou_thresh=0.5, batch_size_per_image=64, positive_fraction=0.25,
                       nms_thresh=0.3)


def dilate_for_context(boxes: Tensor, output_size: int, context_padding: int) -> Tensor:
    """R-CNN Sec. 2.1 / App. A: grow xyxy ``boxes`` (K, 4) about their centres so that, once warped to
    ``output_size`` pixels, ``p = context_padding`` pixels of context surround the original box.

    The original box then fills the central ``S - 2p`` warped pixels, so each side grows by ``p * w / (S - 2p)``.
    """
    if not 0 <= 2 * context_padding < output_size:
        raise ValueError(f"context_padding must be in [0, output_size / 2), got {context_padding} for {output_size}")
    grow = context_padding / (output_size - 2 * context_padding)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return boxes + grow * torch.stack((-w, -h, w, h), dim=1)


def warp_regions(images: Tensor, rois: Tensor, output_size: int, context_padding: int = 0) -> Tensor:
    """R-CNN's warp (Sec. 2.1, App. A): every RoI's crop, dilated for context, resized to ``S x S`` regardless of
    its aspect ratio — one :func:`roi_align` call. ``(B, C, H, W)``, ``(K, 5)`` -> ``(K, C, S, S)``.

    With ``aligned=True`` and one sample per bin, warped pixel ``j`` reads ``x1 + (j + 0.5) * w / S - 0.5``: the
    source coordinate of ``F.interpolate(crop, S, mode="bilinear", align_corners=False)`` (no antialiasing).
    ``images`` must be mean-subtracted: where the dilated box leaves the image the warp reads 0, i.e. "the
    image mean" of App. A.
    """
    boxes = dilate_for_context(rois[:, 1:], output_size, context_padding)
    # A 1-pixel zero border: samples up to one pixel outside the image then blend towards the mean instead of
    # being clamped onto the edge pixel, as roi_align does in that band. Shift the boxes by the border.
    padded = F.pad(images, (1, 1, 1, 1))
    shifted = torch.cat((rois[:, :1], boxes + 1.0), dim=1)
    return roi_align(padded, shifted, output_size, spatial_scale=1.0, sampling_ratio=1, aligned=True)


class RegionWarp(nn.Module):
    """R-CNN's region "pooler": :func:`warp_regions` on the image itself, with RoIHeads' pooler signature
    ``(features, proposals, image_sizes) -> (K, 3, S, S)``; ``features[featmap_name]`` is the normalized batch."""

    def __init__(self, output_size: int, context_padding: int = 16, featmap_name: str = "image") -> None:
        super().__init__()
        dilate_for_context(torch.zeros(0, 4), output_size, context_padding)  # fail early on a bad padding
        self.output_size, self.context_padding, self.featmap_name = output_size, context_padding, featmap_name

    def forward(self, features: Mapping[str, Tensor], proposals: Sequence[Tensor],
                image_sizes: Sequence[tuple[int, int]]) -> Tensor:
        images = features[self.featmap_name]
        return warp_regions(images, _to_rois(proposals), self.output_size, self.context_padding)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}, context_padding={self.context_padding}"


class RegionCNN(nn.Module):
    """R-CNN's region head: a whole registered classifier on each warped region, giving its penultimate
    features ``(K, D)`` (``forward_head(..., pre_logits=True)``; R-CNN Sec. 2.1 takes fc7 of AlexNet).

    The regions go through the CNN ``chunk_size`` at a time, so activation memory does not grow with the number
    of proposals at test time (2,000 per image in the paper). In training the chunks' activations are all kept
    for the backward pass, and BatchNorm normalizes each chunk by itself; RoIHeads samples only
    ``batch_size_per_image`` regions there, so keep ``chunk_size`` at least the training batch of regions.
    """

    def __init__(self, classifier: nn.Module, chunk_size: int = 128) -> None:
        super().__init__()
        if not hasattr(classifier, "forward_head") or not getattr(classifier, "num_features", 0):
            raise ValueError("RegionCNN needs an image classifier with forward_features / forward_head / "
                             f"num_features (paperzoo.create_model), got {type(classifier).__name__}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.classifier, self.chunk_size = classifier, chunk_size
        self.out_channels = classifier.num_features

    def forward(self, regions: Tensor) -> Tensor:
        if len(regions) == 0:
            return regions.new_zeros(0, self.out_channels)
        self.classifier.check_input(regions[:1])  # a warp size the network cannot take: one clear line
        return torch.cat([self.classifier.forward_head(self.classifier.forward_features(chunk), pre_logits=True)
                          for chunk in regions.split(self.chunk_size)])  # (K, D)


class SingleLevelRoIPool(nn.Module):
    """Fast R-CNN's RoI pooling layer (Sec. 2.1) on one shared map, with RoIHeads' pooler signature
    ``(features, proposals, image_sizes) -> (K, C, S, S)``; ``spatial_scale`` is 1 / the map's stride."""

    def __init__(self, output_size: int = 7, spatial_scale: float = 1 / 16, featmap_name: str = "0") -> None:
        super().__init__()
        self.output_size, self.spatial_scale, self.featmap_name = output_size, spatial_scale, featmap_name

    def forward(self, features: Mapping[str, Tensor], proposals: Sequence[Tensor],
                image_sizes: Sequence[tuple[int, int]]) -> Tensor:
        rois = _to_rois(proposals)
        return roi_pool(features[self.featmap_name], rois, self.output_size, self.spatial_scale)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}, spatial_scale={self.spatial_scale}"


class ProposalDetector(nn.Module):
    """What R-CNN and Fast R-CNN share: transform images and proposals, compute the features the region pooler
    reads, run RoIHeads, map detections back. Subclasses say how features are computed (:meth:`shared_features`).
    """

    paper = ""

    def __init__(self, transform: DetectionTransform, roi_heads: RoIHeads) -> None:
        super().__init__()
        self.transform, self.roi_heads = transform, roi_heads
        self.num_classes = roi_heads.box_predictor.cls_score.out_features  # with the background, as FasterRCNN's

    def shared_features(self, images: Tensor) -> OrderedDict[str, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, images: Sequence[Tensor], targets: Sequence[dict[str, Tensor]] | None = None,
                proposals: Sequence[Tensor] | None = None) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Train mode: ``{"loss_classifier", "loss_box_reg"}``; eval mode: per image ``boxes`` (K, 4) xyxy in
        original coordinates, ``scores`` (K,), ``labels`` (K,). ``proposals``: per image ``(P_i, 4)`` xyxy boxes
        in original image coordinates."""
        self._check(images, targets, proposals)
        original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        image_list, targets = self.transform(images, targets)
        proposals = [  # the proposals follow the image's resize; they are inputs, no gradient flows into them
            clip_boxes_to_image(resize_boxes(p.detach().float(), size, new), new)
            for p, size, new in zip(proposals, original_sizes, image_list.image_sizes)
        ]
        features = self.shared_features(image_list.tensors)
        detections, losses = self.roi_heads(features, proposals, image_list.image_sizes, targets)
        if self.training:
            return losses
        return self.transform.postprocess(detections, image_list.image_sizes, original_sizes)

    def _check(self, images: Sequence[Tensor], targets: Sequence[dict[str, Tensor]] | None,
               proposals: Sequence[Tensor] | None) -> None:
        name = type(self).__name__
        if proposals is None:
            raise ValueError(f"{name} classifies given regions: pass proposals=[(P_i, 4) xyxy boxes per image], "
                             "e.g. from paperzoo.detection.selective_search.selective_search(image)")
        if len(proposals) != len(images):
            raise ValueError(f"{name}: got {len(proposals)} proposal tensors for {len(images)} images")
        for i, p in enumerate(proposals):
            if not isinstance(p, Tensor) or p.dim() != 2 or p.shape[1] != 4:
                shape = tuple(p.shape) if isinstance(p, Tensor) else type(p).__name__
                raise ValueError(f"{name}: proposals of image {i} must be an (P, 4) xyxy tensor, got {shape}")
        if self.training and targets is None:
            raise ValueError(f"{name} in train mode needs targets (call .eval() to detect)")
        if targets is not None:
            check_targets(targets, len(images), self.num_classes)


class RCNN(ProposalDetector):
    """R-CNN (arXiv:1311.2524): each proposal's crop, dilated by ``p`` pixels of context and warped to
    ``S x S`` (Sec. 2.1), goes through a whole classifier; softmax scores and class-specific box regression
    (App. C) from its penultimate features.

    Args:
        classifier: an image classifier (``paperzoo.create_model(name, num_classes=0)``), run on every region.
        num_classes: object classes + background.
        warp_size: S (227 for the paper's AlexNet; the classifier's input size in :func:`rcnn`).
        context_padding: p, warped pixels of context around the box (16 at S = 227, Sec. 2.1).
        chunk_size: regions per forward pass of the classifier (:class:`RegionCNN`).
        min_size, max_size, image_mean, image_std: the :class:`DetectionTransform`.
        **roi_heads_args: override :data:`PAPER_ROI_HEADS` / other :class:`RoIHeads` arguments.
    """

    def __init__(self, classifier: nn.Module, num_classes: int, *, warp_size: int = 224, context_padding: int = 16,
                 chunk_size: int = 128, min_size: int = 600, max_size: int = 1000,
                 image_mean: Sequence[float] = IMAGENET_MEAN, image_std: Sequence[float] = IMAGENET_STD,
                 **roi_heads_args: Any) -> None:
        head = RegionCNN(classifier, chunk_size)
        roi_heads = RoIHeads(RegionWarp(warp_size, context_padding), head,
                             FastRCNNPredictor(head.out_channels, num_classes), **{**PAPER_ROI_HEADS, **roi_heads_args})
        super().__init__(DetectionTransform(min_size, max_size, image_mean, image_std), roi_heads)

    def shared_features(self, images: Tensor) -> OrderedDict[str, Tensor]:
        return OrderedDict(image=images)  # nothing is shared between regions: the "feature map" is the pixels


class FastRCNN(ProposalDetector):
    """Fast R-CNN (arXiv:1504.08083, Fig. 1): one backbone pass per image, RoI max pooling of every proposal on
    the shared map (Sec. 2.1), fc6 / fc7, softmax and class-specific box regression trained by Eq. 1.

    Args:
        backbone: ``create_model(name, features_only=True, out_indices=(k,))``: one map, whose stride (its
            ``feature_info.reduction()``) sets the pooler's ``spatial_scale``.
        num_classes: object classes + background.
        pool_size: H = W of the RoI pooling grid (7 for VGG16's fc6, Sec. 2.1).
        representation_size: units of fc6 and fc7.
        min_size, max_size, image_mean, image_std: the :class:`DetectionTransform` (Sec. 5.2: 600 / 1000).
        **roi_heads_args: override :data:`PAPER_ROI_HEADS` / other :class:`RoIHeads` arguments.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, *, pool_size: int = 7, representation_size: int = 1024,
                 min_size: int = 600, max_size: int = 1000, image_mean: Sequence[float] = IMAGENET_MEAN,
                 image_std: Sequence[float] = IMAGENET_STD, **roi_heads_args: Any) -> None:
        info = getattr(backbone, "feature_info", None)
        if info is None or len(info) != 1:
            raise ValueError("FastRCNN pools from one shared map: give it "
                             "create_model(name, features_only=True, out_indices=(k,))")
        channels, stride = info.channels()[0], info.reduction()[0]
        roi_heads = RoIHeads(SingleLevelRoIPool(pool_size, 1.0 / stride),
                             TwoMLPHead(channels * pool_size * pool_size, representation_size),
                             FastRCNNPredictor(representation_size, num_classes),
                             **{**PAPER_ROI_HEADS, **roi_heads_args})
        super().__init__(DetectionTransform(min_size, max_size, image_mean, image_std), roi_heads)
        self.backbone = backbone

    def shared_features(self, images: Tensor) -> OrderedDict[str, Tensor]:
        return OrderedDict([("0", self.backbone(images)[0])])  # (B, C, H / stride, W / stride)


# ----------------------------------------------------------------------------------------- registered models
def _stride16_level(name: str, model_args: dict[str, Any]) -> int:
    """The deepest feature level of ``name`` at stride <= 16: conv5_3 of VGG16 in the paper, C4 of a ResNet."""
    reductions = create_model(name, features_only=True, **model_args).feature_info.reduction()
    return max(i for i, r in enumerate(reductions) if r <= 16)


@register_detector
def rcnn(*, classifier: str = "resnet18", num_classes: int = 91, warp_size: int | None = None,
         context_padding: int | None = None, frozen_bn: bool = False,
         classifier_args: dict[str, Any] | None = None, **kw: Any) -> RCNN:
    """R-CNN on any registered image classifier; ``**kw`` go to :class:`RCNN`.

    ``warp_size`` defaults to the classifier's registered input size (224 for the ImageNet CNNs, 32 for the CIFAR
    ResNets) and ``context_padding`` to the paper's 16 / 227 of it. ``frozen_bn`` freezes its BatchNorms (for a
    pretrained classifier; R-CNN fine-tuned AlexNet, which has none).
    """
    net = create_model(classifier, num_classes=0, **(classifier_args or {}))
    if frozen_bn:
        freeze_batch_norm(net)
    size = warp_size or get_entry(classifier).input_size[0]
    pad = round(16 * size / 227) if context_padding is None else context_padding
    model = RCNN(net, num_classes, warp_size=size, context_padding=pad, **kw)
    model.model_family, model.backbone_name = "rcnn", classifier
    return model


@register_detector
def fast_rcnn(*, backbone: str = "resnet18", num_classes: int = 91, out_index: int | None = None,
              frozen_bn: bool = False, trainable_layers: int | None = None,
              backbone_args: dict[str, Any] | None = None, **kw: Any) -> FastRCNN:
    """Fast R-CNN on one feature level of any registered CNN; ``**kw`` go to :class:`FastRCNN`.

    ``out_index`` defaults to the deepest level at stride <= 16 (C4 of a ResNet); ``trainable_layers`` counts the
    levels up to it from the deepest (:func:`freeze_levels`; default: all train).
    """
    args = backbone_args or {}
    index = _stride16_level(backbone, args) if out_index is None else out_index
    body = create_model(backbone, features_only=True, out_indices=(index,), **args)
    if frozen_bn:
        freeze_batch_norm(body)
    if trainable_layers is not None:
        freeze_levels(body, trainable_layers)
    model = FastRCNN(body, num_classes, **kw)
    model.model_family, model.backbone_name = "fast_rcnn", backbone
    return model


@register_detector
def rcnn_resnet18(**kw: Any) -> RCNN:
    """R-CNN with a ResNet-18 region classifier (warp 224, context 16)."""
    return rcnn(classifier="resnet18", **kw)


@register_detector
def rcnn_resnet50(**kw: Any) -> RCNN:
    """R-CNN with a ResNet-50 region classifier (warp 224, context 16)."""
    return rcnn(classifier="resnet50", **kw)


@register_detector
def fast_rcnn_resnet18(**kw: Any) -> FastRCNN:
    """Fast R-CNN on ResNet-18's C4 (stride 16, 256 channels)."""
    return fast_rcnn(backbone="resnet18", **kw)


@register_detector
def fast_rcnn_resnet50(**kw: Any) -> FastRCNN:
    """Fast R-CNN on ResNet-50's C4 (stride 16, 1024 channels)."""
    return fast_rcnn(backbone="resnet50", **kw)
