"""The Region Proposal Network: a small convolutional head that scores and refines anchors into proposals.

Faster R-CNN: Towards Real-Time Object Detection with Region Proposal Networks (Ren et al. 2015, arXiv:1506.01497):

* Sec. 3.1: a 3x3 convolution slides over the shared feature map, followed by ReLU and two sibling 1x1
  convolutions: ``cls`` (objectness of each of the k anchors at a position) and ``reg`` (4k box deltas).
* Sec. 3.1.2: an anchor is positive at IoU >= 0.7 with some ground-truth box, or if it is a box's best match;
  negative at IoU < 0.3 with all; the rest are ignored. The loss (Eq. 1) is a binary classification term on
  objectness plus a smooth L1 term on the deltas of the positives, deltas parameterized as in Eq. 2.
* Sec. 3.1.3: each image contributes 256 sampled anchors, up to half of them positive.
* Sec. 3.3: proposals are cut to the image, non-maximum suppressed at IoU 0.7 and the top-N kept.

FPN (Lin et al. 2017, arXiv:1612.03144) Sec. 4.1 shares the head across all pyramid levels (one anchor size per
level) and, as in Detectron, selects the pre-NMS top-n *per level* before a level-wise NMS.

Behaviour follows torchvision's ``models/detection/rpn.py`` so that its Faster R-CNN checkpoints produce the same
proposals: the head's keys (``conv.0.0``, ``cls_logits``, ``bbox_pred``) and init, the flattening order, decoding
with ``BoxCoder((1, 1, 1, 1))`` and the Eq. 2 clamp, boxes smaller than 1e-3 dropped, the objectness threshold
applied to ``sigmoid(logit) >= score_thresh``, the smooth L1 with ``beta = 1/9`` summed and divided by the number of
sampled anchors (Detectron's choice; the paper normalizes by the number of anchor locations with lambda = 10).

Deviations from torchvision (same results):

* regression targets are encoded only for the sampled positives, the only ones the loss reads (torchvision encodes
  every anchor, and against zero boxes on an image without objects);
* the head accepts the pre-0.13 key ``conv.weight`` whatever the checkpoint's version metadata.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .anchors import AnchorGenerator
from .boxes import BoxCoder, box_iou, clip_boxes_to_image, remove_small_boxes
from .matcher import BalancedPositiveNegativeSampler, Matcher
from .nms import batched_nms
from .transform import ImageList

__all__ = ["RPNHead", "RegionProposalNetwork", "flatten_head_outputs"]


class RPNHead(nn.Module):
    """Faster R-CNN Sec. 3.1: 3x3 conv + ReLU, then 1x1 ``cls_logits`` (k) and ``bbox_pred`` (4k), on every level.

    Args:
        in_channels: channels of each feature map (256 for an FPN).
        num_anchors: k, the anchors per position (3 for FPN: one size, three aspect ratios).
        conv_depth: how many 3x3 conv + ReLU blocks precede the siblings (1 in the paper; 2 in torchvision's
            ``fasterrcnn_resnet50_fpn_v2``).

    Keys are torchvision's (``conv.{i}.0.weight``: conv ``i`` at index 0 of its block); weights are drawn from
    N(0, 0.01^2) and biases are zero, as in Sec. 3.1.3 ("zero-mean Gaussian with standard deviation 0.01").
    """

    def __init__(self, in_channels: int, num_anchors: int, conv_depth: int = 1) -> None:
        super().__init__()
        self.conv = nn.Sequential(*(
            nn.Sequential(nn.Conv2d(in_channels, in_channels, kernel_size=3, padding=1), nn.ReLU(inplace=True))
            for _ in range(conv_depth)
        ))
        self.cls_logits = nn.Conv2d(in_channels, num_anchors, kernel_size=1)
        self.bbox_pred = nn.Conv2d(in_channels, num_anchors * 4, kernel_size=1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.zeros_(module.bias)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:
        """Accept torchvision's pre-0.13 keys (among them the v1 COCO checkpoint's), ``conv.weight``, as
        ``conv.0.0.weight``."""
        for kind in ("weight", "bias"):
            old = f"{prefix}conv.{kind}"
            if old in state_dict:
                state_dict[f"{prefix}conv.0.0.{kind}"] = state_dict.pop(old)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, features: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Per level, objectness logits ``(B, A, H, W)`` and deltas ``(B, A * 4, H, W)``."""
        logits, deltas = [], []
        for feature in features:
            hidden = self.conv(feature)
            logits.append(self.cls_logits(hidden))
            deltas.append(self.bbox_pred(hidden))
        return logits, deltas


def flatten_head_outputs(logits: Sequence[Tensor], deltas: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Per-level head outputs -> ``(B, sum_l H_l W_l A)`` logits and ``(B, sum_l H_l W_l A, 4)`` deltas.

    Within a level: positions row-major, the A anchors of a position contiguous; levels one after another. This
    is :class:`.AnchorGenerator`'s order, so entry ``j`` belongs to anchor ``j``.
    """
    flat_logits, flat_deltas = [], []
    for level_logits, level_deltas in zip(logits, deltas):
        batch, num_anchors, height, width = level_logits.shape
        flat_logits.append(level_logits.permute(0, 2, 3, 1).reshape(batch, -1))  # (B, H, W, A) -> (B, HWA)
        level_deltas = level_deltas.view(batch, num_anchors, 4, height, width)  # (B, A, 4, H, W)
        flat_deltas.append(level_deltas.permute(0, 3, 4, 1, 2).reshape(batch, -1, 4))  # (B, H, W, A, 4) -> (B, HWA, 4)
    return torch.cat(flat_logits, dim=1), torch.cat(flat_deltas, dim=1)


class RegionProposalNetwork(nn.Module):
    """Anchors + head -> proposals per image; in training also the RPN losses of Faster R-CNN Eq. 1.

    Args:
        anchor_generator: the anchors of each level (Sec. 3.1.1).
        head: maps the list of feature maps to per-level ``(B, A, H, W)`` logits and ``(B, 4A, H, W)`` deltas.
        fg_iou_thresh, bg_iou_thresh: Sec. 3.1.2's 0.7 / 0.3.
        batch_size_per_image, positive_fraction: Sec. 3.1.3's 256 anchors, half positive at most.
        pre_nms_top_n: per level, the highest-scoring anchors kept before NMS, ``{"training": n, "testing": n}``.
        post_nms_top_n: per image, the proposals kept after NMS, same keys.
        nms_thresh: IoU above which NMS suppresses a proposal (Sec. 3.3: 0.7).
        score_thresh: proposals with ``sigmoid(objectness) < score_thresh`` are dropped (0 keeps all).
    """

    min_size = 1e-3  # proposals narrower or lower than this (in pixels) are dropped

    def __init__(
        self,
        anchor_generator: AnchorGenerator,
        head: nn.Module,
        fg_iou_thresh: float = 0.7,
        bg_iou_thresh: float = 0.3,
        batch_size_per_image: int = 256,
        positive_fraction: float = 0.5,
        pre_nms_top_n: Mapping[str, int] | None = None,
        post_nms_top_n: Mapping[str, int] | None = None,
        nms_thresh: float = 0.7,
        score_thresh: float = 0.0,
    ) -> None:
        super().__init__()
        self.anchor_generator = anchor_generator
        self.head = head
        self.box_coder = BoxCoder((1.0, 1.0, 1.0, 1.0))  # Eq. 2 without target normalization
        self.proposal_matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=True)
        self.fg_bg_sampler = BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)
        self.pre_nms_top_n = dict(pre_nms_top_n or {"training": 2000, "testing": 1000})
        self.post_nms_top_n = dict(post_nms_top_n or {"training": 2000, "testing": 1000})
        for name, top_n in (("pre_nms_top_n", self.pre_nms_top_n), ("post_nms_top_n", self.post_nms_top_n)):
            if set(top_n) != {"training", "testing"}:
                raise ValueError(f"{name} needs exactly the keys 'training' and 'testing', got {sorted(top_n)}")
        self.nms_thresh = nms_thresh
        self.score_thresh = score_thresh

    def _phase(self) -> str:
        return "training" if self.training else "testing"

    def forward(
        self,
        images: ImageList,
        features: Mapping[str, Tensor],
        targets: Sequence[dict[str, Tensor]] | None = None,
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        """Proposals ``[(P_i, 4)]`` xyxy in the resized image's coordinates, sorted by decreasing objectness, and
        the losses ``{"loss_objectness", "loss_rpn_box_reg"}`` in training (an empty dict in evaluation).

        Args:
            images: the padded batch and each image's size (proposals are clipped to it).
            features: the feature maps, finest first (FPN: ``"0"`` ... ``"pool"``); every level is used.
            targets: in training, per image a dict with ``"boxes"`` (N, 4) xyxy; N may be 0.
        """
        if self.training and targets is None:
            raise ValueError("the RPN needs targets (a dict with 'boxes' per image) in training mode")
        maps = list(features.values())
        logits, deltas = self.head(maps)
        anchors = self.anchor_generator(images.tensors, maps)  # B x (T, 4)
        num_anchors_per_level = [level.shape[1] * level.shape[2] * level.shape[3] for level in logits]
        objectness, pred_deltas = flatten_head_outputs(logits, deltas)  # (B, T), (B, T, 4)

        # Faster R-CNN trains the RPN and the detector on fixed proposals: no gradient flows through the boxes.
        proposals = self.box_coder.decode(pred_deltas.detach().reshape(-1, 4), torch.cat(anchors))
        proposals = proposals.view(len(anchors), -1, 4)  # (B, T, 4)
        boxes, _ = self.filter_proposals(proposals, objectness.detach(), images.image_sizes, num_anchors_per_level)

        losses: dict[str, Tensor] = {}
        if self.training:
            loss_objectness, loss_box = self.compute_loss(objectness, pred_deltas, anchors, targets)
            losses = {"loss_objectness": loss_objectness, "loss_rpn_box_reg": loss_box}
        return boxes, losses

    def _top_n_per_level(self, objectness: Tensor, num_anchors_per_level: list[int]) -> Tensor:
        """FPN Sec. 4.1 (Detectron's rule): the indices ``(B, sum_l n_l)`` of the ``pre_nms_top_n`` highest logits
        of each level, so that the many fine-level anchors cannot crowd out the coarse levels."""
        top_n, indices, offset = self.pre_nms_top_n[self._phase()], [], 0
        for level in objectness.split(num_anchors_per_level, dim=1):
            indices.append(level.topk(min(top_n, level.shape[1]), dim=1).indices + offset)
            offset += level.shape[1]
        return torch.cat(indices, dim=1)

    def filter_proposals(
        self,
        proposals: Tensor,
        objectness: Tensor,
        image_sizes: Sequence[tuple[int, int]],
        num_anchors_per_level: list[int],
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Decoded anchors ``(B, T, 4)`` and logits ``(B, T)`` -> per image the proposals ``(P_i, 4)`` and their
        objectness probabilities ``(P_i,)``, by decreasing probability.

        Sec. 3.3: top-n per level, clip to the image, drop tiny and low-scoring boxes, NMS (per level, FPN), top-N.
        """
        levels = torch.cat([torch.full((n,), i, dtype=torch.int64, device=proposals.device)
                            for i, n in enumerate(num_anchors_per_level)])
        top = self._top_n_per_level(objectness, num_anchors_per_level)  # (B, K)
        rows = torch.arange(proposals.shape[0], device=proposals.device)[:, None]
        scores, candidates, levels = objectness[rows, top].sigmoid(), proposals[rows, top], levels[top]
        final_boxes, final_scores = [], []
        for boxes, image_scores, image_levels, size in zip(candidates, scores, levels, image_sizes):
            boxes = clip_boxes_to_image(boxes, size)
            keep = remove_small_boxes(boxes, self.min_size)
            keep = keep[image_scores[keep] >= self.score_thresh]
            # batched_nms returns its survivors by decreasing score, so the cut keeps the best.
            kept = batched_nms(boxes[keep], image_scores[keep], image_levels[keep], self.nms_thresh)
            keep = keep[kept[: self.post_nms_top_n[self._phase()]]]
            final_boxes.append(boxes[keep])
            final_scores.append(image_scores[keep])
        return final_boxes, final_scores

    def assign_targets(self, anchors: Tensor, gt_boxes: Tensor) -> Tensor:
        """Sec. 3.1.2: per anchor ``(T,)`` the index of its ground-truth box, -1 (negative) or -2 (ignored).

        An image without boxes makes every anchor negative (the matcher's empty case)."""
        return self.proposal_matcher(box_iou(gt_boxes, anchors))

    def compute_loss(
        self,
        objectness: Tensor,
        pred_deltas: Tensor,
        anchors: Sequence[Tensor],
        targets: Sequence[dict[str, Tensor]],
    ) -> tuple[Tensor, Tensor]:
        """Faster R-CNN Eq. 1 on the sampled anchors (Sec. 3.1.3): objectness BCE averaged over them, and the
        smooth L1 (beta 1/9) of the positives' deltas against Eq. 2's targets, summed and divided by their count.

        Args:
            objectness: ``(B, T)`` logits; pred_deltas: ``(B, T, 4)``; anchors: B x ``(T, 4)``; targets: B dicts.
        """
        sampled_logits, sampled_labels, pos_deltas, pos_targets = [], [], [], []
        for logits, deltas, image_anchors, target in zip(objectness, pred_deltas, anchors, targets):
            gt_boxes = target["boxes"].to(image_anchors.dtype)
            matched = self.assign_targets(image_anchors, gt_boxes)
            positive, negative = self.fg_bg_sampler(matched)
            sampled = positive | negative
            sampled_logits.append(logits[sampled])
            sampled_labels.append(positive[sampled].to(logits.dtype))  # p* = 1 positive, 0 negative
            pos_deltas.append(deltas[positive])
            pos_targets.append(self.box_coder.encode(gt_boxes[matched[positive]], image_anchors[positive]))
        logits, labels = torch.cat(sampled_logits), torch.cat(sampled_labels)
        num_sampled = logits.numel()
        loss_objectness = F.binary_cross_entropy_with_logits(logits, labels)
        loss_box = F.smooth_l1_loss(torch.cat(pos_deltas), torch.cat(pos_targets), beta=1 / 9, reduction="sum")
        return loss_objectness, loss_box / num_sampled
