"""Inference speed of the eager model against the fused one (paperzoo.fuse), side by side in one run.

    python benchmarks/bench_fuse.py                                  # the issue's five CNNs, batch 1 and 32
    python benchmarks/bench_fuse.py --models resnet50 --batches 32 --repeats 5

Each model is built as ``paperzoo models`` lists it (224 x 224 RGB, 1000 classes, random weights: speed does not
depend on the values) and timed in four ways: eager fp32 (the baseline, which runs at timm's speed), fused fp32,
fused + channels_last, and fused + channels_last + bf16 autocast (only where the CPU has native bf16: AVX-512 BF16
or AMX). The variants are timed round-robin, one call each per round, so that a slow moment of the machine hits
all of them alike; each cell is the median of ``--repeats`` rounds after ``--warmup`` untimed ones. The fused
outputs are checked against the eager ones (fp32: max |difference| over max |output|).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from bench_nms import cpu_model  # noqa: E402

from paperzoo.deploy import fuse  # noqa: E402
from paperzoo.registry import create_model, get_entry  # noqa: E402
from paperzoo.tools.bench import native_bf16  # noqa: E402

MODELS = ["resnet50", "mobilenetv2_100", "mobilenetv3_large_100", "efficientnet_b0", "shufflenet_v2_x1_0"]


def variants(name: str, batch: int, bf16: bool) -> dict[str, tuple[torch.nn.Module, torch.Tensor, bool]]:
    """name -> (model, input, autocast?) for the four ways of running one model."""
    size = get_entry(name).input_size
    model = create_model(name).eval()
    x = torch.randn(batch, 3, *size[-2:])
    fused = fuse(model, x[:1])
    cl = torch.channels_last
    out = {"eager fp32": (model, x, False), "fused fp32": (fused, x, False),
           "fused + channels_last": (fuse(model, x[:1]).to(memory_format=cl), x.to(memory_format=cl), False)}
    if bf16:
        out["fused + channels_last + bf16"] = (out["fused + channels_last"][0], out["fused + channels_last"][1], True)
    return out


@torch.inference_mode()
def time_round_robin(runs: dict[str, tuple[torch.nn.Module, torch.Tensor, bool]], warmup: int,
                     repeats: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(warmup + repeats):
        for k, (model, x, autocast) in runs.items():
            ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
            start = time.perf_counter()
            with ctx:
                model(x)
            if r >= warmup:
                times[k].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    bf16 = native_bf16()
    print(f"# {cpu_model()}, torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads, native bf16: {', '.join(bf16) or 'none'}\n")
    print("| model | batch | eager fp32 img/s | fused fp32 | fused + channels_last | fused + cl + bf16 "
          "| fused fp32 max rel. diff |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in args.models:
        for batch in args.batches:
            runs = variants(name, batch, bool(bf16))
            with torch.inference_mode():
                model, x, _ = runs["eager fp32"]
                want, got = model(x), runs["fused fp32"][0](x)
                diff = float((got - want).abs().max() / want.abs().max())
            med = time_round_robin(runs, args.warmup, args.repeats)
            base = med["eager fp32"]
            cells = [f"{batch / base:,.1f}"]
            for k in ("fused fp32", "fused + channels_last", "fused + channels_last + bf16"):
                cells.append(f"{batch / med[k]:,.1f} ({base / med[k]:.2f}x)" if k in med else "n/a")
            print(f"| {name} | {batch} | " + " | ".join(cells) + f" | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
