"""R-CNN-style rescoring: a detector's boxes re-classified by an image classifier run on their warped crops.

R-CNN — *Rich feature hierarchies for accurate object detection and semantic segmentation* (Girshick, Donahue,
Darrell, Malik 2014, arXiv:1311.2524) — warps each region to the input size of a CNN pretrained on a
classification set (ILSVRC, Sec. 2.3) and classifies it. Here the regions are a trained detector's final boxes and
the CNN is any paperzoo classifier run (e.g. the Fashion-MNIST ResNet-18, whose 28 x 28 items are what the scenes
are made of), so the second stage adds classification evidence the detector's small RoI head lacks:

1. **Crop** every box of every image in one :func:`~paperzoo.detection.roi_ops.roi_align` call
   (:func:`crop_regions`): the box made square about its centre (``square=True``; Fashion-MNIST items fill a
   centred square on their long side; ``square=False`` is R-CNN's anisotropic warp, App. A), grown by ``p``
   pixels of context at the output size (R-CNN Sec. 2.1, :func:`~paperzoo.detection.rcnn.dilate_for_context`),
   averaged over adaptive samples per bin (an antialiased resize).
2. **Classify** the crops with the classifier, normalised as its metadata says; its classes are matched to the
   detector's categories by name.
3. **Detector evidence**: the box head is run again on the final (regressed) boxes, features captured from the
   detector's own forward pass, giving the full posterior ``p_det(c | box)`` including the background
   (:func:`detect_with_posteriors`).
4. **Combine** (:func:`combine_scores`): ``s_c = o * normalize_c(q_det(c)^(1-w) * p_cls(c)^w)`` with objectness
   ``o = sum_c p_det(c)`` (``1 - p_bg``) or ``max_c p_det(c)``, ``q_det`` the detector's foreground posterior and
   ``w`` the classifier's weight: ``w = 1`` is objectness x classifier, ``w = 0`` the detector alone.
5. **Emit** the top-k classes of each box as separate detections, then class-aware NMS (:func:`emit_topk`), as
   torchvision emits one box per (proposal, class).

6. **Fine-tuning on regions** (R-CNN Sec. 2.3), optional: :func:`scene_crops` is the dataset ``scene_crops`` of
   the classification task, every item of generated Fashion-MNIST scenes cropped exactly as step 1 crops a box,
   its ground-truth box jittered so that the crops look like a detector's; ``paperzoo train
   detect_scenes_rescorer`` fine-tunes a classifier run on it.

Deviations from R-CNN: no SVMs, and the fine-tuning has no background class (the detector's objectness says
"object or not") and uses jittered ground-truth boxes rather than proposals of IoU >= 0.5; crops are zero-filled
outside the image (the scenes' and Fashion-MNIST's background is 0) rather than mean-filled; the boxes come from
a detector, not selective search, and keep the detector's regression; the classifier's posterior is averaged over
the crop and its mirror image (``flip``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .nms import batched_nms
from .rcnn import dilate_for_context
from .roi_heads import _to_rois
from .roi_ops import roi_align
from .transform import resize_boxes

if TYPE_CHECKING:
    from paperzoo.data.datasets import ImageDataset

__all__ = ["SCENE_CROPS", "Rescorer", "combine_scores", "crop_regions", "detect_with_posteriors", "emit_topk",
           "load_rescorer", "rescore_detections", "rescore_predictions", "scene_crops"]


def crop_regions(images: Sequence[Tensor], boxes: Sequence[Tensor], output_size: tuple[int, int], *,
                 context_padding: int = 0, square: bool = True, blank_outside: bool = False) -> Tensor:
    """Every box of every image warped to ``output_size`` (h, w) at once: ``[(C, H_i, W_i)], [(K_i, 4)] ->
    (sum K_i, C, h, w)``. Outside the image the crop reads 0. One roi_align over the zero-padded batch.

    ``blank_outside``: R-CNN App. A's "tightest square without context": what lies outside the box (grown by the
    same context) is set to 0, each pixel weighted by its fraction inside; neighbouring objects drop out."""
    if len(images) != len(boxes):
        raise ValueError(f"got {len(boxes)} box sets for {len(images)} images")
    rois = _to_rois([b.to(images[0].dtype) for b in boxes])  # (K, 5)
    size = min(output_size)
    kept = dilate_for_context(rois[:, 1:], size, context_padding)  # (K, 4): the box and its context
    if square:  # the square about the box centre whose side is the box's longer side
        cx, cy = (rois[:, 1] + rois[:, 3]) / 2, (rois[:, 2] + rois[:, 4]) / 2
        half = torch.maximum(rois[:, 3] - rois[:, 1], rois[:, 4] - rois[:, 2]) / 2
        rois = torch.stack((rois[:, 0], cx - half, cy - half, cx + half, cy + half), dim=1)
    rois[:, 1:] = dilate_for_context(rois[:, 1:], size, context_padding)  # R-CNN Sec. 2.1's p
    region = rois[:, 1:].clone()  # (K, 4) what the crop shows
    H, W = max(im.shape[-2] for im in images), max(im.shape[-1] for im in images)
    # one zero-padded batch with a 1-pixel border, so samples just outside an image read 0 instead of its edge
    batch = torch.stack([F.pad(im, (1, W - im.shape[-1] + 1, 1, H - im.shape[-2] + 1)) for im in images])
    rois[:, 1:] += 1.0  # the border shifts every box
    crops = roi_align(batch, rois, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    if not blank_outside:
        return crops
    wy, wx = (_inside_fraction(region[:, a], region[:, a + 2], kept[:, a], kept[:, a + 2], n)
              for a, n in ((1, output_size[0]), (0, output_size[1])))  # (K, h), (K, w)
    return crops * (wy[:, :, None] * wx[:, None, :])[:, None]  # (K, 1, h, w) broadcast over channels


def _inside_fraction(lo: Tensor, hi: Tensor, keep_lo: Tensor, keep_hi: Tensor, n: int) -> Tensor:
    """For crops spanning ``[lo, hi]`` (K,) in ``n`` output pixels: the fraction of each pixel inside
    ``[keep_lo, keep_hi]`` -> (K, n)."""
    step = ((hi - lo) / n)[:, None]  # (K, 1) source pixels per output pixel
    left = lo[:, None] + torch.arange(n, device=lo.device) * step  # (K, n)
    overlap = torch.minimum(left + step, keep_hi[:, None]) - torch.maximum(left, keep_lo[:, None])
    return (overlap / step.clamp(min=1e-12)).clamp(0.0, 1.0)


def combine_scores(det_probs: Tensor, cls_probs: Tensor, weight: float = 1.0,
                   objectness: Literal["sum", "max"] = "sum") -> Tensor:
    """Per-class scores of K boxes from the detector's posterior ``(K, 1 + C)`` (column 0 the background) and the
    classifier's ``(K, C)``: ``o * normalize(q_det^(1-w) * p_cls^w)`` (module docstring, step 4) -> ``(K, C)``."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must be in [0, 1], got {weight}")
    fg = det_probs[:, 1:]  # (K, C)
    o = fg.sum(1, keepdim=True) if objectness == "sum" else fg.amax(1, keepdim=True)  # (K, 1)
    q_det = fg / fg.sum(1, keepdim=True).clamp(min=1e-12)
    # the weighted geometric mean, in logs; tiny floors keep log(0) out (a zero stays ~0 after normalizing)
    log_mix = (1 - weight) * q_det.clamp(min=1e-12).log() + weight * cls_probs.clamp(min=1e-12).log()
    return o * log_mix.softmax(dim=1)


def emit_topk(boxes: Tensor, scores: Tensor, k: int = 1, nms_thresh: float = 0.5,
              detections_per_img: int = 100) -> dict[str, Tensor]:
    """One image: each of ``boxes (K, 4)`` emitted with its ``k`` best classes of ``scores (K, C)`` (labels
    1..C), then class-aware NMS at ``nms_thresh`` and the best ``detections_per_img``."""
    k = min(k, scores.shape[1])
    top, cls = scores.topk(k, dim=1)  # (K, k)
    boxes = boxes[:, None].expand(-1, k, -1).reshape(-1, 4)  # (K * k, 4)
    top, labels = top.reshape(-1), cls.reshape(-1) + 1  # label 0 is the background
    keep = batched_nms(boxes, top, labels, nms_thresh)[:detections_per_img]  # sorted by decreasing score
    return {"boxes": boxes[keep], "scores": top[keep], "labels": labels[keep]}


@torch.no_grad()
def detect_with_posteriors(model: nn.Module, images: Sequence[Tensor]) -> list[dict[str, Tensor]]:
    """``model(images)`` (eval mode), each image's detections also holding ``"probs"`` ``(K, num_classes)``: the
    box head's softmax at each final box, from features captured during the same forward pass. Detectors
    without a box head (one-stage) give ``[1 - score, uniform * score]``: objectness only."""
    heads = getattr(model, "roi_heads", None)
    seen: dict[str, Any] = {}
    hook = heads.register_forward_pre_hook(lambda m, args: seen.update(args=args)) if heads is not None else None
    try:
        dets = model(list(images))
    finally:
        if hook is not None:
            hook.remove()
    if heads is None:
        C = int(model.num_classes)
        out = []
        for d in dets:
            s = d["scores"][:, None]
            out.append({**d, "probs": torch.cat((1 - s, s.expand(-1, C - 1) / (C - 1)), dim=1)})
        return out
    features, _, image_sizes = seen["args"][:3]
    boxes = [resize_boxes(d["boxes"], tuple(im.shape[-2:]), size)  # to the detector's resized frame
             for d, im, size in zip(dets, images, image_sizes)]
    x = heads.box_head(heads.box_roi_pool(features, boxes, image_sizes))  # (K, D)
    probs = heads.box_predictor(x)[0].float().softmax(dim=1).split([len(b) for b in boxes])  # (K_i, num_classes)
    return [{**d, "probs": p} for d, p in zip(dets, probs)]


@dataclass
class Rescorer:
    """A classifier as R-CNN's second stage, with the combination's hyper-parameters (module docstring)."""

    classifier: nn.Module
    mean: Tensor  # (C_in, 1, 1) normalization of the classifier's [0, 1] inputs
    std: Tensor
    input_size: tuple[int, int, int]  # (C_in, h, w)
    class_index: Tensor  # (C,) classifier output of detector label 1..C
    # defaults chosen on 300 held-out scenes of Fashion-MNIST's train items (docs/models/detection.md)
    context_padding: int = 1
    square: bool = True
    blank_outside: bool = True
    flip: bool = True  # average the posterior of the crop and of its mirror image (test-time augmentation)
    weight: float = 0.5
    objectness: Literal["sum", "max"] = "sum"
    topk: int = 3
    nms_thresh: float = 0.5
    detections_per_img: int = 100
    batch_size: int = 512

    @torch.no_grad()
    def classify(self, images: Sequence[Tensor], boxes: Sequence[Tensor]) -> Tensor:
        """Classifier posteriors ``(sum K_i, C)`` of the boxes' crops, in the detector's label order."""
        c_in, h, w = self.input_size
        if sum(len(b) for b in boxes) == 0:
            return torch.zeros(0, len(self.class_index), device=images[0].device)
        crops = crop_regions(images, boxes, (h, w), context_padding=self.context_padding, square=self.square,
                             blank_outside=self.blank_outside)
        if crops.shape[1] != c_in:  # load_rescorer allows only 3 -> 1 (grey) here
            crops = crops.mean(dim=1, keepdim=True)  # (K, 1, h, w)
        crops = (crops - self.mean.to(crops)) / self.std.to(crops)
        probs = torch.cat([self._posterior(chunk) for chunk in crops.split(self.batch_size)])
        return probs[:, self.class_index.to(probs.device)]  # (K, C)

    def _posterior(self, x: Tensor) -> Tensor:
        p = self.classifier(x).float().softmax(dim=1)
        return (p + self.classifier(x.flip(-1)).float().softmax(dim=1)) / 2 if self.flip else p

    def decide(self, boxes: Tensor, det_probs: Tensor, cls_probs: Tensor) -> dict[str, Tensor]:
        """One image's detections from its boxes and both posteriors (steps 4 and 5)."""
        scores = combine_scores(det_probs, cls_probs, self.weight, self.objectness)
        return emit_topk(boxes, scores, self.topk, self.nms_thresh, self.detections_per_img)


def load_rescorer(run: str | Path, categories: Sequence[str], *, which: str = "final",
                  device: str | torch.device = "cpu", **settings: Any) -> Rescorer:
    """The classifier of an image-classification run as the second stage of a detector whose categories are
    ``categories`` (``[0]`` the background); ``settings`` are :class:`Rescorer`'s hyper-parameters."""
    from paperzoo.train.evaluate import load_checkpoint

    if not Path(run).exists():
        raise FileNotFoundError(f"--rescore: no classifier run at {run}")
    ck = load_checkpoint(run, which=which, device=device)  # ValueError for a run of another task
    c_in, h, w = (int(v) for v in ck.meta["input_size"])
    if c_in not in (1, 3):
        raise ValueError(f"--rescore: {ck.path} takes {c_in}-channel inputs; crops of RGB images give 3 (or 1, grey)")
    norm = ck.meta.get("normalization") or {"mean": [0.0] * c_in, "std": [1.0] * c_in}
    missing = [c for c in categories[1:] if c not in ck.classes]
    if missing:
        raise ValueError(f"--rescore: {ck.path} has no class {missing[0]!r} of the detector "
                         f"({len(missing)} of {len(categories) - 1} missing)")
    index = torch.tensor([ck.classes.index(c) for c in categories[1:]])
    mean, std = (torch.tensor(norm[k], dtype=torch.float32).view(-1, 1, 1) for k in ("mean", "std"))
    rescorer = Rescorer(ck.model, mean, std, (c_in, h, w), index, **settings)
    if rescorer.topk < 1 or not 0 <= 2 * rescorer.context_padding < min(h, w):
        raise ValueError(f"--rescore: need topk >= 1 and 0 <= context padding < {min(h, w) / 2}, got "
                         f"{rescorer.topk} and {rescorer.context_padding}")
    combine_scores(torch.ones(0, 2), torch.ones(0, 1), rescorer.weight, rescorer.objectness)  # fail early
    return rescorer


@torch.no_grad()
def rescore_detections(model: nn.Module, rescorer: Rescorer, images: Sequence[Tensor]) -> list[dict[str, Tensor]]:
    """Detect objects in ``images`` and rescore the boxes: per image {boxes, scores, labels}, as the detector's."""
    dets = detect_with_posteriors(model, images)
    cls_probs = rescorer.classify(images, [d["boxes"] for d in dets]).split([len(d["boxes"]) for d in dets])
    return [rescorer.decide(d["boxes"], d["probs"], p) for d, p in zip(dets, cls_probs)]


def rescore_predictions(model: nn.Module, rescorer: Rescorer, dataset: Any, indices: Sequence[int],
                        batch_size: int = 16, device: torch.device | str = "cpu") -> dict[int, dict[str, Tensor]]:
    """:func:`~paperzoo.detection.task.predict_detections` with rescoring: image_id -> detections on the CPU."""
    model.eval()
    out: dict[int, dict[str, Tensor]] = {}
    for start in range(0, len(indices), batch_size):
        items = [dataset[i] for i in indices[start:start + batch_size]]
        if "proposals" in items[0][1]:
            raise ValueError("rescoring runs the detector on images alone; detectors on given proposals "
                             "(R-CNN, Fast R-CNN) are not supported")
        dets = rescore_detections(model, rescorer, [im.to(device) for im, _ in items])
        for (_, t), det in zip(items, dets):
            out[int(t["image_id"])] = {k: v.cpu() for k, v in det.items()}
    return out


#: The ``scene_crops`` dataset's splits: (scenes, seed, jitter, copies of each item). Train: items of the train
#: split, each box jittered twice; test: the ground-truth boxes of scenes of test items, drawn apart from the
#: detection recipes' test scenes (seed 1).
SCENE_CROPS = {"train": (12000, 100, 0.05, 2), "test": (500, 101, 0.0, 1)}


def scene_crops(split: str, root: str | None = None) -> ImageDataset:
    """R-CNN Sec. 2.3's region set for the Fashion-MNIST scenes: every item of the generated scenes of ``split``
    (:data:`SCENE_CROPS`) cropped by :func:`crop_regions` with :class:`Rescorer`'s settings, as uint8
    ``(N, 1, 28, 28)`` labelled with its Fashion-MNIST class. Each training box moves each side by
    ``N(0, jitter x its width or height)`` (a detector's boxes are not exact; a box that would become degenerate
    keeps its true coordinates)."""
    from paperzoo.data.datasets import FASHION_MNIST_CLASSES, ImageDataset, dataset_stats

    from .scenes import make_scenes

    if split not in SCENE_CROPS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    n_scenes, seed, jitter, copies = SCENE_CROPS[split]
    scenes = make_scenes(split, n_scenes, seed=seed, root=root)
    g = torch.Generator().manual_seed(seed)
    crops, labels = [], []
    for start in range(0, len(scenes), 1000):  # ~70 MB of float images per chunk
        images = [im.float() / 255.0 for im in scenes.images[start:start + 1000]]  # [(1, H, W)]
        boxes = [_jitter(b.repeat(copies, 1), jitter, g) for b in scenes.boxes[start:start + 1000]]  # [(copies*k, 4)]
        crops.append(crop_regions(images, boxes, (28, 28), context_padding=Rescorer.context_padding,
                                  square=Rescorer.square, blank_outside=Rescorer.blank_outside))
        labels += [lab.repeat(copies) - 1 for lab in scenes.labels[start:start + 1000]]  # COCO id -> class
    images_u8 = torch.cat(crops).mul(255.0).round().clamp(0, 255).to(torch.uint8)  # (N, 1, 28, 28)
    mean, std = dataset_stats("fashion_mnist")  # the classifier it fine-tunes was normalised so
    return ImageDataset(images_u8, torch.cat(labels), list(FASHION_MNIST_CLASSES), "scene_crops", mean, std)


def _jitter(boxes: Tensor, sigma: float, g: torch.Generator) -> Tensor:
    """Each side of ``boxes (k, 4)`` moved by N(0, sigma x the box's width or height); boxes that would become
    narrower or lower than 2 px keep their true coordinates. ``sigma = 0``: the boxes unchanged."""
    if sigma == 0:
        return boxes
    wh = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)  # (k, 4): w, h, w, h
    moved = boxes + torch.randn(boxes.shape, generator=g) * sigma * wh
    ok = ((moved[:, 2:] - moved[:, :2]) >= 2).all(dim=1, keepdim=True)  # at least 2 px wide and high
    return torch.where(ok, moved, boxes)
