"""COCO detection metrics through pycocotools' ``COCOeval``, the field's reference implementation.

The metrics are those of the COCO detection challenge (Lin et al. 2014, arXiv:1405.0312;
cocodataset.org/#detection-eval): AP is precision interpolated at 101 recall points (0, 0.01, ..., 1; the
precision at recall r is the best precision at any recall >= r), averaged over the categories and over the
IoU thresholds 0.50, 0.55, ..., 0.95; AP50 / AP75 use one threshold; small / medium / large split the ground
truth at areas 32² and 96²; AR_k is the recall with at most k detections per image, averaged over the same
thresholds. Ground truth with ``iscrowd = 1`` is ignored (neither a hit nor a miss, and detections on it are
not false positives). A metric with no ground truth to score (e.g. AP_large without large objects) is -1, as
in pycocotools.

Predictions follow the detectors' eval output: ``{image_id: {"boxes": (K, 4) xyxy, "scores": (K,),
"labels": (K,)}}``; they become COCO result records (``bbox`` in ``[x, y, w, h]``, the format of
cocodataset.org/#format-results). Only ``iou_type="bbox"`` exists; instance masks (``"segm"``) will add
their own converter to :data:`_RESULTS`.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor

from .boxes import box_convert

__all__ = ["STAT_NAMES", "coco_from_dict", "evaluate_coco", "format_coco_table"]

#: ``COCOeval.stats`` in order, with what each one averages over.
STAT_NAMES = {
    "AP": "IoU 0.50:0.95, all areas, 100 detections",
    "AP50": "IoU 0.50",
    "AP75": "IoU 0.75",
    "AP_small": "area < 32²",
    "AP_medium": "32² ≤ area < 96²",
    "AP_large": "area ≥ 96²",
    "AR_1": "recall, 1 detection per image",
    "AR_10": "recall, 10 detections per image",
    "AR_100": "recall, 100 detections per image",
    "AR_small": "recall, area < 32²",
    "AR_medium": "recall, 32² ≤ area < 96²",
    "AR_large": "recall, area ≥ 96²",
}

Predictions = Mapping[int, Mapping[str, Any]]


def _pycocotools() -> tuple[Any, Any]:
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as e:
        raise ImportError("COCO metrics need pycocotools: pip install 'paperzoo[detect]'") from e
    return COCO, COCOeval


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Swallow pycocotools' progress prints."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def coco_from_dict(data: dict) -> Any:
    """A ``pycocotools.coco.COCO`` over an in-memory instances dict (``images``, ``annotations``,
    ``categories``), without its prints. The dict is used, not copied."""
    COCO, _ = _pycocotools()
    coco = COCO()
    coco.dataset = data
    with _quiet():
        coco.createIndex()
    return coco


def _categories(labels: Tensor, label_to_cat: Mapping[int, int] | None) -> Tensor:
    """Category id of each label; None maps a label to itself (labels that are category ids)."""
    if label_to_cat is None or len(labels) == 0:
        return labels
    table = torch.full((max(max(label_to_cat), int(labels.max())) + 1,), -1, dtype=torch.int64)
    table[torch.tensor(list(label_to_cat))] = torch.tensor(list(label_to_cat.values()))
    cats = table[labels.clamp(min=0)]
    if (labels < 0).any() or (cats < 0).any():
        bad = labels[(labels < 0) | (cats < 0)][0]
        raise ValueError(f"predicted label {int(bad)} has no category in label_to_cat")
    return cats


def _bbox_results(predictions: Predictions, label_to_cat: Mapping[int, int] | None) -> list[dict]:
    """COCO result records ``{image_id, category_id, bbox xywh, score}`` of every predicted box."""
    results = []
    for image_id, pred in predictions.items():
        boxes = torch.as_tensor(pred["boxes"], dtype=torch.float64).reshape(-1, 4)
        scores = torch.as_tensor(pred["scores"], dtype=torch.float64).reshape(-1)
        labels = torch.as_tensor(pred["labels"], dtype=torch.int64).reshape(-1)
        if not len(boxes) == len(scores) == len(labels):
            raise ValueError(f"image {image_id}: {len(boxes)} boxes, {len(scores)} scores, {len(labels)} labels")
        cats = _categories(labels, label_to_cat).tolist()
        xywh = box_convert(boxes, "xyxy", "xywh").tolist()
        results += [{"image_id": int(image_id), "category_id": c, "bbox": b, "score": s}
                    for b, c, s in zip(xywh, cats, scores.tolist())]
    return results


#: Result converters by COCOeval iouType (issue 17 adds "segm": masks -> RLE).
_RESULTS: dict[str, Callable[[Predictions, Mapping[int, int] | None], list[dict]]] = {"bbox": _bbox_results}


def evaluate_coco(coco_gt: Any, predictions: Predictions, label_to_cat: Mapping[int, int] | None = None, *,
                  iou_type: str = "bbox") -> dict[str, float]:
    """COCO AP / AR of ``predictions`` against ``coco_gt`` (a ``pycocotools.coco.COCO``), by pycocotools.

    Args:
        coco_gt: the ground truth, e.g. ``dataset.coco_gt()``. Every one of its images is scored: an image
            without predictions counts its objects as missed.
        predictions: ``{image_id: {"boxes": (K, 4) xyxy, "scores": (K,), "labels": (K,)}}`` (tensors, arrays or
            lists); ``K`` may be 0, the dict may be empty.
        label_to_cat: label -> COCO category id (``dataset.label_to_cat``); None: labels are category ids.
        iou_type: only ``"bbox"`` so far.

    Returns:
        ``{name: value}`` for every name of :data:`STAT_NAMES`; no detection at all gives 0 (not an error).
    """
    if iou_type not in _RESULTS:
        raise ValueError(f"iou_type must be one of {sorted(_RESULTS)}, got {iou_type!r}")
    unknown = set(map(int, predictions)) - set(coco_gt.getImgIds())
    if unknown:
        raise ValueError(f"predictions for image ids not in the ground truth: {sorted(unknown)[:5]}")
    results = _RESULTS[iou_type](predictions, label_to_cat)
    _, COCOeval = _pycocotools()
    with _quiet():
        # loadRes refuses an empty list; an empty result set scores 0 (or -1 where there is no ground truth)
        coco_dt = coco_gt.loadRes(results) if results else coco_from_dict(
            {"images": coco_gt.dataset["images"], "categories": coco_gt.dataset["categories"], "annotations": []})
        evaluator = COCOeval(coco_gt, coco_dt, iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return dict(zip(STAT_NAMES, map(float, evaluator.stats)))


def format_coco_table(stats: Mapping[str, float]) -> str:
    """A markdown table of the metrics in ``stats`` (names of :data:`STAT_NAMES`); -1 prints as ``n/a``."""
    lines = ["| metric | value | over |", "|---|---:|---|"]
    for name, meaning in STAT_NAMES.items():
        if name in stats:
            value = "n/a" if stats[name] < 0 else f"{stats[name]:.3f}"
            lines.append(f"| {name} | {value} | {meaning} |")
    return "\n".join(lines)
