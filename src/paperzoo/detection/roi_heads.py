"""The second stage of Fast / Faster R-CNN: pool a feature per proposal, classify it, refine its box.

* :class:`MultiScaleRoIAlign` — RoIAlign (Mask R-CNN, arXiv:1703.06870, Sec. 3) on the FPN level chosen by the
  box's size (Feature Pyramid Networks, Lin et al. 2017, arXiv:1612.03144, Sec. 4.2, Eq. 1).
* :class:`TwoMLPHead` — the FPN paper's "2fc" box head (Sec. 4.2): two hidden 1024-d fully connected layers, each
  followed by ReLU, named ``fc6`` / ``fc7`` after the VGG16 layers Fast R-CNN fine-tuned there.
* :class:`FastRCNNPredictor` — Fast R-CNN's two sibling outputs (Girshick 2015, arXiv:1504.08083, Sec. 2): class
  scores over K classes + background, and K class-specific box deltas.
* :class:`RoIHeads` — training: mini-batch sampling (Fast R-CNN Sec. 2.3) and the multi-task loss (Eq. 1);
  inference: per-class decoding, score threshold and NMS (Faster R-CNN, Ren et al. 2015, arXiv:1506.01497,
  Sec. 3.3 / 4 reuse Fast R-CNN's detection network unchanged).

The arithmetic is torchvision's (``models/detection/roi_heads.py``, ``ops/poolers.py``), so that its
``fasterrcnn_resnet50_fpn`` checkpoint gives the same boxes. Where torchvision departs from the papers:

* background RoIs are those of IoU in ``[0, 0.5)`` with every ground-truth box, not ``[0.1, 0.5)`` (Fast R-CNN
  Sec. 2.3's hard-example heuristic is dropped);
* 512 RoIs per image, 25 % foreground (the paper: 128 per mini-batch of 2 images, i.e. 64 per image);
* the ground-truth boxes are appended to the proposals before sampling (as in the Faster R-CNN Caffe code and
  Detectron), so every object has at least one positive RoI from the first iteration;
* the smooth L1 of Eq. 3 has its quadratic zone narrowed from ``|x| < 1`` to ``|x| < 1/9`` (Detectron's
  ``beta``), and the box loss is summed over the positives and divided by the number of sampled RoIs;
* the FPN level of a box is ``floor(4 + log2(sqrt(wh) / 224) + 1e-6)``, the paper's Eq. 1 made exact at powers
  of two, then clamped to the levels present.

Our own deviations, on cases torchvision leaves undefined: an image without ground-truth boxes gets zero
regression targets (torchvision encodes against a zero box, giving unused infinities); a box of negative area
is mapped to the lowest level (torchvision: NaN cast to an integer); the predictor's layers start from the
paper's initialisation (below), not PyTorch's default.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .boxes import BoxCoder, box_area, box_iou, clip_boxes_to_image, remove_small_boxes
from .matcher import BalancedPositiveNegativeSampler, Matcher
from .nms import batched_nms
from .roi_ops import _pair, roi_align

__all__ = [
    "fpn_levels",
    "infer_scale",
    "MultiScaleRoIAlign",
    "TwoMLPHead",
    "FastRCNNPredictor",
    "fastrcnn_loss",
    "RoIHeads",
]

MIN_BOX_SIZE = 1e-2  # torchvision drops detections narrower or shorter than this (pixels) before NMS
SMOOTH_L1_BETA = 1.0 / 9  # Detectron's quadratic zone of the smooth L1 (Fast R-CNN Eq. 3 uses 1)


# --- pooling: one feature per box, from the level that suits its size ---------------------------------------------


def fpn_levels(boxes: Tensor, k_min: int, k_max: int, canonical_scale: float = 224, canonical_level: int = 4,
               eps: float = 1e-6) -> Tensor:
    """The pyramid level ``k`` (int64, ``(N,)``) of each xyxy box ``(N, 4)``, FPN Eq. 1.

    ``k = floor(k0 + log2(sqrt(w h) / 224))``: an ImageNet-sized box (224^2) goes to ``k0 = 4`` (the level whose
    stride, 16, is the single-scale ResNet's, Sec. 4.2), a box half as wide to one level finer. ``eps`` puts a
    box of exactly ``224 * 2^j`` on level ``k0 + j`` despite rounding in ``log2``. Levels are clamped to
    ``[k_min, k_max]``, the levels the pyramid has.
    """
    s = torch.sqrt(box_area(boxes).clamp(min=0))  # negative (inverted) areas count as 0: the finest level
    k = torch.floor(canonical_level + torch.log2(s / canonical_scale) + torch.tensor(eps, dtype=s.dtype))
    return k.clamp(min=k_min, max=k_max).to(torch.int64)


def infer_scale(feature_size: Sequence[int], image_size: Sequence[int]) -> float:
    """The feature map's scale relative to the image, ``2 ** round(log2(feat / img))`` (torchvision's rule).

    Backbones halve the resolution per stage, so the scale is a power of two; rounding absorbs the odd sizes of
    padded or non-multiple inputs (e.g. an 803-pixel side gives a 26-pixel stride-32 map, 26 / 803 ~ 1/31).
    Both axes must agree.
    """
    scales = [2.0 ** float(torch.tensor(f / i).log2().round()) for f, i in zip(feature_size, image_size)]
    if scales[0] != scales[1]:
        raise ValueError(f"feature map {tuple(feature_size)} of image {tuple(image_size)} has different scales "
                         f"along height and width ({scales[0]} and {scales[1]})")
    return scales[0]


def _to_rois(proposals: Sequence[Tensor]) -> Tensor:
    """Per-image boxes ``[(P_i, 4)]`` -> ``(sum P_i, 5)`` rows ``(image index, x1, y1, x2, y2)``, as roi_align wants."""
    boxes = torch.cat(list(proposals))
    index = torch.cat([torch.full((len(p), 1), i, dtype=boxes.dtype, device=boxes.device)
                       for i, p in enumerate(proposals)])
    return torch.cat((index, boxes), dim=1)


class MultiScaleRoIAlign(nn.Module):
    """RoIAlign on a feature pyramid: each box is pooled from the level that FPN Eq. 1 assigns it.

    Args:
        featmap_names: the keys of the feature dict to pool from (e.g. ``["0", "1", "2", "3"]`` for P2..P5; the
            RPN-only ``"pool"`` level is left out), in any order; they must be successive levels, each half the size
            of the next finer one.
        output_size: the pooled size ``S`` (or ``(S_h, S_w)``), 7 in Faster R-CNN.
        sampling_ratio: sampling points per bin and axis (2 in torchvision; ``<= 0`` adapts to the box).
        canonical_scale, canonical_level: Eq. 1's 224 and ``k0 = 4``.

    The scale of each level is inferred from its size and the largest image size of the batch
    (:func:`infer_scale`), so the same module serves any input size. RoIAlign uses ``aligned=False``, as
    torchvision's v1 detectors were trained.
    """

    def __init__(self, featmap_names: Sequence[str], output_size: int | Sequence[int], sampling_ratio: int,
                 canonical_scale: float = 224, canonical_level: int = 4) -> None:
        super().__init__()
        if not featmap_names:
            raise ValueError("MultiScaleRoIAlign needs at least one feature map name")
        self.featmap_names = [str(name) for name in featmap_names]
        self.output_size = _pair(output_size)
        self.sampling_ratio = int(sampling_ratio)
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level

    def _maps_and_scales(self, features: Mapping[str, Tensor], image_sizes: Sequence[tuple[int, int]]
                         ) -> tuple[list[Tensor], list[float]]:
        missing = [name for name in self.featmap_names if name not in features]
        if missing:
            raise KeyError(f"feature maps {missing} not found; got {list(features)}")
        maps = [features[name] for name in self.featmap_names]
        # The batch is padded to its largest image, so the largest height and width set the scale.
        batch_size = (max(h for h, _ in image_sizes), max(w for _, w in image_sizes))
        scales = [infer_scale(m.shape[-2:], batch_size) for m in maps]
        maps, scales = (list(x) for x in zip(*sorted(zip(maps, scales), key=lambda ms: -ms[1])))  # finest first
        levels = [-round(math.log2(s)) for s in scales]
        if levels != list(range(levels[0], levels[0] + len(levels))):
            raise ValueError(f"feature maps {self.featmap_names} must be successive pyramid levels, each half the "
                             f"previous one's size; their scales are {scales}")
        return maps, scales

    def forward(self, features: Mapping[str, Tensor], proposals: Sequence[Tensor],
                image_sizes: Sequence[tuple[int, int]]) -> Tensor:
        """Pool ``(K, C, S, S)`` features for the boxes of every image, in the order of ``torch.cat(proposals)``.

        Args:
            features: ``{name: (B, C, H_l, W_l)}``, all levels with the same C.
            proposals: per image, ``(P_i, 4)`` xyxy boxes in the (resized) image's pixels.
            image_sizes: per image, ``(height, width)`` before padding.
        """
        maps, scales = self._maps_and_scales(features, image_sizes)
        rois = _to_rois(proposals)  # (K, 5)
        k_min = -round(math.log2(scales[0]))
        level = fpn_levels(rois[:, 1:], k_min, k_min + len(maps) - 1, self.canonical_scale,
                           self.canonical_level) - k_min  # (K,) index into maps
        out = maps[0].new_zeros((len(rois), maps[0].shape[1], *self.output_size))  # (K, C, S, S)
        for i, (fmap, scale) in enumerate(zip(maps, scales)):  # a loop over the few levels, not over boxes
            idx = torch.where(level == i)[0]
            out[idx] = roi_align(fmap, rois[idx], self.output_size, scale, self.sampling_ratio, aligned=False)
        return out

    def extra_repr(self) -> str:
        return (f"featmap_names={self.featmap_names}, output_size={self.output_size}, "
                f"sampling_ratio={self.sampling_ratio}")


# --- box head and predictor -----------------------------------------------------------------------------------------


class TwoMLPHead(nn.Module):
    """FPN Sec. 4.2's box head: flatten the pooled ``(K, C, S, S)`` feature, then fc6 -> ReLU -> fc7 -> ReLU.

    PyTorch's default initialisation, as torchvision (Fast R-CNN took fc6 / fc7 from a pre-trained VGG16).
    """

    def __init__(self, in_channels: int, representation_size: int) -> None:
        super().__init__()
        self.fc6 = nn.Linear(in_channels, representation_size)
        self.fc7 = nn.Linear(representation_size, representation_size)

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(start_dim=1)  # (K, C * S * S)
        return F.relu(self.fc7(F.relu(self.fc6(x))))  # (K, representation_size)


class FastRCNNPredictor(nn.Module):
    """Fast R-CNN's sibling output layers (Sec. 2): ``cls_score`` -> ``(K, num_classes)`` logits and
    ``bbox_pred`` -> ``(K, 4 * num_classes)`` deltas ``t^k`` for every class k (the background's are unused).

    ``num_classes`` counts the background (index 0). Initialisation as Fast R-CNN Sec. 2.3: weights from zero-mean
    Gaussians of standard deviation 0.01 (classification) and 0.001 (box regression), biases 0, so a new head
    starts with nearly uniform scores and nearly zero deltas.
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_channels, num_classes)
        self.bbox_pred = nn.Linear(in_channels, num_classes * 4)
        for layer, std in ((self.cls_score, 0.01), (self.bbox_pred, 0.001)):
            nn.init.normal_(layer.weight, std=std)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if x.dim() == 4 and tuple(x.shape[2:]) != (1, 1):
            raise ValueError(f"FastRCNNPredictor takes (K, C) or (K, C, 1, 1) features, got {tuple(x.shape)}")
        x = x.flatten(start_dim=1)  # (K, C)
        return self.cls_score(x), self.bbox_pred(x)


# --- training: targets and the multi-task loss ---------------------------------------------------------------------


def fastrcnn_loss(class_logits: Tensor, box_regression: Tensor, labels: Tensor, regression_targets: Tensor
                  ) -> tuple[Tensor, Tensor]:
    """Fast R-CNN's multi-task loss (Eq. 1), ``L = L_cls(p, u) + lambda [u >= 1] L_loc(t^u, v)`` with lambda = 1.

    Args:
        class_logits: ``(R, num_classes)``; box_regression: ``(R, 4 * num_classes)`` for the R sampled RoIs.
        labels: ``(R,)`` int64 class ``u`` of each RoI, 0 for background.
        regression_targets: ``(R, 4)`` encoded targets ``v`` (only the foreground rows are used).

    Returns ``(loss_classifier, loss_box_reg)``: the mean cross-entropy over the R RoIs, and the smooth L1 (beta
    1/9) of the true class's deltas ``t^u`` summed over the foreground RoIs and divided by R (torchvision's
    normalisation: background RoIs count in the denominator, which Eq. 1's Iverson bracket implies).
    """
    if labels.numel() == 0:  # nothing sampled (no proposals and no ground truth): zero losses that keep the graph
        zero = class_logits.sum() * 0 + box_regression.sum() * 0
        return zero, zero
    loss_classifier = F.cross_entropy(class_logits, labels)  # L_cls(p, u) = -log p_u (Sec. 2.3)
    foreground = torch.where(labels > 0)[0]
    deltas = box_regression.reshape(len(labels), -1, 4)[foreground, labels[foreground]]  # (P, 4): t^u
    box_loss = F.smooth_l1_loss(deltas, regression_targets[foreground], beta=SMOOTH_L1_BETA, reduction="sum")
    return loss_classifier, box_loss / labels.numel()


class RoIHeads(nn.Module):
    """Fast R-CNN's detection network on top of any pooler, box head and predictor.

    Args:
        box_roi_pool: ``(features, proposals, image_sizes) -> (K, C, S, S)``, e.g. :class:`MultiScaleRoIAlign`.
        box_head: ``(K, C, S, S) -> (K, D)``, e.g. :class:`TwoMLPHead`.
        box_predictor: ``(K, D) -> ((K, num_classes), (K, 4 * num_classes))``, e.g. :class:`FastRCNNPredictor`.
        fg_iou_thresh, bg_iou_thresh: a RoI is foreground at IoU >= fg and background below bg (Sec. 2.3).
        batch_size_per_image, positive_fraction: RoIs sampled per image and the most foreground can take.
        bbox_reg_weights: the box coder's (wx, wy, ww, wh), the inverse target standard deviations (Sec. 2.3).
        score_thresh, nms_thresh, detections_per_img: inference's score floor, per-class NMS IoU and cap.
    """

    def __init__(self, box_roi_pool: nn.Module, box_head: nn.Module, box_predictor: nn.Module,
                 fg_iou_thresh: float = 0.5, bg_iou_thresh: float = 0.5, batch_size_per_image: int = 512,
                 positive_fraction: float = 0.25, bbox_reg_weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0),
                 score_thresh: float = 0.05, nms_thresh: float = 0.5, detections_per_img: int = 100) -> None:
        super().__init__()
        self.box_roi_pool = box_roi_pool
        self.box_head = box_head
        self.box_predictor = box_predictor
        # Fast R-CNN Sec. 2.3: IoU >= 0.5 foreground; below it background (the paper's lower bound 0.1 is dropped).
        self.proposal_matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=False)
        self.fg_bg_sampler = BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)
        self.box_coder = BoxCoder(bbox_reg_weights)
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img

    @staticmethod
    def _check_targets(targets: Sequence[Mapping[str, Tensor]] | None, num_images: int) -> None:
        if targets is None:
            raise ValueError("RoIHeads needs targets (boxes and labels per image) in training mode")
        if len(targets) != num_images:
            raise ValueError(f"got {len(targets)} targets for {num_images} images")
        for t in targets:
            if "boxes" not in t or "labels" not in t:
                raise KeyError(f"each target needs 'boxes' and 'labels', got keys {sorted(t)}")
            if not t["boxes"].is_floating_point() or t["labels"].dtype != torch.int64:
                raise ValueError(f"target boxes must be floating point and labels int64, got "
                                 f"{t['boxes'].dtype} and {t['labels'].dtype}")

    def _sample_image(self, proposals: Tensor, gt_boxes: Tensor, gt_labels: Tensor
                      ) -> tuple[Tensor, Tensor, Tensor]:
        """One image's training RoIs: ``(R, 4)`` boxes, ``(R,)`` labels, ``(R, 4)`` regression targets."""
        proposals = torch.cat((proposals, gt_boxes))  # the ground truth is a proposal too (torchvision, Detectron)
        matched = self.proposal_matcher(box_iou(gt_boxes, proposals))  # (P,): gt index, -1 bg, -2 ignored
        positive, negative = self.fg_bg_sampler(matched)  # Sec. 2.3: up to 25 % foreground, the rest background
        keep = torch.where(positive | negative)[0]
        proposals, matched = proposals[keep], matched[keep]
        if len(gt_boxes) == 0:  # an image without objects: every RoI is background, nothing to regress
            return proposals, torch.zeros_like(matched), torch.zeros_like(proposals)
        gt_index = matched.clamp(min=0)
        labels = torch.where(matched >= 0, gt_labels[gt_index], 0)
        return proposals, labels, self.box_coder.encode(gt_boxes[gt_index], proposals)  # Eq. 2 targets v

    def select_training_samples(self, proposals: Sequence[Tensor], targets: Sequence[Mapping[str, Tensor]]
                                ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Per image, the sampled RoIs, their labels and regression targets (Fast R-CNN Sec. 2.3)."""
        samples = [self._sample_image(p.detach(), t["boxes"].to(p.dtype).reshape(-1, 4), t["labels"])
                   for p, t in zip(proposals, targets)]  # no gradient through the proposals (as the RPN's)
        boxes, labels, regression_targets = (list(column) for column in zip(*samples))
        return boxes, labels, regression_targets

    def _detections_one_image(self, boxes: Tensor, scores: Tensor, image_size: tuple[int, int]) -> dict[str, Tensor]:
        """``boxes (P, C, 4)`` decoded per class and ``scores (P, C)`` -> at most ``detections_per_img`` detections."""
        boxes = clip_boxes_to_image(boxes, image_size)
        labels = torch.arange(scores.shape[1], device=scores.device).expand_as(scores)  # (P, C)
        # Every (RoI, foreground class) pair is a candidate detection; the background column is dropped.
        boxes, scores, labels = boxes[:, 1:].reshape(-1, 4), scores[:, 1:].reshape(-1), labels[:, 1:].reshape(-1)
        keep = torch.where(scores > self.score_thresh)[0]
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = remove_small_boxes(boxes, MIN_BOX_SIZE)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        # R-CNN Sec. 2.2 / Fast R-CNN Sec. 4: NMS independently for each class; sorted by decreasing score.
        keep = batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
        return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}

    def postprocess_detections(self, class_logits: Tensor, box_regression: Tensor, proposals: Sequence[Tensor],
                               image_sizes: Sequence[tuple[int, int]]) -> list[dict[str, Tensor]]:
        """Softmax scores and class-specific boxes -> per image ``{"boxes", "scores", "labels"}`` (image pixels)."""
        num_classes = class_logits.shape[-1]
        boxes = self.box_coder.decode(box_regression, torch.cat(list(proposals)))  # (K, 4 * num_classes)
        boxes = boxes.reshape(len(boxes), num_classes, 4)  # (K, C, 4)
        scores = F.softmax(class_logits, dim=-1)  # (K, C)
        counts = [len(p) for p in proposals]
        return [self._detections_one_image(b, s, size)
                for b, s, size in zip(boxes.split(counts), scores.split(counts), image_sizes)]

    def forward(self, features: Mapping[str, Tensor], proposals: Sequence[Tensor],
                image_sizes: Sequence[tuple[int, int]], targets: Sequence[Mapping[str, Tensor]] | None = None
                ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """Training: ``([], {"loss_classifier", "loss_box_reg"})``; inference: ``(detections, {})``.

        ``proposals`` are per image ``(P_i, 4)`` xyxy boxes in the coordinates of ``image_sizes`` (after resize);
        ``targets`` (training only) hold ``"boxes"`` ``(N_i, 4)`` and ``"labels"`` ``(N_i,)``, N_i may be 0.
        """
        if self.training:
            self._check_targets(targets, len(proposals))
            proposals, labels, regression_targets = self.select_training_samples(proposals, targets)
        x = self.box_roi_pool(features, proposals, image_sizes)  # (K, C, S, S)
        x = self.box_head(x)  # (K, D)
        class_logits, box_regression = self.box_predictor(x)  # (K, num_classes), (K, 4 * num_classes)
        if self.training:
            loss_classifier, loss_box_reg = fastrcnn_loss(class_logits, box_regression, torch.cat(labels),
                                                          torch.cat(regression_targets))
            return [], {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}
        return self.postprocess_detections(class_logits, box_regression, proposals, image_sizes), {}
