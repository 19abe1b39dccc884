"""``paperzoo eval RUN_OR_CKPT``: accuracy, top-5, macro-F1, per-class accuracy, confusion matrix (CSV + PNG)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from paperzoo.tools.tables import render


def add_common(p: argparse.ArgumentParser) -> None:
    """Options shared by eval and ensemble."""
    p.add_argument("--which", choices=("final", "best", "last"), default="final",
                   help="for a run directory: final weights (default), best validation or newest checkpoint")
    p.add_argument("--ema", action="store_true", help="use the EMA weights (runs trained with train.ema=true)")
    p.add_argument("--tta", default="", help="test-time augmentation: comma list of flip, shift")
    p.add_argument("--split", choices=("test", "val", "train"), default="test",
                   help="val: the part of the training set the run held out (data.val_fraction)")
    p.add_argument("--dataset", help="evaluate on another dataset than the checkpoint's")
    p.add_argument("--data-dir", help="dataset directory (default: the one recorded in the checkpoint)")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass")
    p.add_argument("--limit", type=int, help="only the first N images (quick checks)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="auto = as the checkpoint was trained (bf16 autocast + channels_last for such runs)")
    p.add_argument("--no-fuse", dest="fused", action="store_false",
                   help="run the model as it trained (default: BatchNorms folded into the convolutions, faster, "
                        "equal up to fp32 rounding)")
    p.add_argument("-o", "--out", help="report directory (default: <run or checkpoint>/eval-<options>)")
    p.add_argument("--format", choices=("table", "json"), default="table", help="how to print the metrics")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress line on stderr (it is shown only on a terminal anyway)")


def default_out(path: str, args: argparse.Namespace, prefix: str = "eval") -> Path:
    p = Path(path)
    base = p if p.is_dir() else p.parent
    tag = "-".join([prefix, args.split] + (["ema"] if args.ema else []) + [t for t in args.tta.split(",") if t])
    return base / tag


def print_result(result, fmt: str) -> None:  # noqa: ANN001 - EvalResult
    m = result.metrics
    if fmt == "json":
        print(json.dumps(m, indent=2))
        return
    scores = ["accuracy", "top5", "macro_f1", "nll"]
    if "members" in m:  # an ensemble: each member alone, then the ensemble, on the same images
        rows = [{"model": r["checkpoint"], **r} for r in m["members"]]
        rows.append({"model": "ensemble", **result.summary()})
        print(render(rows, ["model", "weight", *scores], "table"))
        print(f"({m['n']:,} images)")
    else:
        print(render([result.summary()], ["n", *scores], "table"))
    print()
    print(render(m["per_class"], ["class", "accuracy", "precision", "f1", "support"], "table"))
    if result.out_dir is not None:
        print(f"\nreport: {result.out_dir} (metrics.json, per_class.csv, confusion.csv, confusion.png)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a run or checkpoint: accuracy, top-5, macro-F1, confusion matrix",
                       description="Evaluate a run directory, checkpoint directory or .safetensors file on its "
                                   "dataset's test split; writes metrics.json, per_class.csv, confusion.csv/png.")
    p.add_argument("path", metavar="RUN_OR_CKPT")
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from paperzoo.train.evaluate import evaluate

    out = args.out or default_out(args.path, args)
    result = evaluate(args.path, which=args.which, ema=args.ema, split=args.split, tta=args.tta,
                      dataset=args.dataset, root=args.data_dir, batch_size=args.batch_size, device=args.device,
                      limit=args.limit, out_dir=out, precision=args.precision, progress=not args.quiet,
                      fused=args.fused)
    print_result(result, args.format)
    return 0
