"""Detection pictures: detections on an image, each FPN level's anchors, and proposals side by side.

``paperzoo viz proposals RUN IMAGE`` answers the study notes' Q4 and Q5 in one figure: selective search's
proposals (Uijlings et al. 2013: bottom-up grouping of segments, no learning) beside the trained RPN's (Ren et
al. 2015: anchors scored and regressed by a small conv head), each with its box recall at IoU 0.5 against the
image's ground truth (when known) and its time.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from .common import new_figure, save_figure

__all__ = ["draw_boxes", "plot_detections", "plot_anchors", "plot_proposals", "box_recall"]

_COLOURS = ["tab:red", "tab:blue", "tab:green", "tab:orange", "tab:purple", "tab:cyan", "tab:olive", "tab:pink",
            "tab:brown", "tab:gray"]


def draw_boxes(ax, image: Tensor, boxes: Tensor, *, labels: Sequence[str] | None = None,
               colours: Sequence[str] | None = None, linewidth: float = 1.5, alpha: float = 1.0) -> None:
    """Show ``image`` (3, H, W) in [0, 1] on ``ax`` with xyxy ``boxes`` (K, 4) and optional captions."""
    from matplotlib.patches import Rectangle

    ax.imshow(image.permute(1, 2, 0).clamp(0, 1).cpu().numpy())
    for k, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        c = colours[k] if colours else "tab:red"
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=c, linewidth=linewidth, alpha=alpha))
        if labels:
            ax.text(x1, y1, labels[k], color="white", fontsize=7, va="bottom",
                    bbox={"facecolor": c, "alpha": 0.8, "pad": 1, "edgecolor": "none"})
    ax.set_axis_off()


def plot_detections(image: Tensor, det: dict[str, Tensor], categories: Sequence[str], out: str | os.PathLike,
                    title: str | None = None) -> Path:
    """One image with its detections: a box per detection, captioned "label score", a colour per class."""
    fig, axes = new_figure(size=(6, 6 * image.shape[1] / image.shape[2]))
    labels = det["labels"].tolist()
    captions = [f"{categories[c]} {s:.2f}" for c, s in zip(labels, det["scores"].tolist())]
    draw_boxes(axes[0, 0], image, det["boxes"], labels=captions, colours=[_COLOURS[c % 10] for c in labels])
    if title:
        axes[0, 0].set_title(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, out)


def plot_anchors(image: Tensor, anchors_per_level: Sequence[Tensor], strides: Sequence[int], anchors_per_cell: int,
                 out: str | os.PathLike) -> Path:
    """Each pyramid level's anchors over the image: all anchors of the cell nearest the centre (its sizes and
    aspect ratios) and the centres of every cell (the grid of that level's stride)."""
    fig, axes = new_figure(ncols=len(anchors_per_level), size=(3.2 * len(anchors_per_level), 3.6))
    h, w = image.shape[1:]
    for ax, anchors, stride in zip(axes[0], anchors_per_level, strides):
        centres = (anchors[:, :2] + anchors[:, 2:]) / 2  # (A, 2): the same centre repeats per cell anchor
        grid = centres[::anchors_per_cell]
        mid = ((grid - torch.tensor([w / 2, h / 2])) ** 2).sum(1).argmin()
        cell = anchors[mid * anchors_per_cell:(mid + 1) * anchors_per_cell]  # (a, 4)
        draw_boxes(ax, image, cell, colours=_COLOURS[:anchors_per_cell])
        ax.scatter(grid[:, 0], grid[:, 1], s=1, c="yellow")
        ax.set_xlim(-0.5 * w, 1.5 * w)
        ax.set_ylim(1.5 * h, -0.5 * h)
        sizes = sorted({round(float(((b[2] - b[0]) * (b[3] - b[1])).sqrt())) for b in cell})
        ax.set_title(f"stride {stride}: {len(grid)} cells x {anchors_per_cell}\nsizes ~{sizes}", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out)


def box_recall(proposals: Tensor, gt: Tensor, iou: float = 0.5) -> float:
    """Fraction of ground-truth boxes covered by at least one proposal with IoU >= ``iou`` (1.0 without GT)."""
    from paperzoo.detection.boxes import box_iou

    if len(gt) == 0:
        return 1.0
    if len(proposals) == 0:
        return 0.0
    return (box_iou(gt, proposals).amax(1) >= iou).float().mean().item()


def plot_proposals(image: Tensor, panels: Sequence[tuple[str, Tensor, float]], out: str | os.PathLike,
                   gt: Tensor | None = None, show: int = 50) -> Path:
    """Proposal methods side by side: ``panels`` are (name, proposals xyxy (P, 4) best first, seconds); the
    top ``show`` proposals are drawn, and the title gives count, time and (with ``gt``) recall at IoU 0.5."""
    fig, axes = new_figure(ncols=len(panels), size=(4.5 * len(panels), 4.9))
    for ax, (name, props, seconds) in zip(axes[0], panels):
        draw_boxes(ax, image, props[:show], colours=["tab:cyan"] * min(show, len(props)), linewidth=0.8, alpha=0.7)
        if gt is not None:
            draw_boxes(ax, image, gt, colours=["tab:red"] * len(gt), linewidth=1.5)
        rec = f", recall@0.5 {box_recall(props, gt):.2f}" if gt is not None else ""
        ax.set_title(f"{name}: {len(props)} proposals, {seconds * 1000:.0f} ms{rec}\n(top {show} drawn"
                     + (", ground truth red)" if gt is not None else ")"), fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out)


def timed(fn, *args, **kwargs):
    """``(fn(*args, **kwargs), seconds)``."""
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t
