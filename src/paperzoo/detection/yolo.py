"""YOLO v1: one network looks once at the whole image and regresses a grid of boxes and class probabilities.

Redmon, Divvala, Girshick and Farhadi 2016, "You Only Look Once: Unified, Real-Time Object Detection",
arXiv:1506.02640. Sec. 2: the image is divided into an S x S grid; the cell that holds an object's centre is
responsible for it. Each cell predicts B boxes ``(x, y, w, h, confidence)`` — ``x, y`` the centre relative to
the cell's bounds, ``w, h`` relative to the whole image, confidence = Pr(Object) * IoU(pred, truth) — and C
conditional class probabilities Pr(Class_i | Object), one set per cell: an S x S x (B * 5 + C) tensor. Training
minimises the sum-squared error of Eq. 3 (:func:`yolo_loss`); testing multiplies class probabilities and box
confidences into class-specific scores (Sec. 2, Eq. 1) and runs NMS.

Notable features:

* any registered CNN is the backbone (``create_model(name, features_only=True, out_indices=(k,))``: the level
  ``k``, the last stage by default); :func:`yolo_v1_paper` is the paper's own 24-conv + 2-FC network (Fig. 3);
* targets are scattered into the grid with tensor ops (:func:`encode_targets`), the "responsible" predictor of
  each object is the one of its cell's B boxes with the highest current IoU with it (Sec. 2.2).

Deviations from the paper:

* the default head is convolutional: two 3x3 conv-BN-leaky-ReLU layers, an adaptive average pool to S x S (the
  identity when the backbone's map already is S x S) and a 1x1 conv to B * 5 + C per cell. It takes any input
  size and keeps far fewer weights than the paper's 4096-d FC layer on a 7 x 7 x 1024 map (~206M). The paper's
  two FC layers (with dropout 0.5 between them, Sec. 2.2) are ``head="fc"``;
* the network predicts sqrt(w) and sqrt(h) (so w = output^2), as Darknet's ``sqrt=1`` does, since Eq. 3 compares
  square roots and a linear output could be negative; x, y, confidence and class probabilities are linear outputs
  as in the paper, clamped to [0, 1] only when scores are formed at test time;
* the per-cell layout is ``[box_1 (x, y, sqrt w, sqrt h, C), ..., box_B, p_1 .. p_C]`` (Darknet stores all class
  probabilities first); the loss is summed over each image and averaged over the batch;
* where two object centres fall in one cell the paper keeps one without saying which (Darknet keeps the last one
  written); here the larger box is kept (ties: the first), a deterministic choice, and the other is ignored;
* the input is resized to a fixed ``image_size`` by :class:`.transform.DetectionTransform` (the paper: 448 x 448)
  and normalised with ImageNet statistics; no pre-training, learning-rate schedule or augmentation of Sec. 2.2
  is part of the model (those are the recipe's).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import create_model
from .boxes import box_convert, clip_boxes_to_image
from .faster_rcnn import IMAGENET_MEAN, IMAGENET_STD, transform_inputs
from .nms import batched_nms
from .registry import register_detector
from .transform import DetectionTransform

__all__ = ["GridTargets", "encode_targets", "decode_boxes", "yolo_loss", "LastStage", "ConvHead", "FCHead",
           "PaperNet", "YOLO", "yolo_v1", "yolo_v1_paper"]


# ------------------------------------------------------------------------------------------ the grid's targets
@dataclass
class GridTargets:
    """What each of the S x S cells of each image should predict (Sec. 2).

    Attributes:
        obj: bool ``(N, S, S)``: an object's centre falls in the cell (the paper's 1^obj_i).
        xy: ``(N, S, S, 2)`` that centre relative to the cell's bounds, in [0, 1].
        sqrt_wh: ``(N, S, S, 2)`` square roots of the box's width and height relative to the image.
        classes: ``(N, S, S, C)`` one-hot Pr(Class | Object).
        boxes: ``(N, S, S, 4)`` the box, xyxy pixels of the resized image (for the IoU of Eq. 3's confidence).
    """

    obj: Tensor
    xy: Tensor
    sqrt_wh: Tensor
    classes: Tensor
    boxes: Tensor


def encode_targets(targets: Sequence[dict[str, Tensor]], image_size: tuple[int, int], grid: int,
                   num_classes: int) -> GridTargets:
    """Scatter every image's boxes into its S x S grid, one object per cell (the larger box of a shared cell).

    Args:
        targets: per image ``{"boxes": (k, 4) xyxy pixels, "labels": (k,) in 1..num_classes}`` (0 = background).
        image_size: ``(H, W)`` of the (resized) image the boxes are in.
        grid: S.
        num_classes: C, the object classes (without the background).
    """
    height, width = image_size
    n, s = len(targets), grid
    device = targets[0]["boxes"].device
    counts = torch.tensor([len(t["boxes"]) for t in targets], device=device)
    boxes = torch.cat([t["boxes"] for t in targets]).float().reshape(-1, 4)  # (K, 4) all images
    labels = torch.cat([t["labels"] for t in targets]).reshape(-1)
    image = torch.repeat_interleave(torch.arange(n, device=device), counts)  # (K,) which image
    cx, cy, w, h = box_convert(boxes, "xyxy", "cxcywh").unbind(1)
    gx, gy = cx / width * s, cy / height * s  # centre in cell units
    col, row = gx.floor().clamp(0, s - 1).long(), gy.floor().clamp(0, s - 1).long()
    cell = (image * s + row) * s + col  # (K,) flat index into (N, S, S)

    # One object per cell: sort by decreasing area (stable: ties keep their order), then stably by cell; the first
    # of each run of equal cells is the one kept.
    by_area = torch.sort(w * h, descending=True, stable=True).indices
    order = by_area[torch.sort(cell[by_area], stable=True).indices]
    first = torch.ones_like(order, dtype=torch.bool)
    first[1:] = cell[order][1:] != cell[order][:-1]
    keep = order[first]

    obj = torch.zeros(n * s * s, dtype=torch.bool, device=device)
    xy = boxes.new_zeros(n * s * s, 2)
    sqrt_wh = boxes.new_zeros(n * s * s, 2)
    classes = boxes.new_zeros(n * s * s, num_classes)
    cell_boxes = boxes.new_zeros(n * s * s, 4)
    idx = cell[keep]  # distinct cells: plain indexed writes, deterministic
    obj[idx] = True
    xy[idx] = torch.stack((gx - col, gy - row), dim=1)[keep]
    sqrt_wh[idx] = torch.stack((w / width, h / height), dim=1)[keep].sqrt()
    classes[idx] = F.one_hot(labels[keep] - 1, num_classes).to(boxes.dtype)
    cell_boxes[idx] = boxes[keep]
    return GridTargets(obj.view(n, s, s), xy.view(n, s, s, 2), sqrt_wh.view(n, s, s, 2),
                       classes.view(n, s, s, num_classes), cell_boxes.view(n, s, s, 4))


# ----------------------------------------------------------------------------------- from predictions to boxes
def decode_boxes(box_pred: Tensor, image_size: tuple[int, int]) -> Tensor:
    """``(N, S, S, B, >=4)`` predictions ``(x, y, sqrt w, sqrt h, ...)`` -> xyxy pixels ``(N, S, S, B, 4)``."""
    height, width = image_size
    s = box_pred.shape[1]
    cells = torch.arange(s, device=box_pred.device, dtype=box_pred.dtype)
    cx = (cells.view(1, 1, s, 1) + box_pred[..., 0]) / s * width  # column offset + x within the cell
    cy = (cells.view(1, s, 1, 1) + box_pred[..., 1]) / s * height
    w, h = box_pred[..., 2].square() * width, box_pred[..., 3].square() * height
    return torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), dim=-1)


def paired_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of corresponding xyxy boxes ``(..., 4)`` and ``(..., 4)`` (broadcast), 0 where the union is empty."""
    wh = (torch.minimum(a[..., 2:], b[..., 2:]) - torch.maximum(a[..., :2], b[..., :2])).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    area_a = (a[..., 2:] - a[..., :2]).clamp(min=0).prod(-1)
    area_b = (b[..., 2:] - b[..., :2]).clamp(min=0).prod(-1)
    union = area_a + area_b - inter
    return inter / torch.where(union > 0, union, torch.ones_like(union))


# -------------------------------------------------------------------------------------------------- the loss
def yolo_loss(pred: Tensor, t: GridTargets, image_size: tuple[int, int], boxes_per_cell: int, *,
              lambda_coord: float = 5.0, lambda_noobj: float = 0.5) -> dict[str, Tensor]:
    """Eq. 3, summed over each image's cells and averaged over the N images; its five sums as separate entries.

    ``pred``: ``(N, S, S, B * 5 + C)``. The predictor j of cell i is responsible (1^obj_ij) when the cell holds an
    object and j's box has the highest IoU of the cell's B with it (ties: the first); its confidence target is
    that IoU (Sec. 2: "the confidence ... equal the IoU"), every other predictor's is 0 (1^noobj_ij).
    """
    n, s, b = pred.shape[0], pred.shape[1], boxes_per_cell
    box = pred[..., : b * 5].reshape(n, s, s, b, 5).float()  # (N, S, S, B, [x, y, sqrt w, sqrt h, C])
    cls = pred[..., b * 5:].float()  # (N, S, S, C)
    with torch.no_grad():  # which predictor answers, and the IoU it is asked to predict: targets, no gradient
        iou = paired_iou(decode_boxes(box, image_size), t.boxes[:, :, :, None, :])  # (N, S, S, B)
        best = F.one_hot(iou.argmax(-1), b).bool()  # (N, S, S, B)
        resp = best & t.obj[..., None]  # 1^obj_ij
    r = resp.to(box.dtype)
    loss_xy = lambda_coord * (r[..., None] * (box[..., :2] - t.xy[..., None, :]).square()).sum()
    loss_wh = lambda_coord * (r[..., None] * (box[..., 2:4] - t.sqrt_wh[..., None, :]).square()).sum()
    loss_obj = (r * (box[..., 4] - iou).square()).sum()
    loss_noobj = lambda_noobj * ((1 - r) * box[..., 4].square()).sum()
    loss_class = (t.obj[..., None].to(cls.dtype) * (cls - t.classes).square()).sum()  # only cells with objects
    return {"loss_xy": loss_xy / n, "loss_wh": loss_wh / n, "loss_obj": loss_obj / n,
            "loss_noobj": loss_noobj / n, "loss_class": loss_class / n}


# ---------------------------------------------------------------------------------------- backbone and heads
class LastStage(nn.Module):
    """A registered CNN cut after one feature level: image ``(N, 3, H, W)`` -> map ``(N, out_channels, h, w)``.

    ``body`` is the features-only model (its state dict is the classifier's, minus head and later stages), so
    the detection task's ``model.pretrained`` starts it from a classifier's weights.
    """

    def __init__(self, name: str, out_index: int = -1, **model_args: Any) -> None:
        super().__init__()
        self.body = create_model(name, features_only=True, out_indices=(out_index,), **model_args)
        self.out_channels = self.body.feature_info.channels()[-1]
        self.stride = self.body.feature_info.reduction()[-1]

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)[-1]


def _conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1, norm: bool = True) -> nn.Sequential:
    """Conv + (BN) + leaky ReLU(0.1): the paper's activation for every layer but the last (Eq. 2)."""
    layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, bias=not norm)]
    if norm:
        layers.append(nn.BatchNorm2d(out_ch))
    return nn.Sequential(*layers, nn.LeakyReLU(0.1, inplace=True))


def _init_last(layer: nn.Conv2d | nn.Linear) -> None:
    """Small initial outputs (ours; the paper starts from ImageNet weights and does not say): an untrained net
    predicts ~0 confidence everywhere, so the S*S*B noobj terms do not swamp the first steps with large gradients."""
    nn.init.normal_(layer.weight, std=0.01)
    nn.init.zeros_(layer.bias)


class ConvHead(nn.Module):
    """Map ``(N, C_in, h, w)`` -> ``(N, S, S, B * 5 + C)``: two 3x3 convs, pool to S x S, a 1x1 conv per cell."""

    def __init__(self, in_channels: int, grid: int, outputs_per_cell: int, channels: int = 256) -> None:
        super().__init__()
        self.grid = grid
        self.convs = nn.Sequential(_conv(in_channels, channels, 3), _conv(channels, channels, 3))
        self.predict = nn.Conv2d(channels, outputs_per_cell, 1)  # linear: the paper's last layer
        _init_last(self.predict)

    def forward(self, x: Tensor) -> Tensor:
        x = F.adaptive_avg_pool2d(self.convs(x), self.grid)  # (N, channels, S, S)
        return self.predict(x).permute(0, 2, 3, 1)  # (N, S, S, B*5+C)


class FCHead(nn.Module):
    """The paper's head (Fig. 3, Sec. 2.2): flatten the S x S map, FC 4096 + leaky ReLU, dropout 0.5, FC to the
    S x S x (B * 5 + C) tensor. Each weight belongs to one map position: train and test at one input size (the
    adaptive pool only makes a map of another size S x S, e.g. 14 x 14 -> 7 x 7)."""

    def __init__(self, in_channels: int, grid: int, outputs_per_cell: int, hidden: int = 4096,
                 dropout: float = 0.5) -> None:
        super().__init__()
        self.grid, self.outputs_per_cell = grid, outputs_per_cell
        self.fc1 = nn.Linear(in_channels * grid * grid, hidden)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, grid * grid * outputs_per_cell)
        _init_last(self.fc2)

    def forward(self, x: Tensor) -> Tensor:
        x = F.adaptive_avg_pool2d(x, self.grid).flatten(1)  # (N, C_in * S * S)
        x = self.dropout(F.leaky_relu(self.fc1(x), 0.1))
        return self.fc2(x).view(-1, self.grid, self.grid, self.outputs_per_cell)  # (N, S, S, B*5+C)


# Fig. 3, the 24 convolutional layers as (kernel, filters, stride); "M" is a 2x2/2 max pool. 448 px -> 7 x 7.
PAPER_LAYERS: tuple[tuple[int, int, int] | str, ...] = (
    (7, 64, 2), "M",
    (3, 192, 1), "M",
    (1, 128, 1), (3, 256, 1), (1, 256, 1), (3, 512, 1), "M",
    *((1, 256, 1), (3, 512, 1)) * 4, (1, 512, 1), (3, 1024, 1), "M",
    *((1, 512, 1), (3, 1024, 1)) * 2, (3, 1024, 1), (3, 1024, 2),
    (3, 1024, 1), (3, 1024, 1),
)


class PaperNet(nn.Module):
    """The paper's 24 conv layers (Fig. 3; inspired by GoogLeNet, 1x1 reductions then 3x3 convs), with biases and
    no BatchNorm as in v1 (BN arrived with YOLOv2). Stride 64: a 448 x 448 image gives a 7 x 7 x 1024 map."""

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for row in PAPER_LAYERS:
            if row == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                kernel, filters, stride = row
                layers.append(_conv(in_channels, filters, kernel, stride, norm=False))
                in_channels = filters
        self.layers = nn.Sequential(*layers)
        self.out_channels, self.stride = in_channels, 64

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


# ------------------------------------------------------------------------------------------------ the model
class YOLO(nn.Module):
    """YOLO v1 on any backbone ``(N, 3, H, W) -> (N, C_in, h, w)`` that says its channels in ``.out_channels``.

    Args:
        backbone: e.g. :class:`LastStage` or :class:`PaperNet`.
        num_classes: classes including the background (the grid predicts ``num_classes - 1`` probabilities).
        grid: S. boxes_per_cell: B.
        head: ``"conv"`` (:class:`ConvHead`) or ``"fc"`` (the paper's, :class:`FCHead`).
        head_channels: width of the conv head. fc_hidden: width of the paper's first FC layer.
        image_size: ``(H, W)`` every image is resized to (the paper: 448 x 448).
        lambda_coord, lambda_noobj: Eq. 3's weights (5 and 0.5, Sec. 2.2).
        score_thresh: minimum class-specific confidence kept at test time.
        nms_thresh: IoU above which NMS suppresses a box of the same class. detections_per_img: kept at most.

    ``forward(images, targets=None, proposals=None)``: losses (training) or detections (eval), see :meth:`forward`.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, *, grid: int = 7, boxes_per_cell: int = 2,
                 head: str = "conv", head_channels: int = 256, fc_hidden: int = 4096,
                 image_size: int | Sequence[int] = 448, image_mean: Sequence[float] = IMAGENET_MEAN,
                 image_std: Sequence[float] = IMAGENET_STD, lambda_coord: float = 5.0, lambda_noobj: float = 0.5,
                 score_thresh: float = 0.05, nms_thresh: float = 0.5, detections_per_img: int = 100) -> None:
        super().__init__()
        if num_classes < 2 or grid < 1 or boxes_per_cell < 1:
            raise ValueError(f"need num_classes >= 2 (with the background), grid >= 1 and boxes_per_cell >= 1, got "
                             f"{num_classes}, {grid}, {boxes_per_cell}")
        if head not in ("conv", "fc"):
            raise ValueError(f"head must be 'conv' or 'fc', got {head!r}")
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if len(size) != 2:
            raise ValueError(f"image_size is one side or (height, width), got {image_size}")
        self.image_size: tuple[int, int] = (int(size[0]), int(size[1]))
        self.num_classes, self.grid, self.boxes_per_cell = num_classes, grid, boxes_per_cell
        self.lambda_coord, self.lambda_noobj = lambda_coord, lambda_noobj
        self.score_thresh, self.nms_thresh, self.detections_per_img = score_thresh, nms_thresh, detections_per_img
        # every image becomes image_size: no padding, so the grid tiles exactly the image (size_divisible=1)
        self.transform = DetectionTransform(min(self.image_size), max(self.image_size), image_mean, image_std,
                                            size_divisible=1, fixed_size=self.image_size)
        self.backbone = backbone
        per_cell = boxes_per_cell * 5 + num_classes - 1  # Sec. 2: S x S x (B * 5 + C)
        self.head = (ConvHead(backbone.out_channels, grid, per_cell, head_channels) if head == "conv"
                     else FCHead(backbone.out_channels, grid, per_cell, fc_hidden))

    def forward(self, images: Sequence[Tensor], targets: Sequence[dict[str, Tensor]] | None = None,
                proposals: Sequence[Tensor] | None = None) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Losses in training mode, detections in eval mode; ``proposals`` are accepted and ignored (one look).

        Args:
            images: ``(3, H_i, W_i)`` float RGB in [0, 1]; sizes may differ.
            targets: per image ``{"boxes": (k, 4) xyxy pixels, "labels": (k,) in 1..num_classes-1}``; k may be 0.

        Returns:
            training: Eq. 3's terms ``loss_xy, loss_wh, loss_obj, loss_noobj, loss_class`` (their sum is Eq. 3);
            eval: per image ``{"boxes": (K, 4) xyxy in original coordinates, "scores": (K,), "labels": (K,)}``.
        """
        batch, targets, original_sizes = transform_inputs(self, images, targets)
        pred = self.head(self.backbone(batch.tensors))  # (N, S, S, B*5+C)
        if self.training:
            grid_targets = encode_targets(targets, self.image_size, self.grid, self.num_classes - 1)
            return yolo_loss(pred, grid_targets, self.image_size, self.boxes_per_cell,
                             lambda_coord=self.lambda_coord, lambda_noobj=self.lambda_noobj)
        return self.transform.postprocess(self.detect(pred), batch.image_sizes, original_sizes)

    @torch.no_grad()
    def detect(self, pred: Tensor) -> list[dict[str, Tensor]]:
        """Class-specific confidences Pr(Class_i | Object) * Pr(Object) * IoU (test time, Eq. 1), per-class NMS;
        boxes in the resized image's pixels."""
        n, s, b = pred.shape[0], self.grid, self.boxes_per_cell
        box = pred[..., : b * 5].reshape(n, s, s, b, 5).float()  # (N, S, S, B, 5)
        cls = pred[..., b * 5:].float()  # (N, S, S, C)
        boxes = clip_boxes_to_image(decode_boxes(box, self.image_size), self.image_size).reshape(n, -1, 4)
        # linear outputs may leave [0, 1]: clamp each factor so a score is a product of probabilities
        scores = box[..., 4, None].clamp(0, 1) * cls[..., None, :].clamp(0, 1)  # (N, S, S, B, C)
        scores = scores.reshape(n, s * s * b, -1)  # (N, S*S*B, C)
        out = []
        for image_boxes, image_scores in zip(boxes, scores):  # per image: NMS needs each image's own set
            box_idx, label = (image_scores > self.score_thresh).nonzero(as_tuple=True)
            kept_boxes, kept_scores = image_boxes[box_idx], image_scores[box_idx, label]
            keep = batched_nms(kept_boxes, kept_scores, label, self.nms_thresh)[: self.detections_per_img]
            out.append({"boxes": kept_boxes[keep], "scores": kept_scores[keep], "labels": label[keep] + 1})
        return out

    def extra_repr(self) -> str:
        return (f"S={self.grid}, B={self.boxes_per_cell}, C={self.num_classes - 1}, image_size={self.image_size}, "
                f"lambda_coord={self.lambda_coord}, lambda_noobj={self.lambda_noobj}")


# ----------------------------------------------------------------------------------------- registered models
@register_detector
def yolo_v1(*, backbone: str = "resnet18", num_classes: int = 21, grid: int = 7, boxes_per_cell: int = 2,
            out_index: int = -1, image_size: int | Sequence[int] = 448,
            backbone_args: dict[str, Any] | None = None, **kw: Any) -> YOLO:
    """YOLO v1 (S x S grid, B boxes per cell, Eq. 3) on feature level ``out_index`` of any registered CNN.

    ``num_classes`` counts the background (21: the paper's 20 VOC classes); ``**kw`` go to :class:`YOLO`.
    """
    model = YOLO(LastStage(backbone, out_index, **(backbone_args or {})), num_classes, grid=grid,
                 boxes_per_cell=boxes_per_cell, image_size=image_size, **kw)
    model.model_family = "yolo"
    return model


@register_detector
def yolo_v1_paper(*, num_classes: int = 21, grid: int = 7, boxes_per_cell: int = 2,
                  image_size: int | Sequence[int] = 448, **kw: Any) -> YOLO:
    """The paper's network (Fig. 3): 24 conv layers + 2 FC layers, 448 x 448 -> 7 x 7 x 30 (271,703,550 params)."""
    model = YOLO(PaperNet(), num_classes, grid=grid, boxes_per_cell=boxes_per_cell, head="fc",
                 image_size=image_size, **kw)
    model.model_family = "yolo"
    return model
