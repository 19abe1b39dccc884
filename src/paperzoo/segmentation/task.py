"""Semantic segmentation as a :class:`paperzoo.train.task.Task`: the trainer, checkpoints and resume of every task.

A config with ``task: segmentation`` trains any registered segmenter (:func:`paperzoo.segmentation.registry.
create_segmenter`, e.g. ``fcn``) on

* ``data.dataset: scenes`` — the Fashion-MNIST scenes with semantic masks, generated in memory: ``n_train`` scenes
  from the train items, ``n_val`` from the test items (so the metrics are ``test_*``); the same scenes as the
  detection task's;
* ``coco`` — a COCO-format directory (``root/instances_<split>.json`` or ``root/annotations/instances_<split>.json``,
  images in ``root/<split>/``) whose annotations carry polygons or RLE;
* ``voc`` — a Pascal VOC directory (``ImageSets/Segmentation/<split>.txt``, ``JPEGImages/``,
  ``SegmentationClass/``).

Data formats: :mod:`.data`. A batch is ``(images (B, 3, H, W) normalised, masks (B, H, W))``; images of
different sizes are padded, their masks with the ignore index. The loss is the per-pixel cross-entropy over the
non-ignored pixels (Long et al. 2015, Sec. 3: "a per-pixel multinomial logistic loss"), plus 0.5 x the auxiliary
classifier's when the model returns ``"aux"`` (torchvision's reference weight). ``loss.class_weights`` balances the
classes by weighting the loss, which Sec. 4.3 names and PASCAL did not need ("about 3/4 are background"): each
pixel's loss is weighted by its class's weight and the sum divided by the weights' sum, as ``F.cross_entropy``'s
``weight`` does. Evaluation sums one confusion matrix over the held-out split (and over DDP ranks, an all-reduce):
``<split>_mIoU`` (:mod:`.metrics`) picks the best checkpoint; ``<split>_pixel_acc`` and ``<split>_loss`` are
logged beside it.

The order is a function of (seed, epoch) and each image's augmentation of (seed, epoch, index), so a run resumes
exactly (:class:`SegmentationLoader`). Using a run: :func:`load_segmenter`, :func:`evaluate_run`,
:func:`segment_files`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
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
from paperzoo.train.distributed import DistInfo, all_reduce_sum
from paperzoo.train.task import Task, register_task

from .data import IGNORE_INDEX

__all__ = ["AUX_LOSS_WEIGHT", "SegmentationConfig", "SegmentationDataConfig", "SegmentationLoader",
           "SegmentationLossConfig", "SegmentationTask", "SegmenterCheckpoint", "build_dataset", "evaluate_run",
           "load_segmenter", "predict_masks", "segment_files", "segmentation_loss"]

#: weight of the auxiliary classifier's loss (torchvision's segmentation reference, train.py: 0.5)
AUX_LOSS_WEIGHT = 0.5
_IMAGENET_MEAN, _IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


@dataclass
class SegmentationDataConfig:
    dataset: Literal["scenes", "coco", "voc"] = "scenes"
    root: str | None = None  # coco / voc: the dataset directory
    train: str = "train"  # coco: split name (instances_<train>.json, images in root/<train>/); voc: image set
    val: str = "val"  # the split evaluated after each epoch
    n_train: int = 4000  # scenes: training scenes (from Fashion-MNIST's train items)
    n_val: int = 500  # scenes: evaluation scenes (from the test items)
    canvas: int = 128  # scenes: side of a scene in pixels
    batch_size: int = 8  # images per optimizer step (all DDP ranks together)
    eval_batch_size: int = 16
    size: int | None = None  # resize every image's short side to this first (training and evaluation)
    scale: tuple[float, float] = (1.0, 1.0)  # training: random rescale by a factor in [low, high]
    crop: int | None = None  # training: random square crop, padded with the ignore index where the image is smaller
    crop_foreground: float = 0.0  # probability that a crop is centred on a random foreground pixel (nnU-Net's)
    hflip: float = 0.5  # training: probability of a horizontal flip of image and mask
    num_workers: int = 0  # DataLoader worker processes decoding images (coco / voc)
    skip_invalid: bool = False  # coco: drop bad annotations with a warning instead of stopping
    labels: Literal["contiguous", "category_id"] = "contiguous"  # coco: labels 1..C, or the raw category ids
    mean: tuple[float, float, float] = tuple(_IMAGENET_MEAN)  # normalisation of the [0, 1] RGB input
    std: tuple[float, float, float] = tuple(_IMAGENET_STD)

    def __post_init__(self) -> None:
        check_fields(self, "data", n_train="count", n_val="count", canvas="count", batch_size="count",
                     eval_batch_size="count", size="count", scale="positive", crop="count", hflip="probability",
                     num_workers="non_negative", std="positive", crop_foreground="probability")
        if self.scale[0] > self.scale[1]:
            raise ConfigError(f"data.scale: must be [low, high] with low <= high, got {list(self.scale)}")
        if self.dataset != "scenes" and not self.root:
            raise ConfigError(f"data.root: dataset {self.dataset!r} needs its directory (data.root=PATH)")


@dataclass
class SegmentationLossConfig:
    #: one weight per class, background first (FCN Sec. 4.3's class balancing); ``None``: every pixel counts alike
    class_weights: list[float] | None = None

    def __post_init__(self) -> None:
        check_fields(self, "loss", class_weights="non_negative")
        if self.class_weights is not None and not any(w > 0 for w in self.class_weights):
            raise ConfigError(f"loss.class_weights: at least one must be positive, got {self.class_weights}")


@dataclass
class SegmentationConfig:
    task: Literal["segmentation"] = "segmentation"
    #: a registered segmenter (``paperzoo.segmentation.registry.segmenter_names()``) and its builder's arguments
    model: ModelConfig = field(default_factory=lambda: ModelConfig(name="fcn"))
    data: SegmentationDataConfig = field(default_factory=SegmentationDataConfig)
    loss: SegmentationLossConfig = field(default_factory=SegmentationLossConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(name="sgd", lr=0.02, weight_decay=1e-4))
    sched: SchedConfig = field(default_factory=SchedConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)


# ------------------------------------------------------------------------------------------------ data
def build_dataset(d: SegmentationDataConfig, split: str, *, seed: int = 0) -> Any:
    """The dataset of one split (``"train"`` or ``"val"``); the training split is augmented (``scale``, ``crop``
    with ``crop_foreground``, ``hflip``) with draws seeded by ``seed``, the epoch and the index; both are resized
    to ``size`` if set."""
    from . import data as D

    steps: list[Any] = [D.Resize(d.size)] if d.size else []
    if split == "train":
        steps += [D.RandomScale(*d.scale)] if tuple(d.scale) != (1.0, 1.0) else []
        steps += [D.RandomCrop(d.crop, d.crop_foreground)] if d.crop else []
        steps += [D.RandomHorizontalFlip(d.hflip)] if d.hflip > 0 else []
    kw: dict[str, Any] = {"transform": D.Compose(steps), "transform_seed": seed} if steps else {}
    if d.dataset == "scenes":  # the detection task's seeds: the same scenes
        train = split == "train"
        return D.ScenesSegmentation("train" if train else "test", d.n_train if train else d.n_val,
                                    canvas=d.canvas, seed=0 if train else 1, **kw)
    name = d.train if split == "train" else d.val
    root = Path(d.root)
    if d.dataset == "voc":
        return D.VOCSegmentation(str(root), name, **kw)
    ann = next((p for p in (root / f"instances_{name}.json", root / "annotations" / f"instances_{name}.json")
                if p.is_file()), None)
    if ann is None:
        raise FileNotFoundError(f"{root}: no instances_{name}.json (nor annotations/instances_{name}.json)")
    return D.CocoSegmentation(str(root / name), str(ann), skip_invalid=d.skip_invalid, labels=d.labels, **kw)


class SegmentationLoader(StreamingLoader):
    """Batches ``(images (B, 3, H, W), masks (B, H, W))`` of a segmentation dataset, normalised, seeded, resumable.

    The order, DDP sharding and resume position are :class:`StreamingLoader`'s (``shuffle=False``: rank r reads
    items r, r + world, ... once each, for evaluation); the augmentation is the dataset's, a function of (its
    seed, the epoch, the index), so a resumed epoch repeats the same flips and crops.
    """

    def __init__(self, dataset: Any, batch_size: int, *, seed: int, device: torch.device | str,
                 mean: Sequence[float], std: Sequence[float], num_workers: int = 0, shuffle: bool = True,
                 rank: int = 0, world_size: int = 1, channels_last: bool = False) -> None:
        super().__init__(dataset, batch_size, seed=seed, transform=None, device=device, num_workers=num_workers,
                         shuffle=shuffle, rank=rank, world_size=world_size, channels_last=channels_last)
        self.mean = torch.tensor(mean, device=self.device).view(1, -1, 1, 1)  # (1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, -1, 1, 1)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        from torch.utils.data import DataLoader

        from .data import collate

        order = self._order()[self.cursor.next_start * self.batch_size:].tolist()  # the samples not yet consumed
        self.dataset.set_epoch(self.epoch)  # before the workers start: each gets a copy of the dataset
        # its own generator, not the global RNG's draw: a resumed run must not shift the model's random stream
        dl = DataLoader(self.dataset, batch_size=self.batch_size, sampler=order, num_workers=self.num_workers,
                        collate_fn=collate, generator=torch.Generator().manual_seed(derive_seed(self.seed, self.epoch)))
        for (x, y), _ in zip(dl, self.cursor.positions(len(self))):
            x = (x.to(self.device) - self.mean) / self.std
            yield (x.contiguous(memory_format=torch.channels_last) if self.channels_last else x), y.to(self.device)


def segmentation_loss(out: dict[str, Tensor], target: Tensor, class_weights: Tensor | None = None
                      ) -> dict[str, Tensor]:
    """Per-pixel cross-entropy of ``out["out"]`` (and ``out["aux"]``) against ``target``, ignoring 255:
    ``{"loss_out", "loss_aux"?}``, each a mean over the scored pixels (0 if none: an all-ignored crop), weighted
    by ``class_weights`` (K,) of each pixel's true class if given: sum(w_y * loss) / sum(w_y)."""
    keep = target != IGNORE_INDEX
    if class_weights is None:
        scored = keep.sum().clamp(min=1)
    else:  # the sum of the scored pixels' weights; the ignored ones index the 0 appended at the end
        w = F.pad(class_weights.float(), (0, 1))  # (K + 1,)
        scored = w[torch.where(keep, target, len(class_weights))].sum().clamp(min=1e-12)
    return {f"loss_{k}": F.cross_entropy(out[k].float(), target, weight=class_weights, ignore_index=IGNORE_INDEX,
                                         reduction="sum") / scored
            for k in ("out", "aux") if k in out}


# ------------------------------------------------------------------------------------------------ the task
@register_task
class SegmentationTask(Task):
    """Train a registered segmenter on Fashion-MNIST-scenes / COCO / VOC masks, scored by mean IoU."""

    name, config_type = "segmentation", SegmentationConfig
    primary_metric, higher_is_better = "val_mIoU", True  # test_mIoU on the scenes' test split (set in __init__)
    resume_command = "paperzoo segment train"

    def __init__(self, cfg: SegmentationConfig, dist: DistInfo | None = None) -> None:
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
        self.primary_metric = f"{self.split}_mIoU"
        loader = dict(device=self.dist.device, mean=d.mean, std=d.std, num_workers=d.num_workers,
                      rank=self.dist.rank, world_size=world, channels_last=cfg.train.channels_last)
        self.train_loader = SegmentationLoader(self.train_set, d.batch_size // world, seed=cfg.train.seed, **loader)
        self.val_loader = SegmentationLoader(self.val_set, d.eval_batch_size, seed=0, shuffle=False, **loader)
        w = cfg.loss.class_weights
        if w is not None and len(w) != self.num_classes:
            raise ValueError(f"loss.class_weights has {len(w)} values but the dataset has {self.num_classes} classes "
                             f"(background first: {self.categories})")
        self.class_weights = torch.tensor(w, dtype=torch.float32, device=self.dist.device) if w else None

    @property
    def num_classes(self) -> int:
        return len(self.categories)

    def model_args(self) -> dict[str, Any]:
        return {"num_classes": self.num_classes, **self.cfg.model.args}

    def build_model(self) -> nn.Module:
        # model.pretrained: the backbone from a classifier run (DeepLab's transfer of an ImageNet network)
        return self.start_backbone(_create(self.cfg.model.name, self.model_args()))

    def train_step(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        x, y = batch
        losses = segmentation_loss(model(x), y, self.class_weights)
        loss = losses["loss_out"] + AUX_LOSS_WEIGHT * losses.get("loss_aux", 0.0)
        n = torch.tensor(x.shape[0], device=x.device)
        # the logger divides every sum by count: weight each loss by the batch size so it logs the mean
        return loss, {"count": n, **{k: v.detach() * n for k, v in losses.items()}}

    @torch.no_grad()
    def confusion(self, model: nn.Module) -> tuple[Tensor, float]:
        """The confusion matrix of this rank's share of the evaluation split summed over ranks, and the mean
        per-pixel cross-entropy (of ``"out"``) over every rank's scored pixels."""
        from .metrics import confusion_matrix

        was_training = model.training
        model.eval()
        autocast = torch.autocast(self.dist.device.type, dtype=torch.bfloat16,
                                  enabled=self.cfg.train.precision == "bf16")
        k, device = self.num_classes, self.dist.device
        cm = torch.zeros(k, k, dtype=torch.int64, device=device)
        sums = torch.zeros(2, dtype=torch.float64, device=device)  # (loss sum, scored pixels)
        self.val_loader.set_epoch(0)
        for x, y in self.val_loader:
            with autocast:
                logits = model(x)["out"].float()  # (B, K, H, W)
            cm += confusion_matrix(logits.argmax(1), y, k, IGNORE_INDEX)
            sums += torch.stack([F.cross_entropy(logits, y, ignore_index=IGNORE_INDEX, reduction="sum").double(),
                                 (y != IGNORE_INDEX).sum().double()])
        model.train(was_training)
        cm, sums = all_reduce_sum(cm, self.dist), all_reduce_sum(sums, self.dist)
        return cm.cpu(), float(sums[0] / sums[1].clamp(min=1))

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        from .metrics import mean_iou, pixel_accuracy

        cm, loss = self.confusion(model)
        p = self.split
        return {f"{p}_mIoU": mean_iou(cm), f"{p}_pixel_acc": pixel_accuracy(cm), f"{p}_loss": loss}

    def metadata(self) -> dict[str, Any]:
        d = self.cfg.data
        return {"task": "segmentation", "model": {"name": self.cfg.model.name, "args": self.model_args()},
                "categories": self.categories, "normalization": {"mean": list(d.mean), "std": list(d.std)},
                "data": asdict(d)}


def _create(name: str, args: dict[str, Any]) -> nn.Module:
    from .registry import UnknownSegmenterError, create_segmenter

    try:
        return create_segmenter(name, **args)
    except UnknownSegmenterError as e:  # a KeyError: one line, exit status 2 through the CLI
        raise ValueError(str(e)) from None
    except TypeError as e:  # an argument the builder does not take
        raise ValueError(f"model.args do not fit {name}: {e}") from None


# ------------------------------------------------------------------------------------------------ using a run
@dataclass
class SegmenterCheckpoint:
    """A trained segmenter, its categories (``[0]`` is the background), its input normalisation and its source."""

    model: nn.Module
    meta: dict[str, Any]
    path: Path

    @property
    def categories(self) -> list[str]:
        return list(self.meta["categories"])

    def normalize(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in [0, 1] -> the normalised input the model was trained on."""
        n = self.meta["normalization"]
        mean = images.new_tensor(n["mean"]).view(1, -1, 1, 1)
        return (images - mean) / images.new_tensor(n["std"]).view(1, -1, 1, 1)


def load_segmenter(path: str | Path, which: str = "best", *, device: str | torch.device = "cpu"
                   ) -> SegmenterCheckpoint:
    """Rebuild the segmenter of a segmentation run directory, checkpoint directory or ``.safetensors`` file
    (``which``: "best", "final" or "last"; "best" falls back to "final"), in eval mode."""
    from paperzoo.train import checkpoint as ckpt
    from paperzoo.weights import load_state_dict_checked

    weights = ckpt.find_weights(path, which)
    meta = ckpt.read_meta(weights)
    if meta.get("task") != "segmentation":
        raise ValueError(f"{weights} is not a paperzoo segmentation checkpoint (task={meta.get('task')!r})")
    model = _create(meta["model"]["name"], meta["model"]["args"])
    load_state_dict_checked(model, ckpt.read_weights(weights), what=str(weights))
    return SegmenterCheckpoint(model.to(device).eval(), meta, weights)


def evaluate_run(path: str | Path, which: str = "best", *, overrides: Sequence[str] = (),
                 device: str | torch.device = "cpu") -> dict[str, float]:
    """Metrics (:func:`~paperzoo.segmentation.metrics.segmentation_metrics`: mIoU, pixel_acc, mean_acc,
    ``IoU/<category>``) of a run's checkpoint on its evaluation split (the run's data section, plus
    ``overrides`` such as ``data.n_val=1000`` or ``data.val=val2017``), in float32."""
    from paperzoo.train.config import apply_overrides, build_config

    from .metrics import confusion_matrix, segmentation_metrics

    ck = load_segmenter(path, which, device=device)
    data = apply_overrides({"data": dict(ck.meta["data"])}, list(overrides))["data"]
    d = build_config(SegmentationDataConfig, data, "data.")
    val = build_dataset(d, "val")
    if list(val.categories) != ck.categories:
        raise ValueError(f"the evaluation data's categories differ from those {ck.path} was trained on")
    loader = SegmentationLoader(val, d.eval_batch_size, seed=0, device=device, mean=d.mean, std=d.std,
                                num_workers=d.num_workers, shuffle=False)
    k = len(ck.categories)
    cm = torch.zeros(k, k, dtype=torch.int64)
    with torch.no_grad():
        for x, y in loader:
            cm += confusion_matrix(ck.model(x)["out"].argmax(1), y, k, IGNORE_INDEX).cpu()
    return segmentation_metrics(cm, ck.categories)


@torch.no_grad()
def predict_masks(ck: SegmenterCheckpoint, images: Sequence[Tensor]) -> list[Tensor]:
    """Class maps int64 ``(H, W)`` of images ``(3, H, W)`` in [0, 1], at each image's own size (resized to the
    run's ``data.size`` first if it had one; the logits are resized back bilinearly before the argmax)."""
    size = ck.meta["data"].get("size")
    device = next(ck.model.parameters()).device
    out = []
    for image in images:
        h, w = image.shape[-2:]
        x = image[None].to(device)  # (1, 3, H, W)
        if size:
            s = size / min(h, w)
            x = F.interpolate(x, size=(max(1, round(h * s)), max(1, round(w * s))), mode="bilinear",
                              align_corners=False, antialias=s < 1)
        logits = ck.model(ck.normalize(x))["out"].float()  # (1, K, h', w')
        if logits.shape[-2:] != (h, w):
            logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
        out.append(logits.argmax(1)[0].cpu())
    return out


def segment_files(run: str | Path, images: Sequence[str | Path], out_dir: str | Path, *, which: str = "best",
                  device: str | torch.device = "cpu") -> dict[str, dict[str, float]]:
    """Segment image files: ``out_dir/<stem>_mask.png`` (a palette PNG whose pixel values are the classes, VOC's
    colours) and ``out_dir/<stem>.png`` (the mask drawn over the image). Returns {image path: {category:
    fraction of its pixels}} for the classes found, the largest first."""
    from paperzoo.detection.task import read_image
    from paperzoo.viz.segmentation import plot_segmentation, save_mask_png

    ck = load_segmenter(run, which, device=device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    found: dict[str, dict[str, float]] = {}
    for path in images:
        image = read_image(path)
        (mask,) = predict_masks(ck, [image])
        stem = Path(path).stem
        save_mask_png(mask, out_dir / f"{stem}_mask.png")
        plot_segmentation(image, mask, ck.categories, out_dir / f"{stem}.png", title=str(path))
        counts = torch.bincount(mask.flatten(), minlength=len(ck.categories))
        order = counts.argsort(descending=True)
        found[str(path)] = {ck.categories[c]: round(float(counts[c]) / mask.numel(), 4)
                            for c in order.tolist() if counts[c] > 0}
    return found
