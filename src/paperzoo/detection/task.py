"""Object detection as a :class:`paperzoo.train.task.Task`: the same trainer, checkpoints and resume as classification.

A config with ``task: detection`` trains any registered detector (:func:`paperzoo.detection.registry.
create_detector`: Faster R-CNN, Fast R-CNN, R-CNN) on

* ``data.dataset: scenes`` — the built-in Fashion-MNIST scenes (:mod:`paperzoo.detection.scenes`), generated in
  memory: ``n_train`` scenes from the train items, ``n_val`` from the test items (so the metrics are ``test_*``);
* ``coco`` — a COCO-format directory: ``root/instances_<split>.json`` or ``root/annotations/instances_<split>.json``
  with the images under ``root/<split>/`` (the layout of COCO itself and of ``Scenes.to_coco``);
* ``voc`` — a Pascal VOC directory (``Annotations/``, ``JPEGImages/``, ``ImageSets/Main/<split>.txt``).

A batch is a pair of lists (images, targets), as every detector takes it; the loss is the sum of the detector's
losses (Faster R-CNN: RPN objectness + RPN boxes + classifier + box regression, Ren et al. 2015 Eq. 1 and
Girshick 2015 Eq. 1), each also logged. Evaluation runs the detector on the held-out split and scores it with
pycocotools' COCOeval (:mod:`paperzoo.detection.coco_eval`): ``<split>_AP`` picks the best checkpoint.

The order is a function of (seed, epoch) and each image's flip (probability ``data.hflip``) of (seed, epoch,
index), so a run resumes exactly (:class:`DetectionLoader`). Using a run: :func:`load_detector`,
:func:`evaluate_run`, :func:`detect_files`, :func:`rpn_proposals`. ``model.pretrained`` starts a detector's backbone
from a classifier (:func:`paperzoo.weights.load_backbone`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn
from torch import Tensor

from paperzoo.data.loader import derive_seed
from paperzoo.data.streaming import StreamingLoader
from paperzoo.train.config import (
    ConfigError,
    ModelConfig,
    OptimConfig,
    RunConfig,
    SchedConfig,
    TrainConfig,
    check_fields,
)
from paperzoo.train.distributed import DistInfo, all_gather_object, broadcast_object
from paperzoo.train.task import Task, register_task

__all__ = ["DetectionConfig", "DetectionDataConfig", "DetectionLoader", "DetectionTask", "DetectorCheckpoint",
           "build_dataset", "detect_files", "evaluate_run", "load_detector", "predict_detections",
           "rpn_proposals", "selective_search_proposals"]


@dataclass
class DetectionDataConfig:
    dataset: Literal["scenes", "coco", "voc"] = "scenes"
    root: str | None = None  # coco / voc: the dataset directory
    train: str = "train"  # coco: split name (instances_<train>.json, images in root/<train>/); voc: image set
    val: str = "val"  # the split evaluated after each epoch
    n_train: int = 4000  # scenes: training scenes (from Fashion-MNIST's train items)
    n_val: int = 500  # scenes: evaluation scenes (from the test items)
    canvas: int = 128  # scenes: side of a scene in pixels
    batch_size: int = 8  # images per optimizer step (all DDP ranks together)
    eval_batch_size: int = 16
    hflip: float = 0.5  # probability of a horizontal flip of a training image (its boxes move with it)
    #: YOLO's augmentation of training images (Redmon et al. 2016, Sec. 2.2; off at 0 and 1): scaling by up to
    #: +-scale_jitter and translation by up to +-translate of the image size (boxes move with the pixels, clipped;
    #: a box less than 25% inside is dropped), exposure and saturation (HSV) by up to these factors
    scale_jitter: float = 0.0
    translate: float = 0.0
    exposure: float = 1.0
    saturation: float = 1.0
    #: scenes: new training scenes every epoch (a function of the epoch and index: resumable), n_train per epoch
    fresh_scenes: bool = False
    num_workers: int = 0  # DataLoader worker processes decoding images (coco / voc)
    skip_invalid: bool = False  # coco / voc: drop bad annotations with a warning instead of stopping
    #: coco: labels 1..C in category order, or the raw category ids (torchvision's COCO checkpoints: 91 classes)
    labels: Literal["contiguous", "category_id"] = "contiguous"
    #: where region proposals come from: the detector's own RPN, or selective search computed once per image
    #: (R-CNN and Fast R-CNN need it; Faster R-CNN can take it too, replacing its RPN)
    proposals: Literal["rpn", "selective_search"] = "rpn"
    ss_mode: Literal["fast", "quality"] = "fast"
    ss_upscale: float = 1.0  # selective search on the image enlarged this much (finds small items; slower)
    #: directory caching the selective-search proposals of each split (reused by later runs and resumes)
    proposal_cache: str | None = None

    def __post_init__(self) -> None:
        check_fields(self, "data", n_train="count", n_val="count", canvas="count", batch_size="count",
                     eval_batch_size="count", hflip="probability", num_workers="non_negative",
                     ss_upscale="positive", scale_jitter="fraction", translate="probability")
        for name in ("exposure", "saturation"):
            if not 1 <= getattr(self, name) < float("inf"):
                raise ConfigError(f"data.{name}: must be a factor >= 1 (1: off), got {getattr(self, name)!r}")
        if self.fresh_scenes and self.dataset != "scenes":
            raise ConfigError(f"data.fresh_scenes: only the scenes are generated, not dataset {self.dataset!r}")
        if self.dataset != "scenes" and not self.root:
            raise ConfigError(f"data.root: dataset {self.dataset!r} needs its directory (data.root=PATH)")


@dataclass
class DetectionConfig:
    task: Literal["detection"] = "detection"
    #: a registered detector (``paperzoo models --detectors``) and its builder's arguments
    model: ModelConfig = field(default_factory=lambda: ModelConfig(name="fasterrcnn_resnet18_fpn"))
    data: DetectionDataConfig = field(default_factory=DetectionDataConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(name="sgd", lr=0.02, weight_decay=1e-4))
    sched: SchedConfig = field(default_factory=SchedConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)


# ------------------------------------------------------------------------------------------------ data
def build_dataset(d: DetectionDataConfig, split: str, *, seed: int = 0) -> Any:
    """The dataset of one split (``"train"`` or ``"val"``) of a config's data section; the training split flips
    images with probability ``d.hflip`` and applies YOLO's scale / translation / exposure / saturation jitter where
    set, every draw seeded by ``seed``, the epoch and the index. With
    ``d.proposals == "selective_search"`` each target also holds its image's ``"proposals"``."""
    ds = _base_dataset(d, split, seed=seed)
    if d.proposals == "selective_search":
        return WithProposals(ds, selective_search_proposals(ds, d, split))
    return ds


def _base_dataset(d: DetectionDataConfig, split: str, *, seed: int = 0) -> Any:
    from . import augment as A
    from . import data as D

    kw: dict[str, Any] = {}
    steps: list[Any] = []  # the training split's augmentation, drawn from one generator in this order
    if split == "train" and d.hflip > 0:
        steps.append(A.RandomHorizontalFlip(d.hflip))
    if split == "train" and (d.scale_jitter > 0 or d.translate > 0):
        steps.append(A.RandomScaleTranslate(d.scale_jitter, d.translate))
    if split == "train" and (d.exposure != 1 or d.saturation != 1):
        steps.append(A.RandomExposureSaturation(d.exposure, d.saturation))
    if steps:
        kw = {"transform": steps[0] if len(steps) == 1 else A.Compose(steps), "transform_seed": seed}
    if d.dataset == "scenes":  # scenes seeds differ per split; their items come from different splits anyway
        train = split == "train"
        # training: boxes only (the masks cost memory and resampling); evaluation: masks give the COCO areas
        return D.ScenesDetection("train" if train else "test", d.n_train if train else d.n_val, canvas=d.canvas,
                                 seed=0 if train else 1, fresh=train and d.fresh_scenes, masks=not train, **kw)
    name = d.train if split == "train" else d.val
    root = Path(d.root)
    if d.dataset == "voc":
        return D.VOCDetection(root, name, skip_invalid=d.skip_invalid, **kw)
    ann = next((p for p in (root / f"instances_{name}.json", root / "annotations" / f"instances_{name}.json")
                if p.is_file()), None)
    if ann is None:
        raise FileNotFoundError(f"{root}: no instances_{name}.json (nor annotations/instances_{name}.json)")
    return D.CocoDetection(root / name, ann, skip_invalid=d.skip_invalid, labels=d.labels, **kw)


class WithProposals(torch.utils.data.Dataset):
    """A detection dataset whose targets also hold ``"proposals"`` (P, 4) xyxy, moved by the same flips."""

    def __init__(self, base: Any, proposals: Sequence[Tensor]) -> None:
        if len(proposals) != len(base):
            raise ValueError(f"{len(proposals)} proposal sets for {len(base)} images")
        self.base, self.proposals = base, list(proposals)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Any]]:
        image, target = self.base.load(i)
        target = {**target, "proposals": self.proposals[i]}
        b = self.base
        return b.transform(image, target, b.generator(i)) if b.transform else (image, target)

    def __getattr__(self, name: str) -> Any:  # categories, coco_gt, label_to_cat, set_epoch, ...
        return getattr(self.__dict__["base"], name)


def selective_search_proposals(dataset: Any, d: DetectionDataConfig, split: str) -> list[Tensor]:
    """Selective search (:mod:`.selective_search`) on every image of ``dataset``, or its cached result
    (``d.proposal_cache/<split>.safetensors``, keyed by the settings and the number of images)."""
    import sys
    import time

    from safetensors.torch import load_file, save

    from paperzoo.train.checkpoint import atomic_write_bytes

    from .selective_search import selective_search

    cache = None
    if d.proposal_cache:
        tag = f"{d.dataset}-{split}-{len(dataset)}-{d.ss_mode}-x{d.ss_upscale:g}"
        cache = Path(d.proposal_cache) / f"{tag}.safetensors"
        if cache.is_file():
            found = load_file(cache)
            return [found[str(i)] for i in range(len(dataset))]
    t0, out = time.perf_counter(), []
    for i in range(len(dataset)):
        image, _ = dataset.load(i)
        out.append(selective_search(image, mode=d.ss_mode, upscale=d.ss_upscale))
    seconds = time.perf_counter() - t0
    print(f"paperzoo: selective search ({d.ss_mode}) on {len(dataset)} {split} images: "
          f"{sum(map(len, out)) / max(len(out), 1):.0f} proposals per image, {seconds / max(len(out), 1):.3f} s "
          f"per image", file=sys.stderr)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(cache, save({str(i): p.contiguous() for i, p in enumerate(out)}))
    return out


class DetectionLoader(StreamingLoader):
    """Batches ``(images, targets)`` (two lists) of a map-style detection dataset, seeded and resumable.

    The order, the DDP sharding and the resume position are :class:`StreamingLoader`'s; the dataset's own
    augmentation is a function of (its seed, the epoch, the index) (:class:`~paperzoo.detection.data.
    DetectionDataset`), so a resumed epoch repeats the same flips.
    """

    def __init__(self, dataset: Any, batch_size: int, *, seed: int, device: torch.device | str,
                 num_workers: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1) -> None:
        super().__init__(dataset, batch_size, seed=seed, transform=None, device=device, num_workers=num_workers,
                         shuffle=shuffle, rank=rank, world_size=world_size)

    def __iter__(self) -> Iterator[tuple[list[Tensor], list[dict[str, Tensor]]]]:
        from torch.utils.data import DataLoader

        from .data import collate

        order = self._order()[self.cursor.next_start * self.batch_size:].tolist()  # the samples not yet consumed
        self.dataset.set_epoch(self.epoch)  # before the workers start: each gets a copy of the dataset
        # its own generator: a DataLoader draws its workers' base seed from the global RNG otherwise, which
        # would shift the RPN / RoI samplers' draws of a resumed run against an uninterrupted one
        dl = DataLoader(self.dataset, batch_size=self.batch_size, sampler=order, num_workers=self.num_workers,
                        collate_fn=collate, generator=torch.Generator().manual_seed(derive_seed(self.seed, self.epoch)))
        for (images, targets), _ in zip(dl, self.cursor.positions(len(self))):
            yield ([im.to(self.device) for im in images],
                   [{k: v.to(self.device) for k, v in t.items() if isinstance(v, Tensor)} for t in targets])


# ------------------------------------------------------------------------------------------------ inference
@torch.no_grad()
def predict_detections(model: nn.Module, dataset: Any, indices: Sequence[int], batch_size: int = 16,
                       device: torch.device | str = "cpu") -> dict[int, dict[str, Tensor]]:
    """Run ``model`` (eval mode) over ``dataset[indices]``: image_id -> {boxes (xyxy), scores, labels} on the CPU."""
    was_training = model.training
    model.eval()
    out: dict[int, dict[str, Tensor]] = {}
    for start in range(0, len(indices), batch_size):
        items = [dataset[i] for i in indices[start:start + batch_size]]
        proposals = [t["proposals"].to(device) for _, t in items] if "proposals" in items[0][1] else None
        dets = model([im.to(device) for im, _ in items], proposals=proposals)
        for (_, t), det in zip(items, dets):
            out[int(t["image_id"])] = {k: v.cpu() for k, v in det.items()}
    model.train(was_training)
    return out


# ------------------------------------------------------------------------------------------------ the task
@register_task
class DetectionTask(Task):
    """Train a registered detector on COCO / VOC / Fashion-MNIST-scenes data, scored by COCO AP."""

    name, config_type = "detection", DetectionConfig
    primary_metric, higher_is_better = "val_AP", True  # test_AP on the scenes' test split (set in __init__)
    resume_command = "paperzoo detect train"

    def __init__(self, cfg: DetectionConfig, dist: DistInfo | None = None) -> None:
        self.cfg, self.dist = cfg, dist or DistInfo()
        d, world = cfg.data, self.dist.world_size
        if d.batch_size % world:
            raise ValueError(f"data.batch_size={d.batch_size} is not divisible by the {world} DDP processes")
        self.train_set = build_dataset(d, "train", seed=cfg.train.seed)
        self.val_set = build_dataset(d, "val")
        if list(self.train_set.categories) != list(self.val_set.categories):
            raise ValueError("the training and evaluation splits have different categories")
        self.categories = list(self.train_set.categories)  # [0] is "__background__"
        self.split = "test" if d.dataset == "scenes" else "val"  # honest metric names, as classification's
        self.primary_metric = f"{self.split}_AP"
        self.train_loader = DetectionLoader(self.train_set, d.batch_size // world, seed=cfg.train.seed,
                                            device=self.dist.device, num_workers=d.num_workers,
                                            rank=self.dist.rank, world_size=world)

    def model_args(self) -> dict[str, Any]:
        return {"num_classes": len(self.categories), **self.cfg.model.args}

    def build_model(self) -> nn.Module:
        from .rcnn import ProposalDetector
        from .registry import create_detector

        try:
            model = create_detector(self.cfg.model.name, **self.model_args())
        except TypeError as e:  # an argument of another detector's recipe (e.g. anchor_sizes for R-CNN)
            raise ValueError(f"model.args do not fit {self.cfg.model.name}: {e}") from None
        if isinstance(model, ProposalDetector) and self.cfg.data.proposals == "rpn":
            raise ValueError(f"{self.cfg.model.name} classifies given regions and has no RPN: "
                             "set data.proposals=selective_search")
        return self.start_backbone(model)

    def train_step(self, model: nn.Module, batch: Any) -> tuple[Tensor, dict[str, Tensor]]:
        images, targets = batch
        proposals = [t.pop("proposals") for t in targets] if "proposals" in targets[0] else None
        losses = model(images, targets, proposals=proposals)
        # entries named loss* are optimized; others (e.g. RetinaNet's loss on easy negatives) are only logged
        loss = sum(v for k, v in losses.items() if k.startswith("loss"))
        n = torch.tensor(len(images))
        # the logger divides every sum by count: weight each loss by the batch size so it logs the mean
        return loss, {"count": n, **{k: v.detach() * n for k, v in losses.items()}}

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        from .coco_eval import evaluate_coco

        rank, world = self.dist.rank, self.dist.world_size
        mine = list(range(rank, len(self.val_set), world))
        preds = predict_detections(model, self.val_set, mine, self.cfg.data.eval_batch_size, self.dist.device)
        stats: dict[str, float] | None = None
        parts = all_gather_object(preds, self.dist)
        if self.dist.is_main:
            merged = {k: v for p in parts for k, v in p.items()}
            stats = evaluate_coco(self.val_set.coco_gt(), merged, label_to_cat=self.val_set.label_to_cat)
        stats = broadcast_object(stats, self.dist)
        return {f"{self.split}_{k}": float(v) for k, v in stats.items()}

    def metadata(self) -> dict[str, Any]:
        return {"task": "detection", "model": {"name": self.cfg.model.name, "args": self.model_args()},
                "categories": self.categories, "cat_ids": list(self.val_set.cat_ids),
                "data": asdict(self.cfg.data)}


# ------------------------------------------------------------------------------------------------ using a run
@dataclass
class DetectorCheckpoint:
    """A trained detector, its categories (``[0]`` is the background) and where it came from."""

    model: nn.Module
    meta: dict[str, Any]
    path: Path

    @property
    def categories(self) -> list[str]:
        return list(self.meta["categories"])


def load_detector(path: str | Path, which: str = "best", *, device: str | torch.device = "cpu") -> DetectorCheckpoint:
    """Rebuild the detector of a detection run directory, checkpoint directory or ``.safetensors`` file
    (``which``: "best", "final" or "last"; "best" falls back to "final"), in eval mode."""
    from paperzoo.train import checkpoint as ckpt
    from paperzoo.weights import load_state_dict_checked

    from .registry import create_detector

    weights = ckpt.find_weights(path, which)
    meta = ckpt.read_meta(weights)
    if meta.get("task") != "detection":
        raise ValueError(f"{weights} is not a paperzoo detection checkpoint (task={meta.get('task')!r})")
    model = create_detector(meta["model"]["name"], **meta["model"]["args"])
    load_state_dict_checked(model, ckpt.read_weights(weights), what=str(weights))
    return DetectorCheckpoint(model.to(device).eval(), meta, weights)


def read_image(path: str | Path) -> Tensor:
    """An image file as a float RGB tensor (3, H, W) in [0, 1] (grayscale is repeated to three channels)."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB")).copy()  # (H, W, 3) uint8
    return torch.from_numpy(rgb).permute(2, 0, 1).float().div_(255.0)  # (3, H, W)


def evaluate_run(path: str | Path, which: str = "best", *, overrides: Sequence[str] = (),
                 score_thresh: float | None = None, device: str | torch.device = "cpu",
                 rescore: str | Path | None = None, rescore_args: dict[str, Any] | None = None) -> dict[str, float]:
    """COCO metrics of a run's checkpoint on its evaluation split (the run's data section, plus ``overrides``
    such as ``data.n_val=1000`` or ``data.val=test2017``); ``score_thresh`` replaces the box head's minimum
    detection score (an inference setting: lower keeps more low-ranked detections, which can only add recall).
    ``rescore``: a classifier run that re-classifies the boxes (:mod:`.rescore`, settings ``rescore_args``)."""
    from paperzoo.train.config import apply_overrides, build_config

    from .coco_eval import evaluate_coco

    ck = load_detector(path, which, device=device)
    rescorer = _rescorer(rescore, ck, rescore_args, device)
    if score_thresh is not None:
        # two-stage detectors keep it in their box head, one-stage detectors on the model itself
        getattr(ck.model, "roi_heads", ck.model).score_thresh = score_thresh
    data = apply_overrides({"data": dict(ck.meta["data"])}, list(overrides))["data"]
    d = build_config(DetectionDataConfig, data, "data.")
    val = build_dataset(d, "val")
    if rescorer is None:
        preds = predict_detections(ck.model, val, range(len(val)), d.eval_batch_size, device)
    else:
        from .rescore import rescore_predictions

        preds = rescore_predictions(ck.model, rescorer, val, range(len(val)), d.eval_batch_size, device)
    return evaluate_coco(val.coco_gt(), preds, label_to_cat=val.label_to_cat)


def _rescorer(run: str | Path | None, ck: DetectorCheckpoint, settings: dict[str, Any] | None,
              device: str | torch.device) -> Any:
    """The :class:`.rescore.Rescorer` of a classifier run for ``ck``'s categories, or None without a run."""
    if run is None:
        return None
    from .rescore import load_rescorer

    return load_rescorer(run, ck.categories, device=device, **(settings or {}))


@torch.no_grad()
def detect_files(run: str | Path, images: Sequence[str | Path], out_dir: str | Path, *, which: str = "best",
                 score_thresh: float = 0.5, device: str | torch.device = "cpu", rescore: str | Path | None = None,
                 rescore_args: dict[str, Any] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Detect objects in image files: ``out_dir/<stem>.png`` with the boxes drawn and ``out_dir/detections.json``
    ({image path: [{"box": [x1, y1, x2, y2], "label", "category", "score"}, ...]}). Returns that mapping.
    ``rescore``: a classifier run that re-classifies the boxes (:mod:`.rescore`)."""
    from paperzoo.train.checkpoint import atomic_write_bytes
    from paperzoo.viz.detection import plot_detections

    from .rescore import rescore_detections

    ck = load_detector(run, which, device=device)
    rescorer = _rescorer(rescore, ck, rescore_args, device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, list[dict[str, Any]]] = {}
    for path in images:
        image = read_image(path)
        dets = ck.model([image.to(device)]) if rescorer is None else rescore_detections(ck.model, rescorer,
                                                                                          [image.to(device)])
        det = {k: v.cpu() for k, v in dets[0].items()}
        keep = det["scores"] >= score_thresh
        det = {k: v[keep] for k, v in det.items()}
        plot_detections(image, det, ck.categories, out_dir / f"{Path(path).stem}.png", title=str(path))
        written[str(path)] = [{"box": [round(c, 2) for c in b], "label": lab, "category": ck.categories[lab],
                               "score": round(s, 4)}
                              for b, lab, s in zip(det["boxes"].tolist(), det["labels"].tolist(),
                                                   det["scores"].tolist())]
    atomic_write_bytes(out_dir / "detections.json", (json.dumps(written, indent=1) + "\n").encode())
    return written


@torch.no_grad()
def rpn_proposals(model: nn.Module, image: Tensor) -> Tensor:
    """The RPN's proposals (P, 4) for one image (3, H, W), best first, in the image's own coordinates."""
    model.eval()
    images, _ = model.transform([image])
    features = model.backbone(images.tensors)
    boxes, _ = model.rpn(images, features)
    (h, w), (oh, ow) = images.image_sizes[0], image.shape[-2:]
    return boxes[0] * torch.tensor([ow / w, oh / h, ow / w, oh / h], device=boxes[0].device)
