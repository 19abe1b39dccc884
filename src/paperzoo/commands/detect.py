"""``paperzoo detect train|eval|predict``: object detection on the shared trainer (docs/models/detection.md).

* ``train CONFIG [--set k=v ...] [--resume [RUN_DIR]]``: e.g. ``paperzoo detect train detect_scenes`` (Faster
  R-CNN on the Fashion-MNIST scenes); run directories, checkpoints, exact resume, logging, TensorBoard and DDP
  through ``torchrun`` as ``paperzoo train``.
* ``eval RUN [--which best|final|last] [--set data.k=v ...]``: the COCO table (AP, AP50, AP75, AP small / medium /
  large, AR) of a checkpoint on its run's evaluation split.
* ``predict RUN IMAGE... --out DIR``: boxes, labels and scores drawn on each image (PNG) and written as JSON.

``eval`` and ``predict`` take ``--rescore CLASSIFIER_RUN``: R-CNN-style rescoring, every box cropped, classified
by an image-classifier run and scored with both models' evidence (``paperzoo.detection.rescore``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ._shared import COMMON_SHORTCUTS, add_run_eval_args, add_training_args, run_training


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("detect", help="object detection: train, eval (COCO AP), predict",
                       description="Train, evaluate and run detectors (Faster R-CNN, Fast R-CNN, R-CNN).")
    ds = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    q = ds.add_parser("train", help="train a detector from a YAML recipe (+ overrides); resumable",
                      description="Train a registered detector. CONFIG is a YAML file or a recipe name in configs/ "
                                  "(e.g. detect_scenes).")
    add_training_args(q, shortcuts=("--model", "--data-dir", *COMMON_SHORTCUTS),
                      example="optim.lr=0.01 data.n_train=1000")
    q.set_defaults(func=lambda a: run_training(a, task="detection"))

    q = ds.add_parser("eval", help="COCO metrics of a checkpoint on its run's evaluation split")
    add_run_eval_args(q)
    q.add_argument("--score-thresh", type=float,
                   help="minimum detection score (default: the model's, e.g. 0.05); lower adds low-ranked detections")
    _add_rescore_args(q)
    q.set_defaults(func=_eval)

    q = ds.add_parser("predict", help="detect objects in image files: pictures with boxes and a JSON file")
    q.add_argument("run", help="run directory, checkpoint directory or .safetensors file")
    q.add_argument("images", nargs="+", metavar="IMAGE")
    q.add_argument("-o", "--out", required=True, help="directory for <image>.png pictures and detections.json")
    q.add_argument("--which", choices=["best", "final", "last"], default="best",
                   help="which checkpoint of a run directory")
    q.add_argument("--score-thresh", type=float, default=0.5, help="draw and write detections scoring at least this")
    q.add_argument("--device", default="cpu", help="cpu or cuda")
    _add_rescore_args(q)
    q.set_defaults(func=_predict)


def _add_rescore_args(q: argparse.ArgumentParser) -> None:
    g = q.add_argument_group("R-CNN-style rescoring (paperzoo.detection.rescore; unset: its tuned defaults)")
    g.add_argument("--rescore", metavar="CLASSIFIER_RUN",
                   help="re-classify every box with this image-classifier run (directory or checkpoint)")
    g.add_argument("--rescore-topk", type=int, metavar="K", help="emit each box with its K best classes")
    g.add_argument("--rescore-weight", type=float, metavar="W",
                   help="the classifier's weight in the geometric mean with the detector (1: classifier alone)")
    g.add_argument("--rescore-objectness", choices=["sum", "max"], help="box objectness: 1 - p(background), or max")
    g.add_argument("--rescore-context", type=int, metavar="P", help="pixels of context around the crop (R-CNN's p)")
    g.add_argument("--rescore-warp", action="store_true", help="warp the box (R-CNN) instead of its square crop")
    g.add_argument("--rescore-keep-outside", action="store_true",
                   help="keep the pixels outside the box in the crop (default: blanked, R-CNN App. A)")


def _rescore_args(args: argparse.Namespace) -> dict:
    """The rescoring settings given on the command line (the others keep Rescorer's defaults)."""
    given = {"topk": args.rescore_topk, "weight": args.rescore_weight, "objectness": args.rescore_objectness,
             "context_padding": args.rescore_context, "square": False if args.rescore_warp else None,
             "blank_outside": False if args.rescore_keep_outside else None}
    given = {k: v for k, v in given.items() if v is not None}
    if given and args.rescore is None:
        raise ValueError(f"--rescore-{next(iter(given)).replace('_padding', '')} needs --rescore CLASSIFIER_RUN")
    return given


def _eval(args: argparse.Namespace) -> int:
    from paperzoo.detection.coco_eval import format_coco_table
    from paperzoo.detection.task import evaluate_run

    if args.score_thresh is not None and not 0.0 <= args.score_thresh <= 1.0:
        raise ValueError(f"--score-thresh: must be in [0, 1], got {args.score_thresh}")
    stats = evaluate_run(args.run, args.which, overrides=[o if o.startswith("data.") else f"data.{o}"
                                                          for o in args.overrides],
                         score_thresh=args.score_thresh, device=args.device, rescore=args.rescore,
                         rescore_args=_rescore_args(args))
    print(format_coco_table(stats))
    if args.json:
        Path(args.json).write_text(json.dumps(stats, indent=2) + "\n")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from paperzoo.detection.task import detect_files

    if not 0.0 <= args.score_thresh <= 1.0:
        raise ValueError(f"--score-thresh: must be in [0, 1], got {args.score_thresh}")
    written = detect_files(args.run, args.images, args.out, which=args.which, score_thresh=args.score_thresh,
                           device=args.device, rescore=args.rescore, rescore_args=_rescore_args(args))
    for image, dets in written.items():
        print(f"{image}: {len(dets)} detections")
    print(f"wrote {Path(args.out) / 'detections.json'}")
    return 0
