"""Wall-clock time of paperzoo's nms and batched_nms on random proposal-like boxes.

    python benchmarks/bench_nms.py                      # 1k / 5k / 20k boxes, IoU 0.7 (RPN) and 0.5, 5 repeats
    python benchmarks/bench_nms.py --sizes 1000 --repeats 3 --threads 1

Boxes mimic RPN proposals on an 800 x 1333 image: centres uniform, sides log-uniform in [16, 512] pixels,
uniform scores; batched_nms gets 80 random class ids. Each cell is the median of ``--repeats`` timed calls
after one untimed warm-up call; "kept" is the number of boxes NMS keeps, which sets the cost (O(N·K) IoUs).
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import statistics
import subprocess
import sys
import time

import torch

from paperzoo.detection.nms import batched_nms, nms


def proposal_boxes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centre = torch.rand(n, 2, generator=g) * torch.tensor([1333.0, 800.0])
    size = torch.exp(torch.empty(n, 2).uniform_(math.log(16), math.log(512), generator=g))  # log-uniform sides
    boxes = torch.cat((centre - size / 2, centre + size / 2), dim=1)
    return boxes, torch.rand(n, generator=g), torch.randint(0, 80, (n,), generator=g)


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown CPU"
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "?")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 20000])
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.7, 0.5])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"`python {shlex.join(sys.argv)}`  ")
    print(
        f"{cpu_model()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"load average {os.getloadavg()[0]:.2f} (1 min) before  "
    )
    print(f"median of {args.repeats} calls\n")
    print("| boxes | IoU threshold | nms kept | nms (ms) | batched_nms kept (80 classes) | batched_nms (ms) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n in args.sizes:
        boxes, scores, labels = proposal_boxes(n, seed=n)
        for thr in args.thresholds:
            kept, kept_batched = len(nms(boxes, scores, thr)), len(batched_nms(boxes, scores, labels, thr))
            t_nms = median_ms(lambda: nms(boxes, scores, thr), args.repeats)  # noqa: B023 (called at once)
            t_batched = median_ms(lambda: batched_nms(boxes, scores, labels, thr), args.repeats)  # noqa: B023
            print(f"| {n:,} | {thr} | {kept:,} | {t_nms:.1f} | {kept_batched:,} | {t_batched:.1f} |", flush=True)
    print(f"\nload average {os.getloadavg()[0]:.2f} (1 min) after")


if __name__ == "__main__":
    main()
