"""Using trained checkpoints: evaluation with metrics and TTA, ensembles, weight averaging, prediction.

* :func:`evaluate` - accuracy, top-5, macro-F1, per-class accuracy and the confusion matrix of one checkpoint
  on a dataset split, optionally with its EMA weights and test-time augmentation (TTA).
* :func:`ensemble` - averages the class probabilities of several checkpoints (architectures may differ; each
  model gets its own normalisation), with optional weights.
* :func:`average_checkpoints` - averages the *weights* of checkpoints of one architecture (e.g. the last few
  of a run, "checkpoint averaging" as in Vaswani et al. arXiv:1706.03762 Sec. 6.1) into a new checkpoint.
* :func:`predict_files` - top-k labels with probabilities for image files.
* :func:`load_run` - the one-call reload: the trained model of a run, ready to call.

TTA views are made on [0, 1] images before normalisation: ``flip`` adds the horizontal mirror, ``shift``
adds four translations by ~1/14 of the size (2 px at 28x28) with zero fill, like the training crop; with both,
every shift is also mirrored. Probabilities (softmax outputs) are averaged over the views.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from . import checkpoint as ckpt
from .allocator import retain_freed_memory

__all__ = [
    "EvalResult", "LoadedCheckpoint", "TTA_MODES", "average_checkpoints", "classification_metrics", "ensemble",
    "evaluate", "load_checkpoint", "load_run", "predict_files", "predict_probs", "tta_views", "write_report",
]

TTA_MODES = ("flip", "shift")


@dataclass
class LoadedCheckpoint:
    model: nn.Module
    meta: dict[str, Any]
    path: Path  # the weights file

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])


@dataclass
class EvalResult:
    metrics: dict[str, Any]
    out_dir: Path | None = None
    files: list[Path] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        """The scalar metrics (accuracy, top5, macro_f1, nll, n)."""
        return {k: v for k, v in self.metrics.items() if isinstance(v, int | float)}


def load_checkpoint(path: str | os.PathLike, *, which: str = "final", ema: bool = False,
                    device: str | torch.device = "cpu", fused: bool = False) -> LoadedCheckpoint:
    """Rebuild the model of a run directory / checkpoint directory / ``.safetensors`` file, in eval mode;
    ``fused``: with its BatchNorms folded into their convolutions (:func:`paperzoo.fuse`, inference only)."""
    from paperzoo.weights import load_state_dict_checked

    from .classification import build_model_from_meta

    weights = ckpt.find_checkpoint(path, which)
    meta = ckpt.read_meta(weights)
    if meta.get("task") != "image_classification":
        raise ValueError(f"{weights} is a {meta.get('task')!r} checkpoint, not an image classifier")
    model = build_model_from_meta(meta)
    load_state_dict_checked(model, ckpt.read_weights(weights, ema=ema), what=str(weights))
    model = model.to(device).eval()
    if fused:
        from paperzoo.deploy import fuse

        model = fuse(model, torch.randn(1, *meta["input_size"], generator=torch.Generator().manual_seed(0)).to(device))
    return LoadedCheckpoint(model, meta, weights)


TEXT_TASKS = ("translation", "language_model")


def load_run(path: str | os.PathLike, *, which: str = "final", ema: bool = False,
             device: str | torch.device = "cpu") -> nn.Module:
    """The trained model of a run directory, checkpoint directory or ``.safetensors`` file, in one call.

    The architecture is rebuilt from the checkpoint's metadata (model name and arguments) and the weights are
    loaded strictly. Works for image classifiers and for translation / language-model runs.

    Args:
        which: for a run directory, ``final`` (default, as ``paperzoo eval``; an unfinished run gives its
            newest checkpoint), ``best`` (best validation score) or ``last`` (newest resumable checkpoint).
        ema: load the EMA weights (runs trained with ``train.ema=true``).
        device: where to put the model.

    Returns:
        The model, in eval mode on ``device``, carrying what is needed to use it: ``model.meta`` (the
        checkpoint's metadata: model name and arguments, dataset, config, and for image classifiers the input
        size and the ``normalization`` mean/std that inputs must get, as ``predict_probs`` applies it) and
        ``model.checkpoint`` (the weights file). Image classifiers also have ``model.classes`` (the class names
        in output order); text models ``model.tokenizers`` ({"src", "tgt"} or {"lm"}).
    """
    weights = ckpt.find_checkpoint(path, which)
    meta = ckpt.read_meta(weights)
    if meta.get("task") in TEXT_TASKS:
        from paperzoo.text.tasks import load_text_checkpoint
        from paperzoo.weights import load_state_dict_checked

        text = load_text_checkpoint(weights, device=device)
        model = text.model
        if ema:  # the text loader reads the plain weights; the EMA copy sits beside them
            load_state_dict_checked(model, ckpt.read_weights(weights, ema=True), what=f"{weights} (EMA)")
        model.tokenizers = text.tokenizers
    else:  # an image classifier, or one clear error naming the checkpoint's task
        loaded = load_checkpoint(weights, ema=ema, device=device)
        model = loaded.model
        model.classes = loaded.classes
    model.meta, model.checkpoint = meta, weights
    return model


# ------------------------------------------------------------------------------------------------- data
def _eval_batches(meta: dict[str, Any], split: str, *, root: str | None, dataset: str | None, batch_size: int,
                  limit: int | None = None) -> tuple[list[str], int, Iterator[tuple[Tensor, Tensor]]]:
    """Class names, the number of images and an iterator of ([0, 1] float images (B, C, H, W), labels) of the
    split to evaluate."""
    from .classification import load_split

    d = dict(meta.get("dataset") or {})
    name = dataset or d.get("name")
    root = root if root is not None else d.get("root")
    if name == "imagefolder":
        from paperzoo.data.imagefolder import ImageFolderDataset

        ds = ImageFolderDataset(root, d.get("image_size") or 224, split="val" if split != "train" else "train",
                                val_fraction=d.get("val_fraction") or 0.1, seed=d.get("seed", 0),
                                in_chans=d.get("in_chans", 3))
        idx = list(range(len(ds) if limit is None else min(limit, len(ds))))
        dl = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, idx), batch_size=batch_size)

        def stream() -> Iterator[tuple[Tensor, Tensor]]:
            for x, y in dl:
                yield (x.float() / 255.0 if x.dtype == torch.uint8 else x.float()), y

        return list(ds.classes), len(idx), stream()
    if name is None:
        raise ValueError("the checkpoint does not name its dataset; pass dataset= (CLI: --dataset)")
    ds = load_split(name, "test" if split == "test" else "train", root=root,
                    synthetic_size=d.get("synthetic_size", 512), image_size=d.get("image_size"))
    if split == "val":  # the held-out part of the training set, as the run split it
        if not d.get("val_fraction"):
            raise ValueError("this run held out no validation split (data.val_fraction=0); use split='test'")
        _, ds = ds.split(d["val_fraction"], d.get("seed", 0))
    n = len(ds) if limit is None else min(limit, len(ds))

    def batches() -> Iterator[tuple[Tensor, Tensor]]:
        for i in range(0, n, batch_size):
            j = min(i + batch_size, n)
            yield ds.images[i:j].float() / 255.0, ds.labels[i:j]

    return list(ds.classes), n, batches()


def tta_views(x: Tensor, modes: Sequence[str] = ()) -> list[Tensor]:
    """The TTA views of a [0, 1] batch (B, C, H, W): identity, + mirror, + 4 shifts (+ mirrored shifts)."""
    unknown = set(modes) - set(TTA_MODES)
    if unknown:
        raise ValueError(f"unknown TTA mode(s) {sorted(unknown)}; valid: {', '.join(TTA_MODES)}")
    views = [x]
    if "shift" in modes:
        H, W = x.shape[-2:]
        s = max(1, round(min(H, W) / 14))
        padded = F.pad(x, (s, s, s, s))  # (B, C, H + 2s, W + 2s), zero fill like the training crop
        for dy, dx in ((-s, 0), (s, 0), (0, -s), (0, s)):
            views.append(padded[..., s + dy: s + dy + H, s + dx: s + dx + W])
    if "flip" in modes:
        views += [v.flip(-1) for v in views]
    return views


PRECISIONS = ("auto", "fp32", "bf16")
SCORES = ("accuracy", "top5", "macro_f1", "nll")  # the scalar metrics, as tables show them


def _inference_settings(meta: dict[str, Any], precision: str) -> tuple[bool, bool]:
    """(bf16 autocast?, channels_last?) for a checkpoint: ``auto`` = as it was trained (its saved config)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    train = (meta.get("config") or {}).get("train") or {}
    bf16 = train.get("precision") == "bf16" if precision == "auto" else precision == "bf16"
    return bf16, bool(train.get("channels_last"))


@torch.no_grad()
def predict_probs(model: nn.Module, x: Tensor, meta: dict[str, Any], tta: Sequence[str] = (),
                  device: str | torch.device = "cpu", precision: str = "auto") -> Tensor:
    """Softmax probabilities (B, K) of a [0, 1] batch, normalised as the model was trained, averaged over TTA.

    ``precision="auto"`` runs the model as it was trained: bf16 autocast for a bf16 run (as its end-of-epoch
    evaluations did; ~2.5x faster than fp32 on a CPU with bf16 instructions) and channels_last when it was
    trained so. ``fp32`` forces full precision.
    """
    norm = meta["normalization"]
    mean = torch.tensor(norm["mean"], device=device).view(1, -1, 1, 1)  # (1, C, 1, 1)
    std = torch.tensor(norm["std"], device=device).view(1, -1, 1, 1)
    bf16, channels_last = _inference_settings(meta, precision)
    dev = torch.device(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if channels_last:
        model.to(memory_format=torch.channels_last)  # in place; a no-op once converted
    x = x.to(dev)
    probs = x.new_zeros(())
    views = tta_views(x, tta)
    for v in views:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(((v - mean) / std).contiguous(memory_format=fmt))
        probs = probs + logits.float().softmax(-1)
    return probs / len(views)


# ---------------------------------------------------------------------------------------------- metrics
def classification_metrics(probs: Tensor, labels: Tensor, classes: Sequence[str]) -> dict[str, Any]:
    """Accuracy, top-5, macro-F1, NLL, per-class accuracy (recall) and the confusion matrix (true x pred)."""
    K, n = len(classes), labels.numel()
    pred = probs.argmax(1)
    confusion = torch.bincount(labels * K + pred, minlength=K * K).view(K, K)  # (true, pred)
    tp = confusion.diag().double()
    support, predicted = confusion.sum(1).double(), confusion.sum(0).double()
    recall = torch.where(support > 0, tp / support.clamp(min=1), torch.zeros_like(tp))
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12),
                     torch.zeros_like(tp))
    k = min(5, K)
    top5 = (probs.topk(k, dim=1).indices == labels[:, None]).any(1).double().mean().item()
    nll = -probs.gather(1, labels[:, None]).clamp(min=1e-12).log().mean().item()
    return {
        "n": n, "accuracy": (pred == labels).double().mean().item(), "top5": top5,
        "macro_f1": f1[support > 0].mean().item(), "nll": nll,
        "per_class": [{"class": c, "accuracy": recall[i].item(), "precision": precision[i].item(),
                       "f1": f1[i].item(), "support": int(support[i])} for i, c in enumerate(classes)],
        "confusion": confusion.tolist(),
    }


def write_report(metrics: dict[str, Any], classes: Sequence[str], out_dir: str | os.PathLike) -> list[Path]:
    """``metrics.json``, ``per_class.csv``, ``confusion.csv`` and ``confusion.png`` in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    with open(out / "per_class.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["class", "accuracy", "precision", "f1", "support"])
        w.writeheader()
        w.writerows(metrics["per_class"])
    with open(out / "confusion.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["true \\ predicted", *classes])
        for c, row in zip(classes, metrics["confusion"]):
            w.writerow([c, *row])
    from paperzoo.viz.curves import plot_confusion

    plot_confusion(out / "metrics.json", out / "confusion.png", classes=classes)
    return [out / n for n in ("metrics.json", "per_class.csv", "confusion.csv", "confusion.png")]


class EvalProgress:
    """``eval 2,560/10,000 images (26 %), ETA 14 s``, rewritten in place on a terminal's stderr.

    Silent when the stream is not a terminal (CI logs, files, ``| tee``: a result table is all they need) or
    for a single batch.
    """

    def __init__(self, total: int, batch_size: int, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        self.total, self.done, self.start = total, 0, time.perf_counter()
        self.on = total > batch_size and getattr(self.stream, "isatty", lambda: False)()

    def update(self, images: int) -> None:
        self.done += images
        if not self.on:
            return
        left = (time.perf_counter() - self.start) / self.done * (self.total - self.done)
        self.stream.write(f"\reval {self.done:,}/{self.total:,} images ({100 * self.done / self.total:.0f} %), "
                          f"ETA {left:.0f} s ")
        self.stream.flush()

    def close(self) -> None:
        if self.on:
            self.stream.write("\r" + " " * 60 + "\r")  # leave the terminal line clean for the result table
            self.stream.flush()


# --------------------------------------------------------------------------------------- entry points
def _run(members: list[tuple[LoadedCheckpoint, float]], *, split: str, root: str | None, dataset: str | None,
         tta: Sequence[str], batch_size: int, device: str | torch.device, limit: int | None,
         out_dir: str | os.PathLike | None, precision: str = "auto", progress: bool = False) -> EvalResult:
    if torch.device(device).type == "cpu":
        retain_freed_memory()  # TTA views of large batches: reuse freed blocks (allocator.py)
    first = members[0][0]
    classes, n, batches = _eval_batches(first.meta, split, root=root, dataset=dataset, batch_size=batch_size,
                                        limit=limit)
    for m, _ in members:
        if m.classes != classes:
            raise ValueError(f"{m.path} was trained on classes {m.classes}, the data has {classes}")
    total_w = sum(w for _, w in members)
    member_probs: list[list[Tensor]] = [[] for _ in members]  # (B, K) per batch, per member
    all_labels = []
    bar = EvalProgress(n, batch_size) if progress else None
    for x, y in batches:
        for i, (m, _) in enumerate(members):
            member_probs[i].append(predict_probs(m.model, x, m.meta, tta, device, precision).cpu())
        all_labels.append(y.cpu())
        if bar is not None:
            bar.update(len(y))
    if bar is not None:
        bar.close()
    labels = torch.cat(all_labels)
    probs = [torch.cat(p) for p in member_probs]
    ensemble_probs = sum(w * p for p, (_, w) in zip(probs, members)) / total_w
    metrics = classification_metrics(ensemble_probs, labels, classes)
    metrics.update(split=split, tta=list(tta), precision=precision,
                   fused=all(getattr(m.model, "is_fused", False) for m, _ in members),
                   checkpoints=[str(m.path) for m, _ in members],
                   weights=[w for _, w in members])
    if len(members) > 1:  # each member alone, to see what the ensemble adds
        metrics["members"] = [
            {"checkpoint": str(m.path), "weight": w,
             **{k: v for k, v in classification_metrics(p, labels, classes).items() if k in SCORES}}
            for p, (m, w) in zip(probs, members)]
    result = EvalResult(metrics)
    if out_dir is not None:
        result.out_dir = Path(out_dir)
        result.files = write_report(metrics, classes, out_dir)
    return result


def _parse_tta(tta: str | Sequence[str] | None) -> list[str]:
    if not tta:
        return []
    modes = [t.strip() for t in tta.split(",")] if isinstance(tta, str) else list(tta)
    tta_views(torch.zeros(1, 1, 4, 4), modes)  # validates the names
    return modes


def evaluate(path: str | os.PathLike, *, which: str = "final", ema: bool = False, split: str = "test",
             tta: str | Sequence[str] | None = None, dataset: str | None = None, root: str | None = None,
             batch_size: int = 256, device: str = "cpu", limit: int | None = None,
             out_dir: str | os.PathLike | None = None, precision: str = "auto", progress: bool = False,
             fused: bool = True) -> EvalResult:
    """Evaluate one checkpoint (run dir, checkpoint dir or .safetensors) on a split of its dataset.

    Args:
        which: for a run directory, ``final``, ``best`` or ``last``.
        ema: use the EMA weights saved next to the model weights.
        split: ``test``, ``val`` (the run's held-out part of train) or ``train``.
        tta: TTA modes, e.g. ``"flip,shift"``.
        dataset / root: evaluate on another dataset / directory than the one recorded in the checkpoint.
        limit: only the first ``limit`` images (quick checks).
        out_dir: write ``metrics.json``, ``per_class.csv``, ``confusion.csv`` and ``confusion.png`` there.
        precision: ``auto`` (as trained: bf16 autocast and channels_last for such runs), ``fp32`` or ``bf16``.
        progress: a one-line progress on stderr while evaluating, when stderr is a terminal.
        fused: fold the BatchNorms into their convolutions first (:func:`paperzoo.fuse`): the same predictions
            up to fp32 rounding, faster. ``False`` runs the model as it trained.
    """
    member = load_checkpoint(path, which=which, ema=ema, device=device, fused=fused)
    return _run([(member, 1.0)], split=split, root=root, dataset=dataset, tta=_parse_tta(tta),
                batch_size=batch_size, device=device, limit=limit, out_dir=out_dir, precision=precision,
                progress=progress)


def ensemble(paths: Sequence[str | os.PathLike], *, weights: Sequence[float] | None = None, which: str = "final",
             ema: bool = False, split: str = "test", tta: str | Sequence[str] | None = None,
             dataset: str | None = None, root: str | None = None, batch_size: int = 256, device: str = "cpu",
             limit: int | None = None, out_dir: str | os.PathLike | None = None,
             precision: str = "auto", progress: bool = False, fused: bool = True) -> EvalResult:
    """Evaluate the (weighted) average of the class probabilities of several checkpoints.

    Takes :func:`evaluate`'s options. With two or more checkpoints, ``metrics["members"]`` holds each one's own
    scores (accuracy, top5, macro_f1, nll) on the same images, beside the ensemble's.
    """
    if not paths:
        raise ValueError("ensemble needs at least one checkpoint")
    weights = list(weights) if weights is not None else [1.0] * len(paths)
    if len(weights) != len(paths) or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"need one non-negative weight per checkpoint ({len(paths)}), got {weights}")
    members = [(load_checkpoint(p, which=which, ema=ema, device=device, fused=fused), w)
               for p, w in zip(paths, weights)]
    return _run(members, split=split, root=root, dataset=dataset, tta=_parse_tta(tta), batch_size=batch_size,
                device=device, limit=limit, out_dir=out_dir, precision=precision, progress=progress)


def average_checkpoints(paths: Sequence[str | os.PathLike], out: str | os.PathLike, *, which: str = "final",
                        ema: bool = False) -> Path:
    """Average the weights of same-architecture checkpoints into a new checkpoint directory ``out``.

    Floating-point tensors (including BatchNorm running statistics, an approximation of re-estimating them)
    are averaged in float64; integer buffers (``num_batches_tracked``) are taken from the first checkpoint.
    """
    if len(paths) < 2:
        raise ValueError("average needs at least two checkpoints")
    files = [ckpt.find_checkpoint(p, which) for p in paths]
    metas = [ckpt.read_meta(f) for f in files]
    arch = metas[0]["model"]
    for f, m in zip(files[1:], metas[1:]):
        if m["model"] != arch:
            raise ValueError(f"cannot average different architectures: {files[0]} is {arch}, {f} is {m['model']}")
    states = [ckpt.read_weights(f, ema=ema) for f in files]
    avg = {}
    for k, v in states[0].items():
        if v.is_floating_point():
            avg[k] = (sum(s[k].double() for s in states) / len(states)).to(v.dtype)
        else:
            avg[k] = v.clone()
    meta = {k: v for k, v in metas[0].items() if k not in ("format", "versions", "metrics", "created")}
    meta.update(metrics={}, averaged_from=[str(f) for f in files], ema=ema)
    return ckpt.save_checkpoint(out, avg, meta)


def _load_image(path: str | os.PathLike, in_chans: int, size: tuple[int, int]) -> Tensor:
    """A file as a [0, 1] tensor (C, H, W) with the model's channel count and input size."""
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("L" if in_chans == 1 else "RGB")
        if img.size != (size[1], size[0]):
            img = img.resize((size[1], size[0]), Image.BILINEAR)
        t = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    return t.view(size[0], size[1], in_chans).permute(2, 0, 1).float() / 255.0  # (H, W, C) -> (C, H, W)


def predict_files(path: str | os.PathLike, images: Sequence[str | os.PathLike], *, topk: int = 5,
                  which: str = "final", ema: bool = False, tta: str | Sequence[str] | None = None,
                  device: str = "cpu", fused: bool = True) -> list[dict[str, Any]]:
    """Top-k classes with probabilities for each image file (converted and resized to the model's input);
    ``fused`` as :func:`evaluate`."""
    m = load_checkpoint(path, which=which, ema=ema, device=device, fused=fused)
    C, H, W = m.meta["input_size"]
    x = torch.stack([_load_image(p, C, (H, W)) for p in images])  # (B, C, H, W)
    probs = predict_probs(m.model, x, m.meta, _parse_tta(tta), device)
    return top_classes(probs, m.classes, images, topk)


def top_classes(probs: Tensor, classes: Sequence[str], images: Sequence[str | os.PathLike],
                topk: int) -> list[dict[str, Any]]:
    """``[{"image", "top": [{"class", "prob"}, ...]}]``: the ``topk`` most probable classes of each image."""
    top = probs.topk(min(topk, probs.shape[1]), dim=1)
    return [{"image": str(p), "top": [{"class": classes[int(i)], "prob": float(v)}
                                      for v, i in zip(top.values[b], top.indices[b])]}
            for b, p in enumerate(images)]
