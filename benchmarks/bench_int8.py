"""Exported and int8 inference against the eager model: ONNX Runtime fp32 and static int8, side by side.

    python benchmarks/bench_int8.py                                   # ResNet-50 and MobileNetV2, batch 1 and 32
    python benchmarks/bench_int8.py --models resnet50 --batches 32 --repeats 5
    python benchmarks/bench_int8.py --transformers --repeats 3         # ViT-Ti and Swin-T: their fast exports

Each model is built as ``paperzoo models`` lists it (224 x 224 RGB, 1000 classes, random weights: speed does not
depend on the values) and run three ways: eager fp32 in PyTorch (the baseline, at timm's speed), its fused export
in ONNX Runtime (fp32), and that export quantized to static int8 (per-channel weights, activations calibrated on
32 random images: ranges matter for accuracy, not for speed; accuracy is measured by ``paperzoo quantize`` on a
trained run). Timed round-robin, one call each per round; each cell is the median of ``--repeats`` rounds.
Sizes are the ONNX files' bytes.

``--transformers`` times ViT-Ti and Swin-T (default ``--models``) against the eager fp32 model instead: their
ONNX export (opset 23, one Attention node per SDPA) in ONNX Runtime fp32, that export with ONNX Runtime's dynamic
int8 of the MatMul / Gemm weights (per channel), the AOTInductor package computing in bf16
(``paperzoo export --format pt2 --compile --precision bf16``), and, as a reference, the eager model under bf16
autocast; plus each one's largest logit difference from eager fp32, relative to the largest logit, at batch 32.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(__file__))
from bench_nms import cpu_model  # noqa: E402

from paperzoo.deploy.export import (  # noqa: E402
    export_model,
    load_exported,
    onnx_session,
    quantize_dynamic_onnx,
    run_onnx,
)
from paperzoo.deploy.quantize import quantize_onnx  # noqa: E402
from paperzoo.registry import create_model, get_entry  # noqa: E402

MODELS = ["resnet50", "mobilenetv2_100"]
TRANSFORMERS = ["vit_tiny_patch16_224", "swin_tiny_patch4_window7_224"]


def medians(runs: dict, x: torch.Tensor, warmup: int, repeats: int) -> dict[str, float]:
    """Seconds per call of each function on ``x``: round-robin, one call each per round, median of ``repeats``."""
    times: dict[str, list[float]] = {k: [] for k in runs}
    with torch.inference_mode():
        for r in range(warmup + repeats):
            for k, fn in runs.items():
                start = time.perf_counter()
                fn(x)
                if r >= warmup:
                    times[k].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def _export(model: torch.nn.Module, path: Path, size: tuple[int, ...], **kw) -> None:
    export_model(model, path, input_size=[3, *size], classes=[str(i) for i in range(1000)], mean=[0.0] * 3,
                 std=[1.0] * 3, **kw)


def transformer_rows(args: argparse.Namespace, threads: int) -> None:
    """The ``--transformers`` table: eager fp32 against ONNX Runtime fp32 / dynamic int8 and AOTInductor bf16."""
    cols = {"ort32": "ONNX Runtime fp32", "ort8": "ONNX Runtime dyn. int8", "aoti16": "AOTInductor bf16",
            "eager16": "eager bf16 autocast"}
    print("| model | batch | eager fp32 img/s | " + " | ".join(cols.values()) + " | max rel. logit diff "
          "(int8 / AOTI bf16 / autocast) |")
    print("|---|---:|---:|" + "---:|" * len(cols) + "---|")
    for name in args.models:
        size = get_entry(name).input_size[-2:]
        torch.manual_seed(0)
        model = create_model(name).eval()
        with tempfile.TemporaryDirectory() as tmp:
            fp32, int8, pt2 = Path(tmp) / "m.onnx", Path(tmp) / "m.int8.onnx", Path(tmp) / "m.pt2"
            _export(model, fp32, size)
            quantize_dynamic_onnx(fp32, int8)
            start = time.perf_counter()
            _export(model, pt2, size, fmt="pt2", compiled=True, precision="bf16")
            print(f"<!-- {name}: AOTInductor bf16 build {time.perf_counter() - start:.0f} s -->", flush=True)
            runs = {"eager": model, "ort32": functools.partial(run_onnx, onnx_session(fp32, threads)),
                    "ort8": functools.partial(run_onnx, onnx_session(int8, threads)),
                    "aoti16": load_exported(pt2, threads=threads), "eager16": _autocast(model)}
            for batch in args.batches:
                x = torch.randn(batch, 3, *size)
                med = medians(runs, x, args.warmup, args.repeats)
                base = med["eager"]
                cells = [f"{batch / base:,.1f}"] + [f"{batch / med[k]:,.1f} ({base / med[k]:.2f}x)" for k in cols]
                with torch.inference_mode():
                    want = model(x)
                    diffs = [float((runs[k](x).float() - want).abs().max() / want.abs().max())
                             for k in ("ort8", "aoti16", "eager16")]
                print(f"| {name} | {batch} | " + " | ".join(cells) + " | "
                      + " / ".join(f"{d:.1%}" for d in diffs) + " |", flush=True)


def _autocast(model: torch.nn.Module):
    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(x)
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=None, help=f"default {MODELS}, with --transformers {TRANSFORMERS}")
    ap.add_argument("--transformers", action="store_true",
                    help="the transformer table: ONNX Runtime fp32 / dynamic int8 and AOTInductor bf16")
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    threads = torch.get_num_threads()
    print(f"# {cpu_model()}, torch {torch.__version__}, {threads} threads\n")
    if args.transformers:
        args.models = args.models or TRANSFORMERS
        return transformer_rows(args, threads)
    args.models = args.models or MODELS
    print("| model | batch | eager fp32 img/s | ONNX Runtime fp32 | ONNX Runtime int8 | fp32 / int8 file MiB |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in args.models:
        size = get_entry(name).input_size[-2:]
        model = create_model(name).eval()
        with tempfile.TemporaryDirectory() as tmp:
            fp32, int8 = Path(tmp) / "m.onnx", Path(tmp) / "m.int8.onnx"
            _export(model, fp32, size)
            g = torch.Generator().manual_seed(0)
            quantize_onnx(fp32, int8, (torch.randn(4, 3, *size, generator=g) for _ in range(8)))
            ort32, ort8 = onnx_session(fp32, threads), onnx_session(int8, threads)
            runs = {"eager": model, "ort32": functools.partial(run_onnx, ort32),
                    "ort8": functools.partial(run_onnx, ort8)}
            mib = f"{fp32.stat().st_size / 2**20:.1f} / {int8.stat().st_size / 2**20:.1f}"
            for batch in args.batches:
                x = torch.randn(batch, 3, *size)
                med = medians(runs, x, args.warmup, args.repeats)
                base = med["eager"]
                cells = [f"{batch / base:,.1f}"] + [f"{batch / med[k]:,.1f} ({base / med[k]:.2f}x)"
                                                    for k in ("ort32", "ort8")]
                print(f"| {name} | {batch} | " + " | ".join(cells) + f" | {mib} |", flush=True)


if __name__ == "__main__":
    main()
