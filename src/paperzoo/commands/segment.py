"""``paperzoo segment train|eval|predict``: semantic segmentation on the shared trainer (docs/models/segmentation.md).

* ``train CONFIG [--set k=v ...] [--resume [RUN_DIR]]``: e.g. ``paperzoo segment train segment_scenes`` (FCN on
  the Fashion-MNIST scenes); run directories, checkpoints, exact resume, logging and DDP as ``paperzoo train``.
* ``eval RUN [--which best|final|last] [--set data.k=v ...] [--json FILE]``: mean IoU, pixel accuracy and the
  IoU of every class of a checkpoint on its run's evaluation split.
* ``predict RUN IMAGE... -o DIR``: ``DIR/<image>_mask.png`` (class indices, VOC colours) and ``DIR/<image>.png``
  (the mask drawn over the image) for each image.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from ._shared import COMMON_SHORTCUTS, add_run_eval_args, add_training_args, run_training


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("segment", help="semantic segmentation: train, eval (mean IoU), predict",
                       description="Train, evaluate and run semantic segmenters (FCN).")
    ss = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    q = ss.add_parser("train", help="train a segmenter from a YAML recipe (+ overrides); resumable",
                      description="Train a registered segmenter. CONFIG is a YAML file or a recipe name in "
                                  "configs/ (e.g. segment_scenes).")
    add_training_args(q, shortcuts=("--model", "--data-dir", *COMMON_SHORTCUTS),
                      example="optim.lr=0.01 data.n_train=1000")
    q.set_defaults(func=lambda a: run_training(a, task="segmentation"))

    q = ss.add_parser("eval", help="mean IoU, pixel accuracy and per-class IoU of a checkpoint")
    add_run_eval_args(q)
    q.set_defaults(func=_eval)

    q = ss.add_parser("predict", help="segment image files: mask PNGs and masks drawn over the images")
    q.add_argument("run", help="run directory, checkpoint directory or .safetensors file")
    q.add_argument("images", nargs="+", metavar="IMAGE")
    q.add_argument("-o", "--out", required=True, help="directory for <image>_mask.png and <image>.png")
    q.add_argument("--which", choices=["best", "final", "last"], default="best",
                   help="which checkpoint of a run directory")
    q.add_argument("--device", default="cpu", help="cpu or cuda")
    q.set_defaults(func=_predict)


def format_table(stats: dict[str, float]) -> str:
    """mIoU, pixel accuracy and mean accuracy, then one row per class (``-`` where the class never occurs)."""
    lines = [f"mean IoU        {stats['mIoU']:.4f}", f"pixel accuracy  {stats['pixel_acc']:.4f}",
             f"mean accuracy   {stats['mean_acc']:.4f}", "", f"{'class':<20} IoU"]
    for key, value in stats.items():
        if key.startswith("IoU/"):
            lines.append(f"{key[4:]:<20} {'-' if math.isnan(value) else f'{value:.4f}'}")
    return "\n".join(lines)


def _eval(args: argparse.Namespace) -> int:
    from paperzoo.segmentation.task import evaluate_run

    stats = evaluate_run(args.run, args.which, overrides=[o if o.startswith("data.") else f"data.{o}"
                                                          for o in args.overrides], device=args.device)
    print(format_table(stats))
    if args.json:  # JSON has no NaN: a class that never occurs is null
        clean = {k: None if math.isnan(v) else v for k, v in stats.items()}
        Path(args.json).write_text(json.dumps(clean, indent=2) + "\n")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from paperzoo.segmentation.task import segment_files

    for path in args.images:  # before loading the model: a typo costs nothing
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no such image file")
    found = segment_files(args.run, args.images, args.out, which=args.which, device=args.device)
    for image, classes in found.items():
        shares = ", ".join(f"{name} {share:.1%}" for name, share in classes.items())
        print(f"{image}: {shares}")
    print(f"wrote {len(found)} masks and pictures to {args.out}")
    return 0
