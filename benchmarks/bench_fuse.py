"""Inference speed of the eager model against the fused one (paperzoo.fuse), side by side in one run.

    python benchmarks/bench_fuse.py                                  # the issue's five CNNs, batch 1 and 32
    python benchmarks/bench_fuse.py --models resnet50 --batches 32 --repeats 5

Each model is built as ``paperzoo models`` lists it (224 x 224 RGB, 1000 classes, random weights: speed does not
depend on the values) and timed in four ways: eager fp32 (the baseline, which runs at timm's speed), fused fp32,
fused + channels_last, and **the fused path** of ``paperzoo bench --fused`` (:func:`paperzoo.deploy.fast_path`):
fused + channels_last + bf16 autocast where the CPU has native bf16 (AVX-512 BF16 or AMX, printed in the header),
fp32 elsewhere. The variants are timed round-robin, one call each per round, so that a slow moment of the machine
hits all of them alike; each cell is the median of ``--repeats`` rounds after ``--warmup`` untimed ones. Outputs
are checked against the eager ones (max |difference| over max |output|): fused fp32 differs by rounding (~1e-6),
the bf16 path by bf16's 8-bit mantissa (~1e-2).

BENCHMARKS.md ("Deployment: fused inference"), on the 2-core Xeon with AVX-512 BF16 + AMX, about 6 minutes:

    python benchmarks/bench_fuse.py --threads 2 --repeats 7
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch

sys.path.insert(0, os.path.dirname(__file__))
from bench_nms import cpu_model  # noqa: E402

from paperzoo.deploy import fast_path, fuse  # noqa: E402
from paperzoo.registry import create_model, get_entry  # noqa: E402

MODELS = ["resnet50", "mobilenetv2_100", "mobilenetv3_large_100", "efficientnet_b0", "shufflenet_v2_x1_0"]
Runner = Callable[[torch.Tensor], torch.Tensor]


def variants(name: str, batch: int) -> tuple[dict[str, Runner], torch.Tensor]:
    """(variant -> function of the input, the input) for the four ways of running one model."""
    size = get_entry(name).input_size
    model = create_model(name).eval()
    x = torch.randn(batch, 3, *size[-2:])
    cl = fuse(model, x[:1]).to(memory_format=torch.channels_last)
    runs = {"eager fp32": model, "fused fp32": fuse(model, x[:1]),
            "fused + channels_last": lambda t: cl(t.contiguous(memory_format=torch.channels_last)),
            "fused path": fast_path(model, x[:1])}
    return runs, x


@torch.inference_mode()
def time_round_robin(runs: dict[str, Runner], x: torch.Tensor, warmup: int, repeats: int) -> dict[str, float]:
    """Median seconds per call of each runner, timed one call each per round."""
    times: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(warmup + repeats):
        for k, fn in runs.items():
            start = time.perf_counter()
            fn(x)
            if r >= warmup:
                times[k].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def rel_diff(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| over max |want|."""
    return float((got.float() - want).abs().max() / want.abs().max())


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
    probe = fast_path(torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1)), torch.zeros(1, 3, 8, 8))
    print(f"# {cpu_model()}, torch {torch.__version__}, {torch.get_num_threads()} threads, native bf16: "
          f"{', '.join(probe.native) or 'none'}; the fused path here: {probe.label}\n")
    print("| model | batch | eager fp32 img/s | fused fp32 | fused + channels_last | fused path "
          "| fused fp32 max rel. diff | fused path max rel. diff |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in args.models:
        for batch in args.batches:
            runs, x = variants(name, batch)
            with torch.inference_mode():
                want = runs["eager fp32"](x)
                diffs = [rel_diff(runs[k](x), want) for k in ("fused fp32", "fused path")]
            med = time_round_robin(runs, x, args.warmup, args.repeats)
            base = med["eager fp32"]
            cells = [f"{batch / base:,.1f}"] + [f"{batch / med[k]:,.1f} ({base / med[k]:.2f}x)"
                                                for k in ("fused fp32", "fused + channels_last", "fused path")]
            print(f"| {name} | {batch} | " + " | ".join(cells) + f" | {diffs[0]:.1e} | {diffs[1]:.1e} |", flush=True)


if __name__ == "__main__":
    main()
