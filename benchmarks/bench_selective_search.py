"""Box recall of selective search against the number of proposals, and seconds per image (issue 15).

    python benchmarks/bench_selective_search.py                        # 100 test scenes, fast + quality
    python benchmarks/bench_selective_search.py --scenes 20 --modes fast --upscale 1 2

Scenes: Fashion-MNIST scenes of the test split (``make_scenes("test", n)``: 128 x 128, 1-6 items), grey images
given to selective search as RGB. Recall at IoU >= 0.5 = fraction of ground-truth boxes that some proposal among
the top N (in selective search's own ranking, Sec. 3.3 of the paper) overlaps with IoU >= 0.5; "all" uses every
proposal. Time per image of the whole call (segmentations, grouping, ranking), single process: wall-clock, and the
process's CPU time, which other jobs on a shared machine inflate less.
The issue's bar: recall >= 0.90 with <= 1,000 proposals per scene in "fast" mode.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time

import torch
from bench_nms import cpu_model  # the CPU line the other detection benchmark prints

from paperzoo.detection.boxes import box_iou
from paperzoo.detection.scenes import make_scenes
from paperzoo.detection.selective_search import selective_search


def evaluate(scenes, mode: str, upscale: float, tops: list[int], iou: float) -> list[str]:
    """One table row: recall at each top-N and for all proposals, mean/max proposals, seconds per image."""
    hits = [0] * (len(tops) + 1)
    n_boxes, n_proposals, seconds, cpu_seconds = 0, [], 0.0, 0.0
    for i in range(len(scenes)):
        image = scenes.images[i].expand(3, -1, -1).float() / 255  # (3, H, W) grey as RGB
        start, cpu_start = time.perf_counter(), time.process_time()
        proposals = selective_search(image, mode, upscale=upscale)
        seconds += time.perf_counter() - start
        cpu_seconds += time.process_time() - cpu_start
        best = box_iou(scenes.boxes[i], proposals)  # (k, P)
        for c, top in enumerate([*tops, len(proposals)]):
            hits[c] += int((best[:, :top].amax(1) >= iou).sum()) if len(proposals) else 0
        n_boxes += len(scenes.boxes[i])
        n_proposals.append(len(proposals))
    recalls = [f"{h / n_boxes:.3f}" for h in hits]
    mean_p = sum(n_proposals) / len(n_proposals)
    return [mode, f"{upscale:g}", *recalls, f"{mean_p:.0f} / {max(n_proposals)}", f"{seconds / len(scenes):.3f}",
            f"{cpu_seconds / len(scenes):.3f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=100)
    parser.add_argument("--modes", nargs="+", default=["fast", "quality"])
    parser.add_argument("--upscale", type=float, nargs="+", default=[1.0])
    parser.add_argument("--tops", type=int, nargs="+", default=[10, 30, 100, 300, 1000])
    parser.add_argument("--iou", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0, help="seed of make_scenes")
    args = parser.parse_args()

    scenes = make_scenes("test", args.scenes, seed=args.seed)
    n_items = sum(len(b) for b in scenes.boxes)
    print(f"`python {shlex.join(sys.argv)}`  ")
    print(f"{cpu_model()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.2f} (1 min) before  ")
    print(f"{len(scenes)} Fashion-MNIST test scenes (128 x 128), {n_items} items; recall at IoU >= {args.iou}\n")
    header = ["mode", "upscale", *[f"top {t}" for t in args.tops], "all", "proposals (mean / max)", "s / image",
              "CPU s / image"]
    print("| " + " | ".join(header) + " |")
    print("|---|---:|" + "---:|" * (len(header) - 2))
    for mode in args.modes:
        for upscale in args.upscale:
            print("| " + " | ".join(evaluate(scenes, mode, upscale, args.tops, args.iou)) + " |", flush=True)
    print(f"\nload average {os.getloadavg()[0]:.2f} (1 min) after")


if __name__ == "__main__":
    main()
