"""Detectors on one test set: the R-CNN lineage (R-CNN, Fast R-CNN, Faster R-CNN) and the one-stage / set
detectors (RetinaNet, YOLO, DETR), trained on the Fashion-MNIST scenes.

    python benchmarks/bench_detection_lineage.py --minutes 10            # train the lineage 10 min each, score
    python benchmarks/bench_detection_lineage.py --runs faster=runs/a fast=runs/b rcnn=runs/c   # score runs
    python benchmarks/bench_detection_lineage.py --runs faster=runs/a yolo=runs/y retinanet=runs/r detr=runs/d

Each model trains from its recipe (``detect_scenes_rcnn``, ``detect_scenes_fast_rcnn``, ``detect_scenes``) for the
same training-time budget (``train.time_budget_s``; the schedule is fitted to it) on the same ``--n-train``
training scenes (selective search runs once for both R-CNN and Fast R-CNN, cached), then its final weights are
scored on the recipe's test scenes with pycocotools (AP, AP50). "s / image" is the wall-clock time of detecting
one image at batch size 1, proposals included: selective search for R-CNN and Fast R-CNN, the RPN for Faster
R-CNN. "proposals / image" is the mean number of regions the box head classifies at test time (one-stage and
set detectors have none: "-").
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(__file__))
from bench_nms import cpu_model  # noqa: E402

import paperzoo  # noqa: E402
from paperzoo.detection.coco_eval import evaluate_coco  # noqa: E402
from paperzoo.detection.task import DetectionDataConfig, build_dataset, load_detector, rpn_proposals  # noqa: E402
from paperzoo.train.config import build_config  # noqa: E402

RECIPES = {"rcnn": ("R-CNN", "detect_scenes_rcnn"), "fast": ("Fast R-CNN", "detect_scenes_fast_rcnn"),
           "faster": ("Faster R-CNN", "detect_scenes"), "retinanet": ("RetinaNet", "detect_scenes_retinanet"),
           "yolo": ("YOLO v1", "detect_scenes_yolo"), "detr": ("DETR", "detect_scenes_detr")}
LINEAGE = ("rcnn", "fast", "faster")  # what --minutes trains when no --runs are given


def train(key: str, minutes: float, out_dir: str, n_train: int) -> Path:
    name, recipe = RECIPES[key]
    result = paperzoo.train(recipe, overrides=[f"train.time_budget_s={minutes * 60}", f"run.out_dir={out_dir}",
                                               f"run.name=lineage-{key}", "run.progress=lines",
                                               f"data.n_train={n_train}", "train.eval_every=100"])
    print(f"{name}: {result.status} after {result.train_time_s:.0f} s of training", file=sys.stderr)
    return Path(result.run_dir)


@torch.no_grad()
def score(key: str, run: Path, n_images: int | None) -> dict[str, float]:
    """AP / AP50 on the run's test scenes and per-image time (batch 1, proposals included)."""
    from paperzoo.detection.selective_search import selective_search

    ck = load_detector(run, "final")
    d = build_config(DetectionDataConfig, dict(ck.meta["data"]), "data.")
    if n_images:
        d.n_val = n_images
    d.proposal_cache = None  # time selective search itself, not a cache read
    base = build_dataset(build_config(DetectionDataConfig, {**ck.meta["data"], "proposals": "rpn",
                                                            "n_val": d.n_val}, "data."), "val")
    two_stage = d.proposals == "selective_search" or hasattr(ck.model, "rpn")
    preds, seconds, regions = {}, 0.0, 0
    for i in range(len(base)):
        image, target = base[i]
        t0 = time.perf_counter()
        if d.proposals == "selective_search":
            props = selective_search(image, mode=d.ss_mode, upscale=d.ss_upscale)
            det = ck.model([image], proposals=[props])[0]
        else:
            det = ck.model([image])[0]  # the RPN (if any) runs inside
        seconds += time.perf_counter() - t0
        if d.proposals != "selective_search" and two_stage:
            props = rpn_proposals(ck.model, image)  # counted, not timed (the forward above made them)
        regions += len(props) if two_stage else 0
        preds[int(target["image_id"])] = det
    stats = evaluate_coco(base.coco_gt(), preds, label_to_cat=base.label_to_cat)
    return {"AP50": stats["AP50"], "AP": stats["AP"], "proposals": regions / len(base) if two_stage else None,
            "s": seconds / len(base), "params": paperzoo.count_params(ck.model)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10.0, help="training time per model")
    p.add_argument("--runs", nargs="*", default=[], metavar="KEY=RUN", help="score these runs instead (rcnn, fast, "
                                                                            "faster)")
    p.add_argument("--out-dir", default="runs")
    p.add_argument("--n-train", type=int, default=2000, help="training scenes (each model the same)")
    p.add_argument("--images", type=int, help="test scenes scored (default: the recipe's n_val)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    runs = dict(r.split("=", 1) for r in args.runs)
    runs = runs or {k: train(k, args.minutes, args.out_dir, args.n_train) for k in LINEAGE}
    print(f"CPU: {cpu_model()}, {args.threads} threads, torch {torch.__version__}")
    print("| model | parameters | AP50 | AP | proposals / image | s / image (batch 1) | images / s | run |\n"
          "|---|---:|---:|---:|---:|---:|---:|---|")
    for key in RECIPES:
        if key in runs:
            s = score(key, Path(runs[key]), args.images)
            props = "-" if s["proposals"] is None else f"{s['proposals']:.0f}"
            print(f"| {RECIPES[key][0]} | {s['params']:,} | {s['AP50']:.3f} | {s['AP']:.3f} | {props} | "
                  f"{s['s']:.3f} | {1 / s['s']:.1f} | {runs[key]} |", flush=True)


if __name__ == "__main__":
    main()
