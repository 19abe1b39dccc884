"""``paperzoo quantize RUN --calib 512``: a static int8 ONNX model of a trained CNN, with accuracy before/after;
for a translation or language-model run, its linears and recurrent matrices in dynamic int8
(deploy/quantize_text.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quantize", help="post-training int8 quantization (ONNX Runtime), accuracy before and after",
                       description="Export the run's fused classifier to ONNX and quantize it statically to int8 "
                                   "(per-channel weights, activation ranges from training images), then score "
                                   "both on the test split. A translation or language-model run gets dynamic "
                                   "int8 instead (int8 weights, activations quantized per batch) in a "
                                   ".safetensors file, with held-out quality and greedy decoding speed before "
                                   "and after (docs/deploy.md).")
    p.add_argument("run", metavar="RUN_OR_CKPT", help="run directory, checkpoint directory or .safetensors")
    p.add_argument("--calib", type=int, default=512, help="calibration images from the training split")
    p.add_argument("-o", "--out", help="output file (default: <run>/export/model.int8.onnx; text runs: "
                                              "model.int8.safetensors)")
    p.add_argument("--which", choices=("final", "best", "last"), default="final",
                   help="for a run directory: final weights (default), best validation or newest checkpoint")
    p.add_argument("--limit", type=int, help="score only the first N test images / test sentences / LM validation "
                                                  "batches (quick checks)")
    p.add_argument("--qat", action="store_true",
                   help="image runs: quantization-aware fine-tuning first (Jacob et al. 2018), for where "
                        "post-training int8 loses more than a point; prints fp32 / PTQ / QAT accuracy")
    p.add_argument("--qat-epochs", type=int, default=1, help="QAT passes over the training images")
    p.add_argument("--qat-images", type=int, help="QAT on the first N training images only (default: all)")
    p.add_argument("--qat-lr", type=float, default=1e-3, help="QAT learning rate (SGD, cosine-decayed to 0)")
    p.set_defaults(func=run)


def _task(run: str, which: str) -> str | None:
    """The task in the checkpoint's metadata, or None where there is none (the image path says why)."""
    from paperzoo.train.checkpoint import CheckpointError, find_weights, read_meta

    try:
        return read_meta(find_weights(run, which)).get("task")
    except CheckpointError:
        return None


def run(args: argparse.Namespace) -> int:
    from paperzoo.deploy.quantize import quantize_run

    task = _task(args.run, args.which)
    if task in ("translation", "language_model"):
        return run_text(args)
    if task not in (None, "image_classification"):
        raise ValueError(f"{args.run}: paperzoo quantize takes image classifiers and translation / language-model "
                         f"runs, not a {task!r} run")

    base = Path(args.run) if Path(args.run).is_dir() else Path(args.run).parent
    out = Path(args.out) if args.out else base / "export" / "model.int8.onnx"
    r = quantize_run(args.run, out, calib=args.calib, which=args.which, test_limit=args.limit, qat=args.qat,
                     qat_epochs=args.qat_epochs, qat_images=args.qat_images, qat_lr=args.qat_lr,
                     log=lambda line: print(line, file=sys.stderr))
    print(f"{out}: int8 (calibrated on {r.calib_images} training images"
          + (f"; QAT {r.qat_epochs} epoch(s) on {r.qat_images} images)" if r.accuracy_qat is not None else ")"))
    steps = [("fp32", r.accuracy_fp32), ("int8 PTQ", r.accuracy_ptq)]
    steps += [("int8 QAT", r.accuracy_qat)] if r.accuracy_qat is not None else []
    print(f"test accuracy on {r.test_images} images: " + " -> ".join(f"{k} {100 * v:.2f} %" for k, v in steps)
          + f" ({100 * (r.accuracy_int8 - r.accuracy_fp32):+.2f} points)")
    if r.accuracy_qat is None and r.accuracy_fp32 - r.accuracy_int8 > 0.01:
        print("int8 loses more than a point: try quantization-aware training, paperzoo quantize RUN --qat",
              file=sys.stderr)
    print(f"file size: fp32 {r.size_fp32_bytes / 2**20:.2f} MiB -> int8 {r.size_int8_bytes / 2**20:.2f} MiB "
          f"({r.size_fp32_bytes / r.size_int8_bytes:.1f}x smaller); card {out}.json")
    return 0


def run_text(args: argparse.Namespace) -> int:
    """Dynamic int8 of a text run: no calibration; ``--limit`` caps the test sentences / validation batches."""
    from paperzoo.deploy.quantize_text import quantize_text_run

    base = Path(args.run) if Path(args.run).is_dir() else Path(args.run).parent
    out = Path(args.out) if args.out else base / "export" / "model.int8.safetensors"
    r = quantize_text_run(args.run, out, which=args.which, limit=args.limit)
    print(f"{out}: dynamic int8 ({r.quantized_matrices} matrices, {r.kernel} kernel; activations quantized per batch)")
    keys = [k for k in r.quality_fp32 if k.split("_", 1)[1] in ("loss", "ppl", "token_acc", "exact_match", "bleu")]
    print("held-out quality: " + ", ".join(f"{k} {r.quality_fp32[k]:.4g} -> {r.quality_int8[k]:.4g}" for k in keys))
    print(f"file size: fp32 {r.size_fp32_bytes / 2**20:.2f} MiB -> int8 {r.size_int8_bytes / 2**20:.2f} MiB "
          f"({r.size_fp32_bytes / r.size_int8_bytes:.1f}x smaller); report {out}.json")
    for batch, v in r.tokens_per_s.items():
        print(f"greedy decoding, {batch}, {r.threads} thread(s): fp32 {v['fp32']:.0f} tok/s -> int8 {v['int8']:.0f} "
              f"tok/s ({v['int8'] / v['fp32']:.2f}x)")
    return 0
