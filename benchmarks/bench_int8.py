"""Exported and int8 inference against the eager model: ONNX Runtime fp32 and static int8, side by side.

    python benchmarks/bench_int8.py                                   # ResNet-50 and MobileNetV2, batch 1 and 32
    python benchmarks/bench_int8.py --models resnet50 --batches 32 --repeats 5

Each model is built as ``paperzoo models`` lists it (224 x 224 RGB, 1000 classes, random weights: speed does not
depend on the values) and run three ways: eager fp32 in PyTorch (the baseline, at timm's speed), its fused export
in ONNX Runtime (fp32), and that export quantized to static int8 (per-channel weights, activations calibrated on
32 random images: ranges matter for accuracy, not for speed; accuracy is measured by ``paperzoo quantize`` on a
trained run). Timed round-robin, one call each per round; each cell is the median of ``--repeats`` rounds.
Sizes are the ONNX files' bytes.
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

from paperzoo.deploy.export import export_model, onnx_session, run_onnx  # noqa: E402
from paperzoo.deploy.quantize import quantize_onnx  # noqa: E402
from paperzoo.registry import create_model, get_entry  # noqa: E402

MODELS = ["resnet50", "mobilenetv2_100"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    threads = torch.get_num_threads()
    print(f"# {cpu_model()}, torch {torch.__version__}, {threads} threads\n")
    print("| model | batch | eager fp32 img/s | ONNX Runtime fp32 | ONNX Runtime int8 | fp32 / int8 file MiB |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in args.models:
        size = get_entry(name).input_size[-2:]
        model = create_model(name).eval()
        with tempfile.TemporaryDirectory() as tmp:
            fp32, int8 = Path(tmp) / "m.onnx", Path(tmp) / "m.int8.onnx"
            export_model(model, fp32, fmt="onnx", input_size=[3, *size], classes=[str(i) for i in range(1000)],
                         mean=[0.0] * 3, std=[1.0] * 3)
            g = torch.Generator().manual_seed(0)
            quantize_onnx(fp32, int8, (torch.randn(4, 3, *size, generator=g) for _ in range(8)))
            ort32, ort8 = onnx_session(fp32, threads), onnx_session(int8, threads)
            runs = {"eager": model, "ort32": functools.partial(run_onnx, ort32),
                    "ort8": functools.partial(run_onnx, ort8)}
            mib = f"{fp32.stat().st_size / 2**20:.1f} / {int8.stat().st_size / 2**20:.1f}"
            for batch in args.batches:
                x = torch.randn(batch, 3, *size)
                times: dict[str, list[float]] = {k: [] for k in runs}
                with torch.inference_mode():
                    for r in range(args.warmup + args.repeats):
                        for k, fn in runs.items():
                            start = time.perf_counter()
                            fn(x)
                            if r >= args.warmup:
                                times[k].append(time.perf_counter() - start)
                med = {k: statistics.median(v) for k, v in times.items()}
                base = med["eager"]
                cells = [f"{batch / base:,.1f}"] + [f"{batch / med[k]:,.1f} ({base / med[k]:.2f}x)"
                                                    for k in ("ort32", "ort8")]
                print(f"| {name} | {batch} | " + " | ".join(cells) + f" | {mib} |", flush=True)


if __name__ == "__main__":
    main()
