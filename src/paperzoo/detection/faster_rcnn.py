"""Faster R-CNN with a Feature Pyramid Network: the RPN's proposals, RoIAlign on the pyramid, a two-layer head.

* Ren et al. 2015, "Faster R-CNN: Towards Real-Time Object Detection with Region Proposal Networks",
  arXiv:1506.01497: a Region Proposal Network shares the backbone's features with the Fast R-CNN detector
  (Sec. 3, Fig. 2), replacing selective search; the two are trained jointly ("approximate joint training",
  Sec. 3.2), the total loss being the sum of the RPN's and the detector's (Eq. 1 for each).
* Lin et al. 2017, "Feature Pyramid Networks for Object Detection", arXiv:1612.03144, Sec. 4: the RPN runs on
  every pyramid level P2..P6 with one anchor size per level, each RoI is pooled from the level its size selects
  (Eq. 1), and the head is two 1024-d fully connected layers (the "2fc MLP head") instead of ResNet's conv5.

The model wires stages written elsewhere, one file each as in torchvision's ``models/detection``: the resize /
normalize / pad transform (:mod:`.transform`), the backbone with its FPN (:mod:`.fpn`), the RPN (:mod:`.rpn`)
and the box head (:mod:`.roi_heads`). Its submodules are named ``transform``, ``backbone``, ``rpn`` and
``roi_heads`` so that the state dict has torchvision's keys: built by :func:`fasterrcnn_resnet50_fpn` it is
torchvision's ``fasterrcnn_resnet50_fpn`` (v1) layer for layer, 41,755,286 parameters with FrozenBatchNorm2d in
the backbone (41,808,406 with BatchNorm2d), and its checkpoints load through
``paperzoo.load_weights(model, path, source="torchvision")``.

Deviations from torchvision:

* the backbone is any registered CNN (``create_model(name, features_only=True)``) and ``trainable_layers``
  counts its feature levels from the deepest: for a ResNet levels are conv1+bn1, layer1, ..., layer4, exactly
  torchvision's ``trainable_backbone_layers``;
* the MobileNet builders put the FPN on four levels (strides 4-32), not torchvision's two-level MobileNet FPN;
* ``forward`` also takes external ``proposals`` (selective search's, say), which replace the RPN's;
* torchvision's COCO v1 checkpoint was trained with FrozenBatchNorm2d's eps = 0 (torchvision sets it after
  loading that file): build the model with ``frozen_bn_eps=0.0`` to reproduce its boxes exactly.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..layers.frozen_bn import freeze_batch_norm, set_frozen_bn_eps
from ..registry import create_model
from ..weights import register_converter
from .anchors import FPN_ASPECT_RATIOS, FPN_SIZES, AnchorGenerator
from .fpn import BackboneWithFPN
from .registry import create_detector, detector_names, register_detector
from .roi_heads import FastRCNNPredictor, MultiScaleRoIAlign, RoIHeads, TwoMLPHead
from .rpn import RegionProposalNetwork, RPNHead
from .transform import DetectionTransform, ImageList, resize_boxes

__all__ = ["FasterRCNN", "fpn_backbone", "freeze_levels", "check_targets", "create_detector", "detector_names",
           "register_detector", "fasterrcnn_fpn",
           "fasterrcnn_resnet50_fpn", "fasterrcnn_resnet18_fpn", "fasterrcnn_resnet34_fpn",
           "fasterrcnn_mobilenetv3_large_fpn"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ------------------------------------------------------------------------------------------------ backbone
def freeze_levels(body: nn.Module, trainable_layers: int) -> None:
    """Freeze the parameters of all but the ``trainable_layers`` deepest feature levels of a features-only model.

    A ResNet has five levels (conv1+bn1, layer1, layer2, layer3, layer4): 3 trains layer2-4 (torchvision's
    default for a pretrained backbone: the first stages' generic filters stay as ImageNet left them), 5 trains
    everything, 0 nothing. Only parameters are frozen; BatchNorm statistics are the norm layer's business.
    """
    levels = body.levels
    if not 0 <= trainable_layers <= len(levels):
        raise ValueError(f"trainable_layers must be in 0..{len(levels)} for {body.model_name} "
                         f"({len(levels)} feature levels), got {trainable_layers}")
    for level in levels[: len(levels) - trainable_layers]:
        for step in level.steps:
            if isinstance(step, str):
                body.get_submodule(step).requires_grad_(False)


def fpn_backbone(name: str, *, frozen_bn: bool = True, trainable_layers: int = 3,
                 out_indices: Sequence[int] | None = None, out_channels: int = 256,
                 extra_block: str | None = "maxpool", **model_args: Any) -> BackboneWithFPN:
    """A registered CNN with an FPN on its last four feature levels (C2..C5 of a ResNet: strides 4..32).

    Args:
        name: any registered CNN (``resnet50``, ``mobilenetv3_large_100``, ...).
        frozen_bn: every BatchNorm2d of the backbone becomes a FrozenBatchNorm2d (for a pretrained backbone;
            from random weights a frozen BatchNorm is the identity, so train those with ``False``).
        trainable_layers: how many of the deepest feature levels train (:func:`freeze_levels`).
        out_indices: the levels the FPN takes (default: the last four).
        out_channels: d of the FPN.
        extra_block: the FPN's extra levels (``"maxpool"``: P6 for the RPN; RetinaNet: ``"p6p7"``).
        **model_args: overrides for ``create_model`` (e.g. ``small_input=True``).
    """
    body = create_model(name, features_only=True, out_indices=out_indices or (-4, -3, -2, -1), **model_args)
    strides = body.feature_info.reduction()
    if any(b != 2 * a for a, b in zip(strides, strides[1:])):  # the pyramid's levels, anchors and RoI levels
        raise ValueError(f"{name}'s feature levels {body.out_indices} have strides {strides}: an FPN needs each "
                         "level at twice the previous one's stride (choose out_indices, or drop small_input)")
    if frozen_bn:
        freeze_batch_norm(body)
    freeze_levels(body, trainable_layers)
    return BackboneWithFPN(body, out_channels, extra_block)


# ----------------------------------------------------------------------------------------------- the model
class FasterRCNN(nn.Module):
    """Faster R-CNN (Ren et al. 2015) on a multi-level backbone (FPN, Lin et al. 2017).

    Args:
        backbone: image batch ``(B, 3, H, W)`` -> ``OrderedDict`` of maps with ``out_channels`` channels each
            (a :class:`~.fpn.BackboneWithFPN`).
        num_classes: classes including the background (91 for torchvision's COCO checkpoint). ``None`` when a
            ``box_predictor`` is given.
        min_size, max_size, image_mean, image_std, size_divisible: the transform (resize so that the short side
            is ``min_size`` unless the long one would exceed ``max_size``; normalize; pad to a multiple).
        anchor_sizes, aspect_ratios: anchors per level (FPN Sec. 4.1: 32..512 on P2..P6, ratios 1:2, 1:1, 2:1).
        rpn_*: the RPN's training targets (IoU >= 0.7 positive, < 0.3 negative, 256 anchors, half positive) and
            proposal selection (top-n per level before NMS, NMS at 0.7, top-n after), Faster R-CNN Sec. 3.1.2-3.3.
        box_roi_pool, box_head, box_predictor: replace the default MultiScaleRoIAlign(P2..P5, 7x7, 2 samples),
            TwoMLPHead(d*7*7, 1024) and FastRCNNPredictor(1024, num_classes).
        box_*: the detector's targets (IoU >= 0.5 foreground, 512 RoIs per image, 25 % foreground) and
            inference (score > 0.05, NMS 0.5 per class, 100 detections per image); ``bbox_reg_weights`` the box
            coder's (10, 10, 5, 5).

    ``forward(images, targets=None, proposals=None)``: see :meth:`forward`.
    """

    def __init__(self, backbone: nn.Module, num_classes: int | None = None, *,
                 min_size: int = 800, max_size: int = 1333, image_mean: Sequence[float] = IMAGENET_MEAN,
                 image_std: Sequence[float] = IMAGENET_STD, size_divisible: int = 32,
                 anchor_sizes: Sequence[Sequence[float]] = FPN_SIZES,
                 aspect_ratios: Sequence[Sequence[float]] = FPN_ASPECT_RATIOS,
                 rpn_pre_nms_top_n_train: int = 2000, rpn_pre_nms_top_n_test: int = 1000,
                 rpn_post_nms_top_n_train: int = 2000, rpn_post_nms_top_n_test: int = 1000,
                 rpn_nms_thresh: float = 0.7, rpn_fg_iou_thresh: float = 0.7, rpn_bg_iou_thresh: float = 0.3,
                 rpn_batch_size_per_image: int = 256, rpn_positive_fraction: float = 0.5,
                 rpn_score_thresh: float = 0.0,
                 box_roi_pool: nn.Module | None = None, box_head: nn.Module | None = None,
                 box_predictor: nn.Module | None = None, representation_size: int = 1024,
                 box_score_thresh: float = 0.05, box_nms_thresh: float = 0.5, box_detections_per_img: int = 100,
                 box_fg_iou_thresh: float = 0.5, box_bg_iou_thresh: float = 0.5,
                 box_batch_size_per_image: int = 512, box_positive_fraction: float = 0.25,
                 bbox_reg_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)) -> None:
        super().__init__()
        if not hasattr(backbone, "out_channels"):
            raise ValueError("the backbone must say its maps' channels in .out_channels (e.g. a BackboneWithFPN)")
        if (num_classes is None) == (box_predictor is None):
            raise ValueError("give num_classes or a box_predictor (exactly one of them)")
        if num_classes is not None and num_classes < 2:
            raise ValueError(f"num_classes counts the background and at least one class, got {num_classes}")
        d = backbone.out_channels
        anchors = AnchorGenerator(anchor_sizes, aspect_ratios)
        if len(set(anchors.num_anchors_per_location())) != 1:
            raise ValueError("every level needs the same number of anchors per position (one RPN head serves all)")

        self.transform = DetectionTransform(min_size, max_size, image_mean, image_std, size_divisible)
        self.backbone = backbone
        self.rpn = RegionProposalNetwork(
            anchors, RPNHead(d, anchors.num_anchors_per_location()[0]),
            fg_iou_thresh=rpn_fg_iou_thresh, bg_iou_thresh=rpn_bg_iou_thresh,
            batch_size_per_image=rpn_batch_size_per_image, positive_fraction=rpn_positive_fraction,
            pre_nms_top_n={"training": rpn_pre_nms_top_n_train, "testing": rpn_pre_nms_top_n_test},
            post_nms_top_n={"training": rpn_post_nms_top_n_train, "testing": rpn_post_nms_top_n_test},
            nms_thresh=rpn_nms_thresh, score_thresh=rpn_score_thresh)
        box_roi_pool = box_roi_pool or MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
        if box_head is None:  # FPN Sec. 4.2's "2fc" head on the pooled d x 7 x 7 features
            size = box_roi_pool.output_size
            height, width = (size, size) if isinstance(size, int) else size
            box_head = TwoMLPHead(d * height * width, representation_size)
        self.roi_heads = RoIHeads(
            box_roi_pool,
            box_head,
            box_predictor or FastRCNNPredictor(representation_size, num_classes),
            fg_iou_thresh=box_fg_iou_thresh, bg_iou_thresh=box_bg_iou_thresh,
            batch_size_per_image=box_batch_size_per_image, positive_fraction=box_positive_fraction,
            bbox_reg_weights=tuple(bbox_reg_weights), score_thresh=box_score_thresh, nms_thresh=box_nms_thresh,
            detections_per_img=box_detections_per_img)
        self.num_classes = num_classes if num_classes is not None else _predictor_classes(box_predictor)

    def forward(self, images: Sequence[Tensor], targets: Sequence[dict[str, Tensor]] | None = None,
                proposals: Sequence[Tensor] | None = None) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Losses in training mode, detections in eval mode.

        Args:
            images: ``(3, H_i, W_i)`` float RGB in [0, 1]; sizes may differ.
            targets: per image ``{"boxes": (N, 4) xyxy pixels, "labels": (N,) int64 in 1..num_classes-1}``;
                required in training; N may be 0.
            proposals: optional ``(P_i, 4)`` xyxy boxes in original image coordinates that replace the RPN's
                (then no RPN loss is returned).

        Returns:
            training: ``{"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}`` (scalars);
            eval: per image ``{"boxes": (K, 4) in original coordinates, "scores": (K,), "labels": (K,)}``.
        """
        if proposals is not None and len(proposals) != len(images):
            raise ValueError(f"got {len(proposals)} proposal sets for {len(images)} images")
        batch, targets, original_sizes = transform_inputs(self, images, targets)
        features = self.backbone(batch.tensors)  # {"0": P2, ..., "3": P5, "pool": P6}
        if proposals is None:
            proposals, rpn_losses = self.rpn(batch, features, targets)  # Faster R-CNN: the RPN proposes
        else:
            proposals, rpn_losses = [resize_boxes(p, o, s) for p, o, s in
                                     zip(proposals, original_sizes, batch.image_sizes)], {}  # as the targets
        detections, box_losses = self.roi_heads(features, proposals, batch.image_sizes, targets)
        if self.training:
            return {**rpn_losses, **box_losses}  # the joint objective is their sum (Sec. 3.2)
        return self.transform.postprocess(detections, batch.image_sizes, original_sizes)


def _predictor_classes(predictor: nn.Module) -> int:
    cls_score = getattr(predictor, "cls_score", None)
    if not isinstance(cls_score, nn.Linear):
        raise ValueError("with a custom box_predictor, give num_classes too (it has no cls_score layer to read)")
    return cls_score.out_features


def transform_inputs(model: nn.Module, images: Sequence[Tensor], targets: Sequence[dict[str, Tensor]] | None
                     ) -> tuple[ImageList, list[dict[str, Tensor]] | None, list[tuple[int, int]]]:
    """What every detector's forward does first: require targets in training and check them, keep the images'
    original sizes (detections are mapped back to them), and pass images and targets (copied: the transform
    resizes their boxes) through ``model.transform``. Returns (batch, targets, original sizes)."""
    if model.training and targets is None:
        raise ValueError("in training mode the model needs targets (one dict of boxes and labels per image)")
    if targets is not None:
        check_targets(targets, len(images), model.num_classes)
    original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
    batch, targets = model.transform(list(images), None if targets is None else [dict(t) for t in targets])
    return batch, targets, original_sizes


def check_targets(targets: Sequence[dict[str, Tensor]], num_images: int, num_classes: int) -> None:
    """Reject targets the losses would silently mis-handle, naming the image and box (one line).

    Boxes: float ``(N, 4)`` xyxy with ``x2 > x1`` and ``y2 > y1`` (a zero-size box has no regression target);
    labels: int64 ``(N,)`` in ``1..num_classes-1`` (0 is the background).
    """
    if len(targets) != num_images:
        raise ValueError(f"got {len(targets)} targets for {num_images} images")
    for i, t in enumerate(targets):
        boxes, labels = t.get("boxes"), t.get("labels")
        if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[-1] != 4 \
                or not boxes.is_floating_point():
            got = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
            raise ValueError(f"targets[{i}]['boxes'] must be a float (N, 4) tensor, got {got}")
        if not isinstance(labels, Tensor) or labels.shape != (boxes.shape[0],) or labels.dtype != torch.int64:
            got = f"{tuple(labels.shape)} {labels.dtype}" if isinstance(labels, Tensor) else type(labels).__name__
            raise ValueError(f"targets[{i}]['labels'] must be int64 of shape ({boxes.shape[0]},), got {got}")
        bad = ((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])).nonzero().flatten()
        if len(bad):
            j = int(bad[0])
            raise ValueError(f"targets[{i}] box {j} {boxes[j].tolist()} has zero or negative size "
                             "(need x2 > x1 and y2 > y1, xyxy pixels)")
        out = ((labels < 1) | (labels >= num_classes)).nonzero().flatten()
        if len(out):
            j = int(out[0])
            raise ValueError(f"targets[{i}] box {j} has label {int(labels[j])}, outside 1..{num_classes - 1} "
                             "(0 is the background)")


# ------------------------------------------------------------------------------------ torchvision checkpoints
# Our keys are torchvision's >= 0.13 keys. Its older checkpoints (the v1 COCO one among them) keep the RPN's
# 3x3 conv and the FPN's convolutions outside their Conv2dNormActivation wrappers; the BatchNorm counters are
# present with BatchNorm2d and absent with FrozenBatchNorm2d, whichever the model and the file use.
_PRE_013 = (
    (re.compile(r"^rpn\.head\.conv\.(weight|bias)$"), r"rpn.head.conv.0.0.\1"),
    (re.compile(r"^backbone\.fpn\.(inner_blocks|layer_blocks)\.(\d+)\.(weight|bias)$"), r"backbone.fpn.\1.\2.0.\3"),
)


def _match_bn_counters(sd: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Give ``sd`` the ``num_batches_tracked`` counters ``model`` has, and only those."""
    own = model.state_dict()
    sd = {k: v for k, v in sd.items() if not k.endswith(".num_batches_tracked") or k in own}
    for key, value in own.items():
        if key.endswith(".num_batches_tracked") and key not in sd:
            sd[key] = torch.zeros_like(value, device="cpu")
    return sd


@register_converter("fasterrcnn", "torchvision")
def _from_torchvision(sd: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    renamed = {}
    for key, value in sd.items():
        for old, new in _PRE_013:
            key = old.sub(new, key)
        renamed[key] = value
    return _match_bn_counters(renamed, model)


@register_converter("fasterrcnn", "paperzoo")
def _from_paperzoo(sd: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    return _match_bn_counters(sd, model)  # a BatchNorm-trained run loads into a frozen-BN model and back


# ----------------------------------------------------------------------------------------- registered models
def _build(backbone_name: str, num_classes: int, frozen_bn: bool, trainable_layers: int,
           frozen_bn_eps: float | None, backbone_args: dict[str, Any] | None, kw: dict[str, Any]) -> FasterRCNN:
    backbone = fpn_backbone(backbone_name, frozen_bn=frozen_bn, trainable_layers=trainable_layers,
                            **(backbone_args or {}))
    if frozen_bn_eps is not None:
        set_frozen_bn_eps(backbone, frozen_bn_eps)
    model = FasterRCNN(backbone, num_classes, **kw)
    model.model_family = "fasterrcnn"  # load_weights finds the converters above through it
    model.backbone_name = backbone_name
    return model


@register_detector
def fasterrcnn_fpn(*, backbone: str = "resnet18", num_classes: int = 91, frozen_bn: bool = False,
                   trainable_layers: int = 5, frozen_bn_eps: float | None = None,
                   backbone_args: dict[str, Any] | None = None, **kw: Any) -> FasterRCNN:
    """Faster R-CNN-FPN on any registered CNN ``backbone``; ``**kw`` go to :class:`FasterRCNN`.

    Defaults suit training from scratch (BatchNorm, every level trains); for a pretrained backbone take
    ``frozen_bn=True, trainable_layers=3`` as torchvision does.
    """
    return _build(backbone, num_classes, frozen_bn, trainable_layers, frozen_bn_eps, backbone_args, kw)


@register_detector
def fasterrcnn_resnet50_fpn(*, num_classes: int = 91, frozen_bn: bool = True, trainable_layers: int = 3,
                            frozen_bn_eps: float | None = None, **kw: Any) -> FasterRCNN:
    """torchvision's ``fasterrcnn_resnet50_fpn`` (v1): 41,755,286 parameters (41,808,406 with BatchNorm).

    For its COCO checkpoint pass ``frozen_bn_eps=0.0`` (it was trained before FrozenBatchNorm2d had an eps).
    """
    return _build("resnet50", num_classes, frozen_bn, trainable_layers, frozen_bn_eps, None, kw)


@register_detector
def fasterrcnn_resnet34_fpn(*, num_classes: int = 91, frozen_bn: bool = False, trainable_layers: int = 5,
                            **kw: Any) -> FasterRCNN:
    """ResNet-34-FPN (FPN on 64-512 channels), for training from scratch by default."""
    return _build("resnet34", num_classes, frozen_bn, trainable_layers, None, None, kw)


@register_detector
def fasterrcnn_resnet18_fpn(*, num_classes: int = 91, frozen_bn: bool = False, trainable_layers: int = 5,
                            **kw: Any) -> FasterRCNN:
    """ResNet-18-FPN: the small detector for small images (e.g. ``min_size=128``), from scratch by default."""
    return _build("resnet18", num_classes, frozen_bn, trainable_layers, None, None, kw)


@register_detector
def fasterrcnn_mobilenetv3_large_fpn(*, num_classes: int = 91, frozen_bn: bool = False,
                                     trainable_layers: int = 5, **kw: Any) -> FasterRCNN:
    """MobileNetV3-Large with a four-level FPN (strides 4-32; torchvision's MobileNet FPN has two levels)."""
    return _build("mobilenetv3_large_100", num_classes, frozen_bn, trainable_layers, None, None, kw)
