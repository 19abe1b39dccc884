"""RetinaNet: a one-stage detector whose focal loss lets every anchor train, the easy background included.

Lin, Goyal, Girshick, He, Dollar 2017, "Focal Loss for Dense Object Detection", arXiv:1708.02002.

* **Focal loss** (Sec. 3, Eq. 5): with ``p`` the sigmoid probability of a class and ``p_t`` the probability of
  the right answer (``p`` for the class, ``1 - p`` otherwise, Eq. 2),
  ``FL(p_t) = -alpha_t (1 - p_t)^gamma log(p_t)``, alpha = 0.25, gamma = 2. The factor ``(1 - p_t)^gamma`` all
  but removes the ~100k easy background anchors of an image, which under cross-entropy add up to more loss than
  the few objects (Fig. 1, Fig. 4). The loss is summed over all anchors and classes and divided by the number of
  anchors assigned to an object (Sec. 4.1).
* **Prior initialisation** (Sec. 3.3, 4.1): the last classification conv's bias is ``-log((1 - pi) / pi)``,
  pi = 0.01, so that every anchor starts with foreground probability ~0.01 and the background's loss does not
  destabilise the first iterations.
* **Architecture** (Sec. 4, Fig. 3): an FPN on C3-C5 plus P6, P7 (strides 8-128); on every level the same class
  subnet and box subnet, each four 3x3 convs of 256 channels with ReLU and a 3x3 output conv (K*A logits, 4*A
  deltas), weights normal(std 0.01); A = 9 anchors per position, sizes 32..512 times {2^0, 2^(1/3), 2^(2/3)},
  ratios {1:2, 1:1, 2:1}; an anchor is foreground at IoU >= 0.5, background below 0.4, ignored in between.
* **Inference** (Sec. 4): per level the top 1000 (anchor, class) scores above 0.05, decoded, merged, NMS 0.5 per
  class.

Built by :func:`retinanet_resnet50_fpn` it is torchvision's ``retinanet_resnet50_fpn`` (v1) layer for layer:
34,014,999 parameters with FrozenBatchNorm2d in the backbone (34,068,119 with BatchNorm2d), the same state-dict
keys, and its checkpoints (the pre-0.13 key names included) load with ``paperzoo.load_weights(model, path,
source="torchvision")``.

Deviations from the paper, all torchvision's (v1), so that its checkpoint gives its detections:

* P6 is computed from P5 (``extra_block="p6p7"``), not from C5 as in the paper (``"p6p7_c5"``, torchvision's v2);
* the box loss is L1 (the paper's is smooth L1), the box coder's weights (1, 1, 1, 1);
* the matcher also keeps each object's best anchor(s) whatever their IoU ("low-quality matches", as Detectron);
* the anchor sizes are truncated to integers (32, 40, 50 for 32 * 2^(0, 1/3, 2/3));
* each image's loss is divided by its own number of positive anchors, then averaged over the batch;
* up to 300 detections per image; the classifier has ``num_classes`` outputs per anchor, background (0) included
  as in torchvision's layout; that output never has a positive target, and we drop it from the detections.

Additions: ``cls_loss="ce"`` trains the same network with plain sigmoid cross-entropy on every anchor (the
baseline the paper's loss improves on), and the training dict logs the classification loss split into positives,
hard negatives and easy negatives (:func:`focal_loss_split`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers.frozen_bn import set_frozen_bn_eps
from ..weights import register_converter
from .anchors import AnchorGenerator
from .boxes import BoxCoder, box_iou, clip_boxes_to_image
from .faster_rcnn import IMAGENET_MEAN, IMAGENET_STD, _match_bn_counters, fpn_backbone, transform_inputs
from .matcher import Matcher
from .nms import batched_nms
from .registry import register_detector
from .transform import DetectionTransform

__all__ = ["RetinaNet", "RetinaNetHead", "sigmoid_focal_loss", "focal_loss_split", "octave_anchor_sizes",
           "RETINANET_ANCHOR_SIZES", "retinanet_fpn", "retinanet_resnet50_fpn"]

CLS_LOSSES = ("focal", "ce")


def octave_anchor_sizes(base_sizes: Sequence[float], scales_per_octave: int = 3) -> tuple[tuple[int, ...], ...]:
    """Sec. 4 "Anchors": per level, ``base * 2^(i / scales_per_octave)``, truncated to int as torchvision."""
    return tuple(tuple(int(b * 2 ** (i / scales_per_octave)) for i in range(scales_per_octave)) for b in base_sizes)


RETINANET_ANCHOR_SIZES = octave_anchor_sizes((32, 64, 128, 256, 512))  # P3..P7: (32, 40, 50), ..., (512, 645, 812)
RETINANET_ASPECT_RATIOS = ((0.5, 1.0, 2.0),) * 5


# ------------------------------------------------------------------------------------------------ the loss
def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float | None = 0.25, gamma: float = 2.0) -> Tensor:
    """The focal loss of every element (no reduction), Eq. 5: ``-alpha_t (1 - p_t)^gamma log(p_t)``.

    ``targets`` are 0 / 1 of the same shape. ``gamma = 0, alpha = None`` is plain binary cross-entropy (Eq. 1);
    ``gamma = 0`` with an alpha the alpha-balanced cross-entropy (Eq. 3). Computed in float32 at least.
    """
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    targets = targets.to(logits.dtype)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")  # -log(p_t), Eq. 1-2, stable
    p = torch.sigmoid(logits)
    p_t = p * targets + (1 - p) * (1 - targets)  # Eq. 2
    loss = ce * (1 - p_t) ** gamma if gamma else ce  # Eq. 4: the modulating factor down-weights easy examples
    if alpha is not None:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss  # alpha_t, Eq. 3 and 5
    return loss


def focal_loss_split(loss: Tensor, logits: Tensor, targets: Tensor, valid: Tensor, num_pos: Tensor
                     ) -> dict[str, Tensor]:
    """The loss of each image (summed over its anchors and classes, divided by its number of positive anchors, at
    least 1; Sec. 4.1) averaged over the batch: whole, and split three ways that add up to it.

    Args:
        loss, logits, targets: ``(B, T, K)``: per (anchor, class) loss, logit, 0 / 1 target.
        valid: ``(B, T)`` the anchors that count (the matcher ignores those of best IoU in [0.4, 0.5)).
        num_pos: ``(B,)`` foreground anchors per image.

    Returns ``{"all", "pos", "hard_neg", "easy_neg"}``: ``pos`` sums the elements of target 1 (an object's class on
    its anchors); a negative is an element of target 0 (every class of a background anchor, the other classes of
    a foreground one), *easy* when its probability is below 0.5 (it is already classified right: p_t > 0.5),
    *hard* otherwise. Under cross-entropy the easy negatives carry most of the loss; under the focal loss little.
    """
    def per_image_mean(mask: Tensor) -> Tensor:
        summed = torch.where(mask, loss, torch.zeros_like(loss)).sum(dim=(1, 2))  # (B,)
        return (summed / num_pos.clamp(min=1)).mean()

    counted = valid[..., None].expand_as(loss)  # (B, T, K)
    positive = counted & (targets > 0.5)
    easy = counted & ~positive & (logits < 0)  # sigmoid(logit) < 0.5
    return {"all": per_image_mean(counted), "pos": per_image_mean(positive),
            "hard_neg": per_image_mean(counted & ~positive & ~easy), "easy_neg": per_image_mean(easy)}


# ------------------------------------------------------------------------------------------------ the head
def _subnet_trunk(channels: int) -> nn.Sequential:
    """Four conv3x3 (C channels) + ReLU, each in its own Sequential (torchvision's ``conv.{i}.0`` keys)."""
    return nn.Sequential(*(nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True))
                           for _ in range(4)))


def _per_anchor(x: Tensor, per_anchor: int) -> Tensor:
    """``(B, A * n, H, W)`` -> ``(B, H * W * A, n)``: the AnchorGenerator's order (positions row-major, A each)."""
    b, _, h, w = x.shape
    return x.view(b, -1, per_anchor, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, per_anchor)  # (B, H, W, A, n)


class _Subnet(nn.Module):
    """One of RetinaNet's two subnets (Fig. 3 c, d), shared by all levels; ``out`` is named as torchvision's."""

    def __init__(self, channels: int, num_anchors: int, per_anchor: int, out_name: str, bias: float) -> None:
        super().__init__()
        self.per_anchor = per_anchor
        self.conv = _subnet_trunk(channels)
        self.out_name = out_name
        self.add_module(out_name, nn.Conv2d(channels, num_anchors * per_anchor, 3, padding=1))
        for m in self.modules():  # Sec. 4.1: "initialized with bias b = 0 and a Gaussian weight fill with s = 0.01"
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)
        nn.init.constant_(getattr(self, out_name).bias, bias)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        out = getattr(self, self.out_name)
        return torch.cat([_per_anchor(out(self.conv(f)), self.per_anchor) for f in features], dim=1)  # (B, T, n)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:
        """Accept torchvision < 0.13's keys ``conv.{2i}.*`` (convs and ReLUs in one Sequential) as ``conv.{i}.0.*``."""
        _rename_old_trunk_keys(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def _rename_old_trunk_keys(state_dict: dict, prefix: str) -> None:
    old = re.compile(re.escape(prefix) + r"conv\.(\d+)\.(weight|bias)$")
    for key in [k for k in state_dict if old.match(k)]:
        i, kind = old.match(key).groups()
        state_dict[f"{prefix}conv.{int(i) // 2}.0.{kind}"] = state_dict.pop(key)


class RetinaNetHead(nn.Module):
    """The class subnet (``classification_head``: K * A logits per position) and the box subnet
    (``regression_head``: 4 * A deltas); ``prior`` sets the logits' initial bias (Sec. 3.3: -log((1 - pi) / pi))."""

    def __init__(self, in_channels: int, num_anchors: int, num_classes: int, prior: float = 0.01) -> None:
        super().__init__()
        if not 0.0 < prior < 1.0:
            raise ValueError(f"the prior probability must be in (0, 1), got {prior}")
        self.classification_head = _Subnet(in_channels, num_anchors, num_classes, "cls_logits",
                                           -math.log((1 - prior) / prior))
        self.regression_head = _Subnet(in_channels, num_anchors, 4, "bbox_reg", 0.0)

    def forward(self, features: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Maps ``[(B, d, H_l, W_l)]`` -> class logits ``(B, T, K)``, box deltas ``(B, T, 4)``; T = sum H_l W_l A."""
        return self.classification_head(features), self.regression_head(features)


# ----------------------------------------------------------------------------------------------- the model
class RetinaNet(nn.Module):
    """RetinaNet (Lin et al. 2017) on a pyramid backbone.

    Args:
        backbone: image batch ``(B, 3, H, W)`` -> ``OrderedDict`` of maps with ``out_channels`` channels each,
            one per anchor level (a :class:`~.fpn.BackboneWithFPN` with ``extra_block="p6p7"``: P3..P7).
        num_classes: classes including the background (91 for torchvision's COCO checkpoint).
        min_size, max_size, image_mean, image_std, size_divisible: the transform (:class:`~.transform.
            DetectionTransform`).
        anchor_sizes, aspect_ratios: anchors per level (Sec. 4: 3 octave scales x 3 ratios on P3..P7).
        fg_iou_thresh, bg_iou_thresh: foreground at IoU >= 0.5, background below 0.4, ignored in between.
        cls_loss: ``"focal"`` (Eq. 5, with ``focal_alpha``, ``focal_gamma``) or ``"ce"``: plain sigmoid
            cross-entropy on every anchor, unweighted (gamma 0, no alpha), the same normalisation.
        prior: pi of the classification bias (Sec. 3.3).
        score_thresh, topk_candidates, nms_thresh, detections_per_img: inference (0.05, 1000 per level, NMS 0.5
            per class, 300 per image).
    """

    def __init__(self, backbone: nn.Module, num_classes: int, *,
                 min_size: int = 800, max_size: int = 1333, image_mean: Sequence[float] = IMAGENET_MEAN,
                 image_std: Sequence[float] = IMAGENET_STD, size_divisible: int = 32,
                 anchor_sizes: Sequence[Sequence[float]] = RETINANET_ANCHOR_SIZES,
                 aspect_ratios: Sequence[Sequence[float]] = RETINANET_ASPECT_RATIOS,
                 fg_iou_thresh: float = 0.5, bg_iou_thresh: float = 0.4,
                 cls_loss: str = "focal", focal_alpha: float | None = 0.25, focal_gamma: float = 2.0,
                 prior: float = 0.01, score_thresh: float = 0.05, topk_candidates: int = 1000,
                 nms_thresh: float = 0.5, detections_per_img: int = 300) -> None:
        super().__init__()
        if not hasattr(backbone, "out_channels"):
            raise ValueError("the backbone must say its maps' channels in .out_channels (e.g. a BackboneWithFPN)")
        if num_classes < 2:
            raise ValueError(f"num_classes counts the background and at least one class, got {num_classes}")
        if cls_loss not in CLS_LOSSES:
            raise ValueError(f"cls_loss must be one of {CLS_LOSSES}, got {cls_loss!r}")
        anchors = AnchorGenerator(anchor_sizes, aspect_ratios)
        if len(set(anchors.num_anchors_per_location())) != 1:
            raise ValueError("every level needs the same number of anchors per position (one head serves all)")
        self.transform = DetectionTransform(min_size, max_size, image_mean, image_std, size_divisible)
        self.backbone = backbone
        self.anchor_generator = anchors
        self.head = RetinaNetHead(backbone.out_channels, anchors.num_anchors_per_location()[0], num_classes, prior)
        self.matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=True)
        self.box_coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
        self.num_classes = num_classes
        # "ce": Eq. 1 on every anchor, each counted once; the focal loss's parameters are then unused
        self.focal_alpha, self.focal_gamma = (focal_alpha, focal_gamma) if cls_loss == "focal" else (None, 0.0)
        self.cls_loss = cls_loss
        self.score_thresh, self.topk_candidates = score_thresh, topk_candidates
        self.nms_thresh, self.detections_per_img = nms_thresh, detections_per_img

    def forward(self, images: Sequence[Tensor], targets: Sequence[dict[str, Tensor]] | None = None,
                proposals: Sequence[Tensor] | None = None) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Losses in training mode, detections in eval mode (``proposals`` is accepted and ignored: one stage).

        Returns:
            training: ``loss_classifier`` and ``loss_box_reg`` (optimized), and, only logged, ``cls_pos``,
            ``cls_hard_neg``, ``cls_easy_neg`` (the classification loss split, :func:`focal_loss_split`) and
            ``num_pos`` (foreground anchors per image);
            eval: per image ``{"boxes": (K, 4) in original coordinates, "scores": (K,), "labels": (K,)}``.
        """
        batch, targets, original_sizes = transform_inputs(self, images, targets)
        features = list(self.backbone(batch.tensors).values())  # [P3, ..., P7], (B, d, H_l, W_l)
        cls_logits, box_deltas = self.head(features)  # (B, T, K), (B, T, 4)
        # the anchors (T, 4), the same for every padded image, in float32 even under bf16 autocast (which would
        # round pixel coordinates above 256): the generator reads only the grids' sizes, dtype and device
        grids = [f.new_empty(f.shape[-2:], dtype=torch.float32) for f in features]
        anchors = self.anchor_generator(batch.tensors, grids)[0]
        if self.training:
            return self.losses(cls_logits, box_deltas, anchors, targets)
        a = self.anchor_generator.num_anchors_per_location()[0]
        per_level = [f.shape[-2] * f.shape[-1] * a for f in features]
        detections = [self.detect(logits, deltas, anchors, per_level, size)
                      for logits, deltas, size in zip(cls_logits, box_deltas, batch.image_sizes)]
        return self.transform.postprocess(detections, batch.image_sizes, original_sizes)

    # -------------------------------------------------------------------------------------------- training
    def match(self, anchors: Tensor, targets: Sequence[dict[str, Tensor]]) -> Tensor:
        """``(B, T)`` matched object index per anchor, or -1 (background) / -2 (ignored)."""
        return torch.stack([self.matcher(box_iou(t["boxes"], anchors)) for t in targets])

    def losses(self, cls_logits: Tensor, box_deltas: Tensor, anchors: Tensor,
               targets: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
        """The classification loss (Eq. 5 or plain CE) and the L1 box loss, each summed over an image's anchors
        and divided by its number of foreground anchors (at least 1), averaged over the images."""
        matched = self.match(anchors, targets)  # (B, T)
        foreground, valid = matched >= 0, matched != Matcher.BETWEEN_THRESHOLDS
        num_pos = foreground.sum(dim=1)  # (B,)
        index = matched.clamp(min=0)
        labels = torch.stack([t["labels"][i] if len(t["labels"]) else torch.zeros_like(i)
                              for t, i in zip(targets, index)])  # (B, T); 0 where there is no object
        cls_targets = F.one_hot(labels, self.num_classes) * foreground[..., None]  # (B, T, K): 1 at the class
        element_loss = sigmoid_focal_loss(cls_logits, cls_targets, self.focal_alpha, self.focal_gamma)
        split = focal_loss_split(element_loss, cls_logits.detach(), cls_targets, valid, num_pos)

        # box targets (Faster R-CNN Eq. 2, weights 1) of every anchor; only the foreground ones count
        gt_boxes = torch.stack([t["boxes"][i] if len(t["boxes"]) else anchors for t, i in zip(targets, index)])
        reg_targets = self.box_coder.encode(gt_boxes.flatten(0, 1), anchors.repeat(len(targets), 1))
        l1 = (box_deltas.float() - reg_targets.view_as(box_deltas)).abs().sum(dim=2)  # (B, T)
        box_loss = torch.where(foreground, l1, torch.zeros_like(l1)).sum(dim=1) / num_pos.clamp(min=1)
        return {"loss_classifier": split["all"], "loss_box_reg": box_loss.mean(),
                "cls_pos": split["pos"].detach(), "cls_hard_neg": split["hard_neg"].detach(),
                "cls_easy_neg": split["easy_neg"].detach(), "num_pos": num_pos.float().mean()}

    # ------------------------------------------------------------------------------------------- inference
    def detect(self, logits: Tensor, deltas: Tensor, anchors: Tensor, per_level: Sequence[int],
               image_size: tuple[int, int]) -> dict[str, Tensor]:
        """One image: per level the top-k (anchor, class) scores above ``score_thresh``, decoded and clipped;
        then NMS per class over all levels and the best ``detections_per_img``.

        Args:
            logits: ``(T, K)``; deltas: ``(T, 4)``; anchors: ``(T, 4)``; per_level: T split by level.
        """
        boxes, scores, labels = [], [], []
        for lg, dl, an in zip(logits.split(per_level), deltas.split(per_level), anchors.split(per_level)):
            prob = torch.sigmoid(lg.float())
            prob[:, 0] = 0.0  # the background's column never had a positive target: not a class to detect
            prob = prob.flatten()  # (T_l * K,), anchor-major
            candidates = torch.nonzero(prob > self.score_thresh).squeeze(1)
            top, order = prob[candidates].topk(min(self.topk_candidates, len(candidates)))
            candidates = candidates[order]
            anchor_idx = torch.div(candidates, self.num_classes, rounding_mode="floor")
            boxes.append(clip_boxes_to_image(self.box_coder.decode(dl[anchor_idx], an[anchor_idx]), image_size))
            scores.append(top)
            labels.append(candidates % self.num_classes)
        boxes, scores, labels = torch.cat(boxes), torch.cat(scores), torch.cat(labels)
        keep = batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
        return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}


# ------------------------------------------------------------------------------------ torchvision checkpoints
# Our keys are torchvision's >= 0.13 keys. Its older checkpoints (the v1 COCO one among them) keep the FPN's
# convolutions outside their wrappers and the subnets' convs and ReLUs in one Sequential (conv.0, conv.2, ...).
_PRE_013_FPN = re.compile(r"^backbone\.fpn\.(inner_blocks|layer_blocks)\.(\d+)\.(weight|bias)$")


@register_converter("retinanet", "torchvision")
def _from_torchvision(sd: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    sd = {_PRE_013_FPN.sub(r"backbone.fpn.\1.\2.0.\3", k): v for k, v in sd.items()}
    for subnet in ("classification_head", "regression_head"):
        _rename_old_trunk_keys(sd, f"head.{subnet}.")
    return _match_bn_counters(sd, model)


@register_converter("retinanet", "paperzoo")
def _from_paperzoo(sd: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    return _match_bn_counters(sd, model)  # a BatchNorm-trained run loads into a frozen-BN model and back


# ----------------------------------------------------------------------------------------- registered models
def _build(backbone_name: str, num_classes: int, frozen_bn: bool, trainable_layers: int, extra_block: str,
           frozen_bn_eps: float | None, backbone_args: dict[str, Any] | None, kw: dict[str, Any]) -> RetinaNet:
    # Sec. 4: the pyramid starts at C3 (P2 would add anchors at stride 4 for little gain) and adds P6, P7
    backbone = fpn_backbone(backbone_name, frozen_bn=frozen_bn, trainable_layers=trainable_layers,
                            out_indices=(-3, -2, -1), extra_block=extra_block, **(backbone_args or {}))
    if frozen_bn_eps is not None:
        set_frozen_bn_eps(backbone, frozen_bn_eps)
    model = RetinaNet(backbone, num_classes, **kw)
    model.model_family = "retinanet"  # load_weights finds the converters above through it
    model.backbone_name = backbone_name
    return model


@register_detector
def retinanet_fpn(*, backbone: str = "resnet18", num_classes: int = 91, frozen_bn: bool = False,
                  trainable_layers: int = 5, extra_block: str = "p6p7", frozen_bn_eps: float | None = None,
                  backbone_args: dict[str, Any] | None = None, **kw: Any) -> RetinaNet:
    """RetinaNet (focal loss) on any registered CNN with an FPN on P3-P7; ``**kw`` go to :class:`RetinaNet`.

    Defaults suit training from scratch (BatchNorm, every level trains); for a pretrained backbone take
    ``frozen_bn=True, trainable_layers=3``. ``extra_block="p6p7_c5"`` takes P6 from C5 as the paper does.
    """
    return _build(backbone, num_classes, frozen_bn, trainable_layers, extra_block, frozen_bn_eps, backbone_args, kw)


@register_detector
def retinanet_resnet50_fpn(*, num_classes: int = 91, frozen_bn: bool = True, trainable_layers: int = 3,
                           frozen_bn_eps: float | None = None, **kw: Any) -> RetinaNet:
    """torchvision's ``retinanet_resnet50_fpn`` (v1): 34,014,999 parameters (34,068,119 with BatchNorm).

    For its COCO checkpoint pass ``frozen_bn_eps=0.0`` (it was trained before FrozenBatchNorm2d had an eps).
    """
    return _build("resnet50", num_classes, frozen_bn, trainable_layers, "p6p7", frozen_bn_eps, None, kw)
