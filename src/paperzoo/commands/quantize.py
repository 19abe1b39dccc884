"""``paperzoo quantize RUN --calib 512``: a static int8 ONNX model of a trained CNN, with accuracy before/after."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quantize", help="post-training int8 quantization (ONNX Runtime), accuracy before and after",
                       description="Export the run's fused classifier to ONNX and quantize it statically to int8 "
                                   "(per-channel weights, activation ranges from training images), then score "
                                   "both on the test split (docs/deploy.md).")
    p.add_argument("run", metavar="RUN_OR_CKPT", help="run directory, checkpoint directory or .safetensors")
    p.add_argument("--calib", type=int, default=512, help="calibration images from the training split")
    p.add_argument("-o", "--out", help="output file (default: <run>/export/model.int8.onnx)")
    p.add_argument("--which", choices=("final", "best", "last"), default="final",
                   help="for a run directory: final weights (default), best validation or newest checkpoint")
    p.add_argument("--limit", type=int, help="score only the first N test images (quick checks)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from paperzoo.deploy.quantize import quantize_run

    base = Path(args.run) if Path(args.run).is_dir() else Path(args.run).parent
    out = Path(args.out) if args.out else base / "export" / "model.int8.onnx"
    r = quantize_run(args.run, out, calib=args.calib, which=args.which, test_limit=args.limit)
    print(f"{out}: int8 (calibrated on {r.calib_images} training images)")
    print(f"test accuracy on {r.test_images} images: fp32 {100 * r.accuracy_fp32:.2f} % -> int8 "
          f"{100 * r.accuracy_int8:.2f} % ({100 * (r.accuracy_int8 - r.accuracy_fp32):+.2f} points)")
    print(f"file size: fp32 {r.size_fp32_bytes / 2**20:.2f} MiB -> int8 {r.size_int8_bytes / 2**20:.2f} MiB "
          f"({r.size_fp32_bytes / r.size_int8_bytes:.1f}x smaller); card {out}.json")
    return 0
