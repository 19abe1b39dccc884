"""Image classification as a :class:`paperzoo.train.task.Task`: data, loss, accuracy, evaluation.

Small datasets (Fashion-MNIST, MNIST, CIFAR-10/100, the generated ``synthetic`` one) live in memory as uint8
tensors and are batched, augmented and normalised on tensors by :class:`paperzoo.data.loader.TensorLoader`
(order and augmentation are functions of (seed, epoch, batch), so training resumes exactly). ImageFolder
datasets stream from disk through :class:`paperzoo.data.streaming.StreamingLoader` (a ``DataLoader`` with
workers, with a resumable seeded sampler).

Validation: with ``data.val_fraction > 0`` a stratified part of the training set is held out and used to pick
the best checkpoint, and the evaluation metrics are ``val_loss``, ``val_acc``, ``val_top5``. With 0 (the default
for the in-memory datasets) the test set is evaluated after each epoch for the learning curves, and the metrics
say so: ``test_loss``, ``test_acc``, ``test_top5`` (:func:`eval_split`). The "best" checkpoint is then chosen
on the test set too: report the final weights, not the best, in that case.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from paperzoo.data.datasets import ImageDataset, load_image_dataset
from paperzoo.data.streaming import StreamingLoader

from .config import Config, check_matches_data, config_from_dict
from .distributed import DistInfo, all_reduce_sum
from .task import Task, register_task

#: weight of the auxiliary classifier's loss (Inception-v3, Sec. 8); 0.4 as in the torchvision reference recipe
AUX_LOSS_WEIGHT = 0.4

__all__ = ["ImageClassificationTask", "load_split", "make_synthetic", "build_model_from_meta", "eval_split"]


def eval_split(cfg: Config) -> str:
    """What the task evaluates on, which is the prefix of its metrics' names: "val" (a part of the training set
    held out by ``data.val_fraction``; ImageFolder always holds one out) or "test" (the test set)."""
    return "val" if cfg.data.val_fraction > 0 or cfg.data.dataset == "imagefolder" else "test"


def make_synthetic(split: str, size: int, image_size: int = 16, num_classes: int = 4,
                   in_chans: int = 1) -> ImageDataset:
    """A small generated dataset: each class is a fixed random pattern plus per-image noise and shifts.

    Deterministic (fixed seeds, independent of the training seed) and learnable within a few steps: used by
    the tests and for timing the loop without real data.
    """
    g = torch.Generator().manual_seed(1234)
    protos = torch.rand(num_classes, in_chans, image_size, image_size, generator=g)  # (K, C, H, W)
    g.manual_seed(1 if split == "train" else 2)
    labels = torch.randint(num_classes, (size,), generator=g)
    noise = torch.randn(size, in_chans, image_size, image_size, generator=g) * 0.25
    images = (protos[labels] + noise).clamp(0, 1).mul(255).round().to(torch.uint8)
    mean, std = (0.5,) * in_chans, (0.3,) * in_chans
    return ImageDataset(images, labels, [f"class{k}" for k in range(num_classes)], "synthetic", mean, std)


def load_split(dataset: str, split: str, *, root: str | None = None, synthetic_size: int = 512,
               image_size: int | None = None) -> ImageDataset:
    """One in-memory split ("train" / "test") of a named dataset, including the generated one; ``image_size``
    resizes every image once to that square (e.g. 28-pixel items to 48 pixels, to pretrain a detector's backbone
    at the scale of its objects)."""
    if dataset == "synthetic":
        return make_synthetic(split, synthetic_size, image_size or 16)
    if dataset == "scene_crops":  # R-CNN's region set: items of the Fashion-MNIST scenes, cropped as detected
        from paperzoo.detection.rescore import scene_crops

        return scene_crops(split, root)
    ds = load_image_dataset(dataset, split, root)
    return ds if image_size is None or (image_size,) * 2 == ds.image_size else ds.resized(image_size)


def _take(ds: ImageDataset, n: int | None, seed: int) -> ImageDataset:
    """A seeded random subset of ``n`` images (all when ``n`` is None or larger than the set)."""
    if n is None or n >= len(ds):
        return ds
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return ds.subset(idx)


@register_task
class ImageClassificationTask(Task):
    """Image classification on a registered model: cross-entropy family losses, accuracy, top-5."""

    name, config_type = "image_classification", Config
    primary_metric = "val_acc"  # "test_acc" for a task that evaluates on the test set (set in __init__)
    higher_is_better = True

    @classmethod
    def config_from_dict(cls, data: dict[str, Any]) -> Config:
        return config_from_dict(data)  # also checks the fields against each other

    def __init__(self, cfg: Config, dist: DistInfo | None = None) -> None:
        from paperzoo.data.loader import TensorLoader
        from paperzoo.data.transforms import build_eval_transform, build_train_transform

        from .losses import build_loss

        self.cfg, self.dist = cfg, dist or DistInfo()
        d, seed = cfg.data, cfg.train.seed
        world, rank = self.dist.world_size, self.dist.rank
        if d.batch_size % world:
            raise ValueError(f"data.batch_size={d.batch_size} is not divisible by the {world} DDP processes")
        self.streaming = d.dataset == "imagefolder"
        if self.streaming:
            from paperzoo.data.imagefolder import ImageFolderDataset

            kw = dict(val_fraction=d.val_fraction or 0.1, seed=seed, in_chans=d.in_chans)
            train = ImageFolderDataset(d.root, d.image_size or 224, "train", train_crop=d.train_crop, **kw)
            val = ImageFolderDataset(d.root, d.image_size or 224, "val", **kw)
            self.classes, self.mean, self.std = list(train.classes), tuple(train.mean), tuple(train.std)
            self.input_shape = (d.in_chans, train.image_size, train.image_size)
            self.dataset_name = "imagefolder"
        else:
            train = _take(load_split(d.dataset, "train", root=d.root, synthetic_size=d.synthetic_size,
                                     image_size=d.image_size), d.train_subset, seed)
            if d.val_fraction > 0:
                train, val = train.split(d.val_fraction, seed)
            else:
                val = _take(load_split(d.dataset, "test", root=d.root, synthetic_size=d.synthetic_size,
                                       image_size=d.image_size), d.test_subset, seed)
            self.classes, self.mean, self.std = list(train.classes), tuple(train.mean), tuple(train.std)
            self.input_shape = (train.in_chans, *train.image_size)
            self.dataset_name = train.name
        self.num_classes = len(self.classes)
        check_matches_data(cfg.model.args, classes=self.classes, input_shape=self.input_shape,
                           test_shape=None if self.streaming else (val.in_chans, *val.image_size))
        # mixup/cutmix targets stay unsmoothed here: the loss applies ε to soft targets too, so smoothing in both
        # places would apply it twice
        train_tf = build_train_transform(cfg.aug, self.mean, self.std, self.num_classes, label_smoothing=0.0)
        self.eval_tf = build_eval_transform(self.mean, self.std)
        per_rank = d.batch_size // world
        cl = cfg.train.channels_last
        if self.streaming:
            self.train_loader: Any = StreamingLoader(train, per_rank, seed=seed, transform=train_tf,
                                                     device=self.dist.device, num_workers=d.num_workers,
                                                     rank=rank, world_size=world, channels_last=cl)
            self._val_loader: Any = StreamingLoader(val, d.eval_batch_size, seed=seed, transform=self.eval_tf,
                                                    device=self.dist.device, num_workers=d.num_workers,
                                                    shuffle=False, rank=rank, world_size=world)
        else:
            self.train_loader = TensorLoader(train.images, train.labels, per_rank, shuffle=True, drop_last=True,
                                             seed=seed, transform=train_tf, device=self.dist.device,
                                             channels_last=cl, rank=rank, world_size=world)
            # evaluation shards are strided slices, without the wrap-around padding of the train sharding,
            # so the summed counts cover each validation image exactly once
            self._val_loader = TensorLoader(val.images[rank::world], val.labels[rank::world], d.eval_batch_size,
                                            shuffle=False, drop_last=False, transform=self.eval_tf,
                                            device=self.dist.device, channels_last=cl)
        self.val_size = len(val)
        self.eval_split = eval_split(cfg)
        self.primary_metric = f"{self.eval_split}_acc"
        self._check_low_res()
        weights = torch.tensor(cfg.loss.class_weights) if cfg.loss.class_weights else None
        if weights is not None and len(weights) != self.num_classes:
            raise ValueError(f"loss.class_weights has {len(weights)} values but the dataset has "
                             f"{self.num_classes} classes: {', '.join(self.classes)}")
        self.loss_fn = build_loss(cfg.loss.name, smoothing=cfg.loss.smoothing, gamma=cfg.loss.gamma,
                                  alpha=cfg.loss.alpha, class_weights=weights).to(self.dist.device)

    # ---- the Task interface
    def model_args(self) -> dict[str, Any]:
        return {"num_classes": self.num_classes, "in_chans": self.input_shape[0], **self.cfg.model.args}

    def build_model(self) -> nn.Module:
        from paperzoo.registry import create_model

        model = create_model(self.cfg.model.name, **self.model_args())
        m = self.cfg.model
        if m.pretrained and not self.resuming:  # a resumed run loads its own checkpoint over the model
            from paperzoo.weights import load_pretrained

            changes = load_pretrained(model, m.pretrained, m.pretrained_source)
            eps = getattr(getattr(model, "cfg", None), "bn_eps", None)
            if eps is not None:  # the converter gave the model its source's eps: record it, so rebuilds match
                m.args["bn_eps"] = eps
            if self.dist.is_main:  # the layers that did not load as they are, one line each
                print(f"paperzoo: starting from {m.pretrained} ({m.pretrained_source} weights)"
                      + "".join(f"\npaperzoo:   {line}" for line in changes), file=sys.stderr)
        return model

    def _check_low_res(self) -> None:
        a = self.cfg.aug
        if not (a.low_res_size and a.low_res_epochs):
            return
        size = min(self.input_shape[1:])
        if not 1 <= a.low_res_size < size:
            raise ValueError(f"aug.low_res_size must be between 1 and the image size {size} (exclusive), got "
                             f"{a.low_res_size}")

    def train_step(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        x, y = batch
        a = self.cfg.aug
        if a.low_res_size and self.train_loader.epoch < a.low_res_epochs:  # progressive resizing (AugConfig)
            fmt = torch.channels_last if self.cfg.train.channels_last else torch.contiguous_format
            x = F.interpolate(x, size=(a.low_res_size,) * 2, mode="bilinear", antialias=True,
                              align_corners=False).contiguous(memory_format=fmt)  # (B, C, s, s)
        out = model(x)
        if isinstance(out, tuple):  # Inception-v3 with aux_logits=True returns (logits, aux_logits) in training
            logits, aux = out
            loss = self.loss_fn(logits.float(), y) + AUX_LOSS_WEIGHT * self.loss_fn(aux.float(), y)
        else:
            logits = out  # (B, K)
            loss = self.loss_fn(logits.float(), y)
        hard = y.argmax(1) if y.dim() == 2 else y  # mixup/cutmix targets: the dominant class
        correct = (logits.argmax(1) == hard).sum()
        return loss, {"correct": correct, "count": torch.tensor(y.shape[0], device=y.device)}

    @torch.no_grad()
    def predict(self, model: nn.Module) -> tuple[Tensor, Tensor]:
        """Logits and labels of this rank's share of the validation set."""
        was_training = model.training
        model.eval()
        outs, labels = [], []
        autocast = torch.autocast(self.dist.device.type, dtype=torch.bfloat16,
                                  enabled=self.cfg.train.precision == "bf16")
        loader = self._val_loader
        loader.set_epoch(0)
        for x, y in loader:
            with autocast:
                outs.append(model(x).float())
            labels.append(y)
        model.train(was_training)
        return torch.cat(outs), torch.cat(labels)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        logits, y = self.predict(model)
        k = min(5, self.num_classes)
        top5 = (logits.topk(k, dim=1).indices == y[:, None]).any(1)
        sums = torch.stack([F.cross_entropy(logits, y, reduction="sum"), (logits.argmax(1) == y).sum().float(),
                            top5.sum().float(), torch.tensor(float(len(y)), device=y.device)]).double()
        loss, correct, correct5, n = all_reduce_sum(sums, self.dist).tolist()
        if n != self.val_size:  # a loader that pads or drops would make the accuracy wrong silently
            raise RuntimeError(f"evaluated {n:.0f} images but the validation set has {self.val_size}")
        p = self.eval_split  # honest names: val_* on a held-out split, test_* on the test set
        return {f"{p}_loss": loss / n, f"{p}_acc": correct / n, f"{p}_top5": correct5 / n}

    def metadata(self) -> dict[str, Any]:
        d = self.cfg.data
        return {"task": "image_classification",
                "model": {"name": self.cfg.model.name, "args": self.model_args()},
                "classes": self.classes, "normalization": {"mean": list(self.mean), "std": list(self.std)},
                "input_size": list(self.input_shape),
                "dataset": {"name": self.dataset_name, "root": d.root, "image_size": d.image_size,
                            "val_fraction": d.val_fraction, "seed": self.cfg.train.seed,
                            "in_chans": self.input_shape[0],
                            "synthetic_size": d.synthetic_size}}


def build_model_from_meta(meta: dict[str, Any]) -> nn.Module:
    """Rebuild the architecture a checkpoint was trained with (weights not loaded)."""
    from paperzoo.registry import create_model

    m = meta["model"]
    return create_model(m["name"], **m["args"])

