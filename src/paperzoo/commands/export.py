"""``paperzoo export RUN --format onnx|pt2 [--compile] [--precision bf16]``: the fused classifier as an ONNX file, a
torch.export program or an AOTInductor-compiled package."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a trained classifier to ONNX or torch.export (.pt2), verified",
                       description="Export the fused model of a run (BatchNorms folded, dynamic batch) and check "
                                   "its outputs against the eager model's; the class names, input size and "
                                   "normalization go into <file>.json beside it (docs/deploy.md).")
    p.add_argument("run", metavar="RUN_OR_CKPT", help="run directory, checkpoint directory or .safetensors")
    p.add_argument("--format", dest="fmt", choices=("onnx", "pt2"), default="onnx", help="what to write")
    p.add_argument("-o", "--out", help="output file (default: <run>/export/model.<format>)")
    p.add_argument("--which", choices=("final", "best", "last"), default="final",
                   help="for a run directory: final weights (default), best validation or newest checkpoint")
    p.add_argument("--ema", action="store_true", help="export the EMA weights")
    p.add_argument("--no-fuse", dest="fused", action="store_false", help="export the model as it trained")
    p.add_argument("--compile", dest="compiled", action="store_true",
                   help="pt2 only: compile ahead of time with AOTInductor (C++ kernels, weights frozen in; a minute "
                        "or more), the fastest CPU runtime for ViT / Swin")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="bf16 (with --compile): compute in bf16 inside, fp32 in and out; fast where the CPU has "
                        "AMX / AVX-512 BF16, logits within a few percent of fp32's")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from paperzoo.deploy.export import export_run

    base = Path(args.run) if Path(args.run).is_dir() else Path(args.run).parent
    out = Path(args.out) if args.out else base / "export" / f"model.{args.fmt}"
    card = export_run(args.run, out, fmt=args.fmt, which=args.which, ema=args.ema, fused=args.fused,
                      compiled=args.compiled, precision=args.precision)
    size = out.stat().st_size / 2**20
    kind = f"{args.fmt}{', AOTInductor' if card.compiled else ''}{', bf16' if card.precision == 'bf16' else ''}"
    print(f"{out} ({kind}, {size:.1f} MiB, {len(card.classes)} classes, input {'x'.join(map(str, card.input_size))}"
          f"{', fused' if card.fused else ''}): logits equal the eager model's to {card.max_abs_diff:.1e} of their "
          f"largest value; card {out}.json")
    return 0
