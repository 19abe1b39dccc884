"""Learning curves of one or several runs on shared axes, and the confusion matrix of an evaluation.

Curves read each run directory's ``metrics.jsonl`` (written by the trainer): training loss per logged step and
validation metrics per epoch. The x axis is the optimizer step, the epoch, or the training wall-clock time
(``train_time_s``: accuracy against time is how BENCHMARKS.md compares recipes).

One drawing path serves both pictures: ``paperzoo viz curves`` (:func:`plot_learning_curves`, one panel per
metric, one line per run) and the ``curves.png`` the trainer writes at the end of a run (:func:`plot_run_curves`,
the panels of :data:`RUN_PANELS`).

Names are the logged ones, and honest: an image run evaluated on the test set logs ``test_acc`` / ``test_loss``,
one with a held-out validation split ``val_acc`` / ``val_loss``; a training loss that is not the plain
cross-entropy of the evaluation (label smoothing, mixup/cutmix targets, focal loss, class weights) is labelled
with what it is (:func:`train_loss_label`, from the run's ``config.yaml``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..train.logger import read_metrics
from .common import new_figure, save_figure

X_KEYS = {"step": ("step", "optimizer step"), "epoch": ("epoch", "epoch"),
          "time": ("train_time_s", "training time (s)")}

#: the evaluation metrics of a run: on a held-out validation split (val_*) or on the test set (test_*)
_EVAL_ACC = ("val_acc", "val_acc_ema", "test_acc", "test_acc_ema")

#: the panels of a run's own ``curves.png``: (title, metrics drawn together, x axis); a run has only one of
#: the val_* / test_* families, and metrics without records are not drawn
RUN_PANELS = (("loss", ("train_loss", "val_loss", "test_loss"), "step"),
              ("accuracy", ("train_acc", *_EVAL_ACC), "step"),
              ("learning rate", ("lr",), "step"),
              ("accuracy vs training time", _EVAL_ACC, "time"))

Panel = tuple[str, Sequence[str], str]
Run = tuple[str, list[dict], dict[str, str]]  # (label, metrics.jsonl records, display name of some metrics)


def train_loss_label(config: Mapping[str, Any]) -> str:
    """``train_loss``, with what makes it differ from the plain cross-entropy the evaluation reports, e.g.
    ``train_loss (label smoothing 0.1)``: the two are not comparable, and a smoothed loss never reaches 0.

    ``config``: a run's config as a dict (image or text task; both name label smoothing ``loss.smoothing``).
    """
    loss, aug = config.get("loss") or {}, config.get("aug") or {}
    notes = []
    if loss.get("name") == "focal":
        notes.append(f"focal loss γ={loss.get('gamma', 2.0):g}")
    eps = loss.get("smoothing") or (0.1 if loss.get("name") == "label_smoothing" else 0.0)  # as build_loss
    if eps:
        notes.append(f"label smoothing {eps:g}")
    if loss.get("class_weights"):
        notes.append("class-weighted")
    if aug.get("mixup_alpha") or aug.get("cutmix_alpha"):
        notes.append("mixup/cutmix targets")
    return f"train_loss ({', '.join(notes)})" if notes else "train_loss"


def run_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The run's saved ``config.yaml`` as a dict (empty when there is none)."""
    p = Path(run_dir) / "config.yaml"
    return (yaml.safe_load(p.read_text()) or {}) if p.is_file() else {}


def _names(run_dir: str | os.PathLike) -> dict[str, str]:
    return {"train_loss": train_loss_label(run_config(run_dir))}


def eval_metric(records: list[dict], name: str = "acc") -> str:
    """``val_<name>`` or ``test_<name>``: the one of the two a run logged (``val_<name>`` when it logged neither)."""
    return next((f"{p}_{name}" for p in ("val", "test") if any(f"{p}_{name}" in r for r in records)), f"val_{name}")


def _series(records: list[dict], x: str, y: str) -> tuple[list[float], list[float]]:
    pts = [(r[x], r[y]) for r in records if isinstance(r.get(x), int | float) and isinstance(r.get(y), int | float)]
    return [p[0] for p in pts], [p[1] for p in pts]


def _draw_panel(ax, runs: Sequence[Run], panel: Panel) -> None:
    """Every (run, metric) of ``panel`` as one line; the legend names what varies (the run, the metric or both)."""
    title, metrics, x = panel
    xkey, xlabel = X_KEYS[x]
    for label, records, names in runs:
        for metric in metrics:
            xs, ys = _series(records, xkey, metric)
            if not xs:
                continue
            shown = names.get(metric, metric)
            if len(runs) == 1:
                name = shown
            else:  # several runs: the run names the line, with the metric's note (e.g. its label smoothing)
                name = label + shown[len(metric):] if len(metrics) == 1 else f"{label}: {shown}"
            evaluated = metric.startswith(("val", "test"))
            ax.plot(xs, ys, marker="o" if evaluated else None, markersize=3, label=name)
    ylabel = runs[0][2].get(metrics[0], metrics[0]) if len(runs) == 1 else metrics[0]
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel if len(metrics) == 1 else "")
    if not ax.lines:
        ax.text(0.5, 0.5, f"no {', '.join(metrics)} records against {xlabel}", ha="center", va="center",
                transform=ax.transAxes)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def _draw(runs: Sequence[Run], panels: Sequence[Panel], path: str | os.PathLike) -> Path:
    fig, axes = new_figure(len(panels), size=(6 * len(panels), 4.5))
    for ax, panel in zip(axes[0], panels):
        _draw_panel(ax, runs, panel)
    fig.suptitle("Learning curves")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_learning_curves(runs: Sequence[str | os.PathLike], path: str | os.PathLike, *, x: str = "step",
                         metrics: Sequence[str] | None = None, labels: Sequence[str] | None = None) -> Path:
    """One panel per metric, one line per run. Raises ``FileNotFoundError`` for a run without metrics.

    ``metrics`` default: ``train_loss`` and the evaluation accuracy (``val_acc``, or ``test_acc`` for runs
    evaluated on the test set).
    """
    if x not in X_KEYS:
        raise ValueError(f"x must be one of {', '.join(X_KEYS)}, got {x!r}")
    data = []
    for run in runs:
        recs = read_metrics(Path(run) / "metrics.jsonl")
        if not recs:
            raise FileNotFoundError(f"{run}: no metrics.jsonl records (is it a paperzoo run directory?)")
        data.append(recs)
    labels = list(labels) if labels else [Path(r).name for r in runs]
    if metrics is None:
        metrics = ("train_loss", eval_metric([rec for recs in data for rec in recs]))
    named = [(label, recs, _names(run)) for label, recs, run in zip(labels, data, runs)]
    return _draw(named, [(m.replace("_", " "), (m,), x) for m in metrics], path)


def plot_run_curves(run_dir: str | os.PathLike, path: str | os.PathLike) -> Path | None:
    """A run's own learning curves (:data:`RUN_PANELS`), written by the trainer at the end of the run; None when
    the run has no records yet (stopped before its first log)."""
    records = read_metrics(Path(run_dir) / "metrics.jsonl")
    if not records:
        return None
    return _draw([(Path(run_dir).name, records, _names(run_dir))], RUN_PANELS, path)


def plot_confusion(eval_dir_or_file: str | os.PathLike, path: str | os.PathLike,
                   classes: Sequence[str] | None = None) -> Path:
    """Row-normalised confusion matrix (true x predicted) from ``paperzoo eval``'s ``metrics.json``."""
    src = Path(eval_dir_or_file)
    src = src / "metrics.json" if src.is_dir() else src
    if not src.is_file():
        raise FileNotFoundError(f"no evaluation metrics at {src} (run `paperzoo eval ... --out DIR` first)")
    m = json.loads(src.read_text())
    if "confusion" not in m:
        raise ValueError(f"{src} has no confusion matrix")
    cm = np.asarray(m["confusion"], dtype=float)
    classes = (list(classes or []) or m.get("classes") or [str(r["class"]) for r in m.get("per_class", [])]
               or [str(i) for i in range(len(cm))])
    k = len(cm)
    fig, axes = new_figure(1, size=(max(5, 0.6 * k + 2), max(4, 0.6 * k + 1.5)))
    ax = axes[0, 0]
    frac = cm / np.clip(cm.sum(1, keepdims=True), 1, None)
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    if k <= 30:
        ax.set_xticks(range(k), classes, rotation=45, ha="right")
        ax.set_yticks(range(k), classes)
        for i in range(k):
            for j in range(k):
                if cm[i, j] > 0:
                    ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if frac[i, j] > 0.5 else "black")
    acc = m.get("accuracy")
    ax.set(xlabel="predicted", ylabel="true",
           title="Confusion matrix" + (f": accuracy {acc:.4f}" if acc is not None else "") +
                 (f" (n={m['n']})" if "n" in m else ""))
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of the true class")
    fig.tight_layout()
    return save_figure(fig, path)
