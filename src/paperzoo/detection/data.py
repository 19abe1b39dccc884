"""Detection datasets and batching (issue 15, "Data and metrics"; the augmentations are in :mod:`.augment`).

Every dataset here gives ``(image, target)`` in torchvision's detection convention (see the detection contract):

* ``image``: float32 ``(3, H, W)`` RGB in ``[0, 1]``.
* ``target``: ``{"boxes": float32 (N, 4) xyxy absolute pixels (width = x2 - x1), "labels": int64 (N,) in
  1..num_classes-1, "image_id": int}`` (+ ``"masks"``: bool ``(N, H, W)`` for the scenes). ``N`` may be 0.

and carries ``categories`` (names, ``categories[0] == "__background__"``), ``cat_ids`` (the COCO category id of
label ``l`` is ``cat_ids[l - 1]``) and :meth:`DetectionDataset.coco_gt`, the pycocotools ground truth that
:func:`~paperzoo.detection.coco_eval.evaluate_coco` scores against.

Formats and their sources:

* **COCO** (Lin et al. 2014, arXiv:1405.0312; the format of cocodataset.org/#format-data): ``instances_*.json``
  with ``images`` (id, file_name, width, height), ``annotations`` (id, image_id, category_id, bbox ``[x, y, w, h]``
  in pixels from the image's top-left edge, area, iscrowd) and ``categories`` (id, name).
* **Pascal VOC** (Everingham et al. 2010, IJCV 88; the VOCdevkit layout): ``Annotations/<id>.xml``,
  ``JPEGImages/<id>.jpg``, ``ImageSets/Main/<set>.txt``. VOC's ``bndbox`` holds 1-based *inclusive pixel
  indices*: the box covers pixels ``xmin..xmax``. We convert to pixel edges, ``(x1, y1, x2, y2) =
  (xmin - 1, ymin - 1, xmax, ymax)``, so the width is ``xmax - xmin + 1`` as in VOC's own devkit and a box is
  valid when ``1 <= xmin <= xmax <= width`` (same for y).

What is trained on and what is scored:

* COCO ``iscrowd`` regions and VOC ``difficult`` objects are not training boxes; they stay in the ground truth
  with ``iscrowd = 1``, which COCOeval treats as "ignore": a detection on them is neither a TP nor an FP
  (note: COCOeval measures overlap with a crowd region as intersection over the *detection's* area).
* Bad annotations (box outside the image, zero or negative size, unknown category or image, missing image file,
  malformed JSON/XML) raise ``ValueError`` / ``FileNotFoundError`` with one line naming the annotation and the
  file. With ``skip_invalid=True`` they are dropped instead (a bad annotation alone; an image whose file is
  missing with its annotations) and one warning gives the count. COCO boxes that overrun the image by at most
  :data:`EDGE_TOLERANCE` pixels (float rounding in real COCO files) are clipped, not refused.

Randomness: ``dataset[i]`` is a function of ``(transform_seed, epoch, i)`` only. The transform draws from a
private ``torch.Generator`` seeded by :func:`~paperzoo.data.loader.derive_seed` of those three numbers, so a
resumed or re-ordered epoch replays the same augmentations; :meth:`DetectionDataset.set_epoch` changes them
between epochs, and :meth:`DetectionDataset.get` takes a caller's generator instead.
"""

from __future__ import annotations

import json
import os
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..data.loader import derive_seed
from .boxes import box_area, box_convert, clip_boxes_to_image
from .scenes import make_scenes

__all__ = [
    "BACKGROUND", "EDGE_TOLERANCE", "VOC_CLASSES", "Target", "PairTransform", "DetectionDataset", "CocoDetection",
    "VOCDetection", "ScenesDetection", "collate", "pad_images",
]

BACKGROUND = "__background__"
#: COCO boxes may overrun the image by this many pixels (float rounding); they are clipped to it.
EDGE_TOLERANCE = 1.0
#: The 20 Pascal VOC classes in the devkit's order (labels 1..20).
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
_UNUSED = "N/A"  # name of a label no category has (labels="category_id"; torchvision's COCO list has them too)
_AUGMENT = 3  # stream id for derive_seed, apart from the loaders' order (1) and batch augmentation (2)
_FRESH_SCENE = 4  # stream id of ScenesDetection(fresh=True)'s scenes

Target = dict[str, Any]  # boxes (N, 4) float32 xyxy, labels (N,) int64, image_id int, optional masks (N, H, W)


class PairTransform(Protocol):
    """A transform of an ``(image, target)`` pair drawing its randomness from ``generator``."""

    def __call__(self, image: Tensor, target: Target, generator: torch.Generator | None = None
                 ) -> tuple[Tensor, Target]: ...


# ---------------------------------------------------------------------------------------------------- base


class DetectionDataset(torch.utils.data.Dataset):
    """Base of the detection datasets: seeded transforms, categories and the COCO ground truth.

    Subclasses set ``categories`` and ``cat_ids`` and implement :meth:`load` (the untransformed pair),
    :meth:`__len__` and :meth:`coco_dict` (the ground truth in COCO's instances format).
    """

    categories: list[str]
    cat_ids: list[int]

    def __init__(self, transform: PairTransform | None = None, transform_seed: int = 0) -> None:
        self.transform = transform
        self.transform_seed = transform_seed
        self.epoch = 0

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, index: int) -> tuple[Tensor, Target]:
        """Image and target ``index`` before the transform."""
        raise NotImplementedError

    def coco_dict(self) -> dict:
        """The ground truth as a COCO instances dict (images, annotations, categories)."""
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        """Number of classes including the background (a detector's ``num_classes``)."""
        return len(self.categories)

    @property
    def label_to_cat(self) -> dict[int, int]:
        """Label -> COCO category id, for :func:`~paperzoo.detection.coco_eval.evaluate_coco`."""
        return {label: cat for label, cat in enumerate(self.cat_ids, start=1)}

    def set_epoch(self, epoch: int) -> None:
        """Draw the augmentations of ``epoch`` from now on."""
        self.epoch = int(epoch)

    def generator(self, index: int) -> torch.Generator:
        """The private generator of sample ``index`` in the current epoch."""
        return torch.Generator().manual_seed(derive_seed(self.transform_seed, self.epoch, index, _AUGMENT))

    def get(self, index: int, generator: torch.Generator | None = None) -> tuple[Tensor, Target]:
        """Sample ``index``, its transform drawing from ``generator`` (None: the global RNG)."""
        image, target = self.load(index)
        return self.transform(image, target, generator) if self.transform else (image, target)

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        index %= len(self)
        return self.get(index, self.generator(index) if self.transform else None)

    def coco_gt(self) -> Any:
        """The ground truth as a ``pycocotools.coco.COCO`` object (built in memory, quietly)."""
        from .coco_eval import coco_from_dict  # pycocotools is the optional `detect` extra

        return coco_from_dict(self.coco_dict())

    def _coco_categories(self) -> list[dict]:
        return [{"id": c, "name": self.categories[label]} for label, c in enumerate(self.cat_ids, start=1)]


def _annotations(image_id: int, boxes: Tensor, cat_ids: Tensor, iscrowd: Tensor, areas: Tensor,
                 first_id: int) -> list[dict]:
    """COCO annotation dicts of one image's xyxy boxes; ids count from ``first_id``."""
    xywh = box_convert(boxes, "xyxy", "xywh").tolist()
    return [{"id": first_id + k, "image_id": image_id, "category_id": c, "bbox": b, "area": a, "iscrowd": z}
            for k, (b, c, z, a) in enumerate(zip(xywh, cat_ids.tolist(), iscrowd.int().tolist(), areas.tolist()))]


def _read_image(path: str) -> Tensor:
    """An image file as float32 ``(3, H, W)`` RGB in [0, 1]."""
    with Image.open(path) as img:
        array = np.asarray(img.convert("RGB"))
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255)  # (H, W, 3) -> (3, H, W)


def _report(problems: list[tuple[type[Exception], str]], skip_invalid: bool, source: str) -> None:
    """Raise the first problem, or (skip_invalid) warn once with their count."""
    if not problems:
        return
    if not skip_invalid:
        kind, message = problems[0]
        raise kind(message)
    warnings.warn(f"{source}: skipped {len(problems)} invalid annotation(s) or image(s) (skip_invalid=True); "
                  f"first: {problems[0][1]}", stacklevel=3)


def _empty_target(image_id: int) -> Target:
    return {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "image_id": image_id}


# ---------------------------------------------------------------------------------------------------- COCO


_COCO_LISTS = ("images", "annotations", "categories")


def _load_coco_json(path: str) -> dict:
    """A COCO instances dict with ``images``, ``annotations`` (default empty) and ``categories`` lists."""
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: malformed JSON: {e.msg} at line {e.lineno}, column {e.colno}") from None
    if not isinstance(data, dict) or any(not isinstance(data.get(k, []), list) for k in _COCO_LISTS) \
            or "images" not in data or "categories" not in data:
        raise ValueError(f"{path}: not a COCO instances file (needs 'images', 'annotations', 'categories' lists)")
    data.setdefault("annotations", [])
    for img in data["images"]:
        if not isinstance(img, dict) or any(k not in img for k in ("id", "file_name", "width", "height")):
            raise ValueError(f"{path}: image entry {str(img)[:80]} lacks id, file_name, width or height")
    if len({img["id"] for img in data["images"]}) != len(data["images"]):
        raise ValueError(f"{path}: duplicate image ids")
    return data


def _is_box(bbox: Any) -> bool:
    return (isinstance(bbox, list) and len(bbox) == 4
            and all(isinstance(v, (int, float)) and np.isfinite(v) for v in bbox))


def _annotation_problem(ann: Any, images: dict[int, dict], cat_ids: set[int], path: str) -> str | None:
    """Why one COCO annotation is invalid (a one-line message naming it and the file), or None."""
    if not isinstance(ann, dict) or not isinstance(ann.get("id"), int):
        return f"{path}: annotation without an integer id: {str(ann)[:80]}"
    where = f"{path}: annotation id {ann['id']}"
    image = images.get(ann.get("image_id"))
    if image is None:
        return f"{where}: unknown image id {ann.get('image_id')!r}"
    where += f" (image id {image['id']}, {image['file_name']})"
    if ann.get("category_id") not in cat_ids:
        return f"{where}: unknown category id {ann.get('category_id')!r}"
    bbox = ann.get("bbox")
    if not _is_box(bbox):
        return f"{where}: bbox must be 4 finite numbers [x, y, w, h], got {bbox!r}"
    x, y, w, h = bbox
    if w <= 0 or h <= 0:
        return f"{where}: box {bbox} (xywh) has zero or negative size"
    width, height, t = image["width"], image["height"], EDGE_TOLERANCE
    if x < -t or y < -t or x >= width or y >= height or x + w > width + t or y + h > height + t:
        return f"{where}: box {bbox} (xywh) lies outside the {width}x{height} image"
    return None


class CocoDetection(DetectionDataset):
    """Images of ``image_dir`` with the boxes of a COCO instances file (format: see the module docstring).

    Args:
        image_dir: folder that ``file_name`` is relative to.
        ann_file: the ``instances_*.json``.
        skip_invalid: drop bad annotations (and images whose file is missing) with one warning, instead of
            raising on the first.
        labels: ``"contiguous"``: labels 1..K follow the sorted category ids; ``"category_id"``: the label *is*
            the category id, ``num_classes = max id + 1`` (91 for COCO, what torchvision's COCO checkpoints
            predict); labels no category has are named ``"N/A"``.
        transform, transform_seed: augmentation of ``(image, target)`` and its seed (module docstring).

    Images without annotations are kept (an empty target). Annotations without ``iscrowd`` count as 0, without
    ``area`` get the box area.
    """

    def __init__(self, image_dir: str, ann_file: str, *, skip_invalid: bool = False, labels: str = "contiguous",
                 transform: PairTransform | None = None, transform_seed: int = 0) -> None:
        super().__init__(transform, transform_seed)
        if labels not in ("contiguous", "category_id"):
            raise ValueError(f"labels must be 'contiguous' or 'category_id', got {labels!r}")
        self.image_dir, self.ann_file = image_dir, ann_file
        data = _load_coco_json(ann_file)
        self._set_categories(data["categories"], labels)
        images, missing = self._images_on_disk(data["images"])
        annotations, bad = self._valid_annotations(data["annotations"], data["images"], {i for i, _ in missing})
        _report([(FileNotFoundError, m) for _, m in missing] + [(ValueError, m) for m in bad], skip_invalid, ann_file)
        self._gt = {**data, "images": images, "annotations": annotations}
        self._targets = self._training_targets(images, annotations)

    def _set_categories(self, cats: list, labels: str) -> None:
        if any(not isinstance(c, dict) or not isinstance(c.get("id"), int) or "name" not in c for c in cats):
            raise ValueError(f"{self.ann_file}: every category needs an integer id and a name")
        ids = sorted(c["id"] for c in cats)
        if len(set(ids)) != len(ids):
            raise ValueError(f"{self.ann_file}: duplicate category ids")
        names = {c["id"]: str(c["name"]) for c in cats}
        self._file_cat_ids = ids
        if labels == "contiguous":
            self.cat_ids = ids
            self.categories = [BACKGROUND] + [names[i] for i in ids]
        else:
            if ids and ids[0] < 1:
                raise ValueError(f"{self.ann_file}: labels='category_id' needs category ids >= 1 (0 is the "
                                 f"background), got {ids[0]}")
            self.cat_ids = list(range(1, (ids[-1] if ids else 0) + 1))
            self.categories = [BACKGROUND] + [names.get(i, _UNUSED) for i in self.cat_ids]
        self._label_of = {c: label for label, c in enumerate(self.cat_ids, start=1)}

    def _images_on_disk(self, images: list[dict]) -> tuple[list[dict], list[tuple[int, str]]]:
        """The image entries whose file exists, and (id, message) of those whose file does not."""
        kept, missing = [], []
        for img in images:
            path = os.path.join(self.image_dir, img["file_name"])
            if os.path.isfile(path):
                kept.append(img)
            else:
                missing.append((img["id"], f"{self.ann_file}: image id {img['id']}: file {path} not found"))
        return kept, missing

    def _valid_annotations(self, annotations: list, images: list[dict], missing: set[int]
                           ) -> tuple[list[dict], list[str]]:
        """The valid annotations (defaults filled in) and the messages of the invalid ones; those of an image
        whose file is missing are dropped without a message (the image has one)."""
        by_id = {img["id"]: img for img in images}
        cat_ids = set(self._file_cat_ids)
        kept, bad = [], []
        for ann in annotations:
            problem = _annotation_problem(ann, by_id, cat_ids, self.ann_file)
            if problem:
                bad.append(problem)
            elif ann["image_id"] not in missing:
                ann.setdefault("iscrowd", 0)
                ann.setdefault("area", ann["bbox"][2] * ann["bbox"][3])
                kept.append(ann)
        return kept, bad

    def _training_targets(self, images: list[dict], annotations: list[dict]) -> list[tuple[Tensor, Tensor]]:
        """Per image, the (boxes xyxy clipped to the image, labels) of its non-crowd annotations."""
        by_image: dict[int, list[dict]] = {img["id"]: [] for img in images}
        for ann in annotations:
            if not ann["iscrowd"]:
                by_image[ann["image_id"]].append(ann)
        targets = []
        for img in images:
            anns = by_image[img["id"]]
            boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
            boxes = clip_boxes_to_image(box_convert(boxes, "xywh", "xyxy"), (img["height"], img["width"]))
            labels = torch.tensor([self._label_of[a["category_id"]] for a in anns], dtype=torch.int64)
            targets.append((boxes, labels))
        return targets

    def __len__(self) -> int:
        return len(self._gt["images"])

    def load(self, index: int) -> tuple[Tensor, Target]:
        info = self._gt["images"][index]
        path = os.path.join(self.image_dir, info["file_name"])
        image = _read_image(path)
        if tuple(image.shape[1:]) != (info["height"], info["width"]):
            raise ValueError(f"{self.ann_file}: image id {info['id']}: {path} is {image.shape[2]}x{image.shape[1]}, "
                             f"the annotations say {info['width']}x{info['height']}")
        boxes, labels = self._targets[index]
        return image, {"boxes": boxes.clone(), "labels": labels.clone(), "image_id": info["id"]}

    def coco_dict(self) -> dict:
        """The file's dict minus what was skipped (shared, not copied: do not modify it)."""
        return self._gt


# ---------------------------------------------------------------------------------------------------- VOC


def _parse_xml(xml_path: str) -> ET.Element:
    if not os.path.isfile(xml_path):
        raise FileNotFoundError(f"{xml_path} not found")
    try:
        return ET.parse(xml_path).getroot()
    except ET.ParseError as e:
        raise ValueError(f"{xml_path}: malformed XML: {e}") from None


def _voc_object(obj: ET.Element, k: int, xml_path: str, class_index: dict[str, int], size: tuple[int, int]
                ) -> tuple[int, bool, tuple[float, ...]] | str:
    """(label, difficult, xyxy pixel-edge box) of the ``k``-th ``<object>`` (1-based), or why it is invalid."""
    name = (obj.findtext("name") or "").strip()
    where = f"{xml_path}: <object> #{k} ({name!r})"
    if name not in class_index:
        return f"{where}: unknown class"
    try:
        xmin, ymin, xmax, ymax = (float(obj.find("bndbox").findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax"))
    except (AttributeError, TypeError, ValueError):
        return f"{where}: <bndbox> needs numeric xmin, ymin, xmax, ymax"
    box = f"[{xmin:g}, {ymin:g}, {xmax:g}, {ymax:g}]"
    if xmax < xmin or ymax < ymin:  # inclusive indices: xmax == xmin is one pixel wide
        return f"{where}: box {box} (1-based xmin, ymin, xmax, ymax) has zero or negative size"
    width, height = size
    if xmin < 1 or ymin < 1 or xmax > width or ymax > height:
        return f"{where}: box {box} (1-based xmin, ymin, xmax, ymax) lies outside the {width}x{height} image"
    difficult = (obj.findtext("difficult") or "0").strip() == "1"
    return class_index[name], difficult, (xmin - 1, ymin - 1, xmax, ymax)  # indices -> pixel edges


def _voc_size(root: ET.Element, image_path: str) -> tuple[int, int]:
    """(width, height) from ``<size>``, or from the image's header when the XML lacks it."""
    try:
        size = int(root.findtext("size/width")), int(root.findtext("size/height"))
        if min(size) > 0:
            return size
    except (TypeError, ValueError):
        pass
    with Image.open(image_path) as img:
        return img.size


class VOCDetection(DetectionDataset):
    """A Pascal VOC image set: ``root/ImageSets/Main/<image_set>.txt``, ``root/Annotations/<id>.xml``,
    ``root/JPEGImages/<file>`` (``root`` is e.g. ``VOCdevkit/VOC2007``; format and box conversion: module
    docstring).

    Labels 1..20 follow :data:`VOC_CLASSES` (or ``classes``). ``difficult`` objects are not training boxes and
    are ignored by the evaluation (``iscrowd = 1`` in :meth:`coco_dict`). Image ids are 1-based positions in the
    image set; ``image_names[image_id - 1]`` is VOC's own id (e.g. ``"2008_000123"``). With ``skip_invalid``, an
    invalid ``<object>`` is dropped, and an image whose XML or image file is missing or malformed.
    """

    def __init__(self, root: str, image_set: str = "val", *, classes: Sequence[str] = VOC_CLASSES,
                 skip_invalid: bool = False, transform: PairTransform | None = None, transform_seed: int = 0) -> None:
        super().__init__(transform, transform_seed)
        self.root = root
        list_file = os.path.join(root, "ImageSets", "Main", f"{image_set}.txt")
        if not os.path.isfile(list_file):
            raise FileNotFoundError(f"{list_file} not found (VOC layout: ImageSets/Main/<image_set>.txt)")
        with open(list_file) as f:
            names = [line.split()[0] for line in f if line.strip()]
        self.categories = [BACKGROUND, *classes]
        self.cat_ids = list(range(1, len(classes) + 1))
        self.image_names: list[str] = []
        self._records: list[dict] = []
        problems: list[tuple[type[Exception], str]] = []
        for name in names:
            problems += self._add(name, skip_invalid)
        _report(problems, skip_invalid, list_file)

    def _add(self, name: str, skip_invalid: bool) -> list[tuple[type[Exception], str]]:
        """Parse image ``name`` into a record; returns the problems (raised at once unless skip_invalid)."""
        xml_path = os.path.join(self.root, "Annotations", f"{name}.xml")
        try:
            root = _parse_xml(xml_path)
            image_path = os.path.join(self.root, "JPEGImages", root.findtext("filename") or f"{name}.jpg")
            if not os.path.isfile(image_path):
                raise FileNotFoundError(f"{xml_path}: image file {image_path} not found")
        except (FileNotFoundError, ValueError) as e:
            if not skip_invalid:
                raise
            return [(type(e), str(e))]
        size = _voc_size(root, image_path)
        class_index = {c: label for label, c in enumerate(self.categories) if label > 0}
        objects, problems = [], []
        for k, obj in enumerate(root.iter("object"), start=1):
            parsed = _voc_object(obj, k, xml_path, class_index, size)
            if isinstance(parsed, str):
                if not skip_invalid:
                    raise ValueError(parsed)
                problems.append((ValueError, parsed))
            else:
                objects.append(parsed)
        self.image_names.append(name)
        self._records.append({
            "image_id": len(self._records) + 1, "path": image_path, "width": size[0], "height": size[1],
            "labels": torch.tensor([o[0] for o in objects], dtype=torch.int64),
            "difficult": torch.tensor([o[1] for o in objects], dtype=torch.bool),
            "boxes": torch.tensor([o[2] for o in objects], dtype=torch.float32).reshape(-1, 4),
        })
        return problems

    def __len__(self) -> int:
        return len(self._records)

    def load(self, index: int) -> tuple[Tensor, Target]:
        rec = self._records[index]
        image = _read_image(rec["path"])
        if tuple(image.shape[1:]) != (rec["height"], rec["width"]):
            raise ValueError(f"{rec['path']} is {image.shape[2]}x{image.shape[1]}, its XML says "
                             f"{rec['width']}x{rec['height']}")
        keep = ~rec["difficult"]
        return image, {"boxes": rec["boxes"][keep], "labels": rec["labels"][keep], "image_id": rec["image_id"]}

    def coco_dict(self) -> dict:
        images, annotations = [], []
        for rec in self._records:
            images.append({"id": rec["image_id"], "file_name": os.path.basename(rec["path"]),
                           "width": rec["width"], "height": rec["height"]})
            annotations += _annotations(rec["image_id"], rec["boxes"], rec["labels"], rec["difficult"],
                                        box_area(rec["boxes"]), len(annotations) + 1)
        return {"images": images, "annotations": annotations, "categories": self._coco_categories()}


# ---------------------------------------------------------------------------------------------------- scenes


class ScenesDetection(DetectionDataset):
    """The built-in Fashion-MNIST scenes (:func:`~paperzoo.detection.scenes.make_scenes`), served in memory.

    Images are the grey canvases repeated to 3 channels; targets also hold the instance ``masks``. Labels are the
    category ids 1..10 (Fashion-MNIST class + 1), image ids ``1..n``, both as in :meth:`Scenes.to_coco`; the
    ground truth's ``area`` is the mask's pixel count, also as there. Its ``segmentation`` is left out: bbox
    scoring does not read it and RLE-encoding thousands of masks costs seconds (instance masks, issue 17, will
    add it).
    ``seed`` draws the scenes; ``transform_seed`` the augmentation.

    ``fresh=True`` draws a new scene for every (epoch, index): scene ``index`` of epoch ``e`` is ``make_scenes(split,
    1, seed=derive_seed(seed, e, index, 4))``, made when it is loaded (~1.5 ms; nothing is kept, so ``n`` costs no
    memory), a function of the epoch like the augmentation, hence exactly resumable. An unbounded supply of
    training scenes; :meth:`coco_dict` (a fixed ground truth) is then not available.

    ``masks=False`` leaves the masks out of the targets and out of memory (16 KB an item: 1.1 GB for 20,000
    scenes), and the augmentation and the detector's resize do not resample them: detectors train on boxes.
    """

    def __init__(self, split: str, n: int, *, seed: int = 0, canvas: int = 128, min_items: int = 1,
                 max_items: int = 6, scale: tuple[float, float] = (0.6, 2.0), max_overlap: float = 0.3,
                 root: str | None = None, transform: PairTransform | None = None, transform_seed: int = 0,
                 fresh: bool = False, masks: bool = True) -> None:
        super().__init__(transform, transform_seed)
        self.split, self.n, self.seed, self.fresh, self.masks = split, n, seed, fresh, masks
        self._scene_args = {"canvas": canvas, "min_items": min_items, "max_items": max_items, "scale": scale,
                            "max_overlap": max_overlap, "root": root}
        # fresh: one scene checks the arguments and gives the categories
        self.scenes = make_scenes(split, 1 if fresh else n, seed=seed, **self._scene_args)
        if not masks:
            self.scenes.masks = []
        self.categories = [BACKGROUND, *self.scenes.categories]
        self.cat_ids = list(range(1, len(self.categories)))

    def __len__(self) -> int:
        return self.n

    def load(self, index: int) -> tuple[Tensor, Target]:
        s, k = self.scenes, index
        if self.fresh:  # this epoch's scene `index`
            s, k = make_scenes(self.split, 1, seed=derive_seed(self.seed, self.epoch, index, _FRESH_SCENE),
                               **self._scene_args), 0
        image = s.images[k].float().div_(255).expand(3, -1, -1).contiguous()  # (1, H, W) -> (3, H, W)
        target = {"boxes": s.boxes[k].clone(), "labels": s.labels[k].clone(), "image_id": index + 1}
        return image, ({**target, "masks": s.masks[k].clone()} if self.masks else target)

    def coco_dict(self) -> dict:
        if self.fresh or not self.masks:
            raise ValueError("scenes made with fresh=True (new every epoch) or masks=False (the areas are the "
                             "masks') have no COCO ground truth")
        s = self.scenes
        height, width = s.images.shape[-2:]
        images, annotations = [], []
        for i in range(len(s)):
            images.append({"id": i + 1, "file_name": f"{i + 1:06d}.png", "width": width, "height": height})
            # numpy's single-threaded count: torch's threaded reduction of small masks stalls on busy cores
            areas = torch.from_numpy(np.count_nonzero(s.masks[i].numpy(), axis=(1, 2)))
            annotations += _annotations(i + 1, s.boxes[i], s.labels[i], torch.zeros(len(areas), dtype=torch.bool),
                                        areas, len(annotations) + 1)
        return {"images": images, "annotations": annotations, "categories": self._coco_categories()}


# ---------------------------------------------------------------------------------------------------- batching


def collate(batch: Sequence[tuple[Tensor, Target]]) -> tuple[list[Tensor], list[Target]]:
    """``(list of images, list of targets)``: sizes differ, so nothing is stacked (the detector pads)."""
    return [image for image, _ in batch], [target for _, target in batch]


def pad_images(images: Sequence[Tensor], size_divisible: int = 1, fill: float = 0.0
               ) -> tuple[Tensor, list[tuple[int, int]]]:
    """Pad ``(C, H_i, W_i)`` images at the bottom and right into one ``(B, C, H, W)`` tensor, ``H`` and ``W`` the
    largest sizes rounded up to a multiple of ``size_divisible``; also returns each image's ``(H_i, W_i)``."""
    if not images:
        raise ValueError("pad_images needs at least one image")
    sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
    height = -(-max(h for h, _ in sizes) // size_divisible) * size_divisible  # ceil to a multiple
    width = -(-max(w for _, w in sizes) // size_divisible) * size_divisible
    batch = images[0].new_full((len(images), images[0].shape[0], height, width), fill)
    for b, (im, (h, w)) in enumerate(zip(images, sizes)):
        batch[b, :, :h, :w] = im
    return batch, sizes
