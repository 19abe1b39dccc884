"""``paperzoo predict CKPT IMAGE...``: top-k classes with probabilities, as a table or JSON."""

from __future__ import annotations

import argparse
import json

from paperzoo.tools.tables import render


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="classify image files with a checkpoint (top-k with probabilities)",
                       description="Images are converted to the model's channels and resized to its input size, "
                                   "then normalised as in training.")
    p.add_argument("path", metavar="CKPT", help="run directory, checkpoint directory, .safetensors, or an .onnx "
                                                "file written by paperzoo export")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--topk", type=int, default=5, help="classes shown per image")
    p.add_argument("--which", choices=("final", "best", "last"), default="final",
                   help="for a run directory: final weights, best validation or newest checkpoint")
    p.add_argument("--ema", action="store_true", help="use the EMA weights (runs trained with train.ema=true)")
    p.add_argument("--tta", default="", help="test-time augmentation: comma list of flip, shift")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--no-fuse", dest="fused", action="store_false",
                   help="run the model as it trained (default: BatchNorms folded into the convolutions)")
    p.add_argument("--runtime", choices=("torch", "onnxruntime"), default=None,
                   help="onnxruntime: run the exported ONNX model (a run is exported to <run>/export/model.onnx "
                        "first if it has none); default: torch, or onnxruntime for an .onnx path")
    p.add_argument("--format", choices=("table", "json"), default="table", help="how to print the predictions")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from paperzoo.train.evaluate import predict_files

    onnx_file = args.path.endswith(".onnx")
    if onnx_file or args.runtime == "onnxruntime":
        if args.runtime == "torch" or args.tta:
            raise ValueError("an ONNX model runs on onnxruntime, without --tta")
        preds = _predict_onnxruntime(args, args.path if onnx_file else None)
    else:
        preds = predict_files(args.path, args.images, topk=args.topk, which=args.which, ema=args.ema,
                              tta=args.tta, device=args.device, fused=args.fused)
    if args.format == "json":
        print(json.dumps(preds, indent=2))
        return 0
    rows = [{"image": p["image"], "rank": r + 1, "class": t["class"], "prob": round(t["prob"], 4)}
            for p in preds for r, t in enumerate(p["top"])]
    print(render(rows, ["image", "rank", "class", "prob"], "table"))
    return 0


def _predict_onnxruntime(args: argparse.Namespace, onnx_path: str | None) -> list[dict]:
    """Predict through ONNX Runtime: the given .onnx file, or the run's export (written first if missing)."""
    from pathlib import Path

    from paperzoo.deploy.export import export_run, predict_onnx

    if onnx_path is None:
        base = Path(args.path) if Path(args.path).is_dir() else Path(args.path).parent
        onnx_path = str(base / "export" / "model.onnx")
        if not Path(onnx_path).is_file():
            export_run(args.path, onnx_path, which=args.which, ema=args.ema, fused=args.fused)
    return predict_onnx(onnx_path, args.images, topk=args.topk)
