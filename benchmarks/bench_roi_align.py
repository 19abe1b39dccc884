"""Wall-clock time of paperzoo's roi_align (and roi_pool) at the sizes detectors use, forward and backward.

    python benchmarks/bench_roi_align.py                        # every case, fp32 and bf16 autocast, 3 repeats
    python benchmarks/bench_roi_align.py --baseline ff45a83     # side by side with roi_ops.py of that commit
    python benchmarks/bench_roi_align.py --cases train --precisions fp32 --repeats 5

Cases (output 7 x 7, RoIs shaped like FPN proposals: sides log-uniform in [16, 112] image pixels, the boxes FPN's
Eq. 1 sends to the stride-4 level; Fast R-CNN's single stride-16 map gets sides in [16, 512]):

* ``train``: Faster R-CNN training on Fashion-MNIST scenes, one stride-4 level (8, 256, 32, 32), 1,024 RoIs,
  sampling_ratio 2, forward + backward.
* ``infer``: torchvision-size inference, P2 of an 800 x 1216 image (1, 256, 200, 304), 1,000 RoIs, sampling_ratio 2,
  forward only.
* ``infer-adaptive``: ``infer`` with sampling_ratio -1 (ceil(roi / 7) points per bin and axis).
* ``warp``: R-CNN's warp, 256 regions of two 128 x 128 images to 3 x 64 x 64, sampling_ratio 1, aligned, forward
  only (no gradient flows into the image).
* ``roi_pool``: Fast R-CNN, VGG16's conv5 of an 800 x 1216 image (1, 512, 50, 76), 1,000 RoIs, forward + backward.

``bf16`` runs under ``torch.autocast("cpu", torch.bfloat16)`` with bf16 features, as an FPN under autocast gives
them. "max error" is the largest absolute difference from the float64 result of the current code (which the
tests hold to per-bin references); for roi_align in fp32 it is mostly float32's rounding of the box coordinates
(1e-4 at x ~ 300). roi_pool's reference is float32, since its bin edges depend on the floating type.
Each time is the median of ``--repeats`` calls after one untimed warm-up.
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
from pathlib import Path
from types import ModuleType

import torch
from bench_nms import cpu_model  # the CPU line the other detection benchmarks print

from paperzoo.detection import roi_ops

# name: (op, features (B, C, H, W), RoIs, spatial scale, sampling_ratio, aligned, output size, backward, sides)
CASES = {
    "train": ("roi_align", (8, 256, 32, 32), 1024, 1 / 4, 2, False, 7, True, (16, 112)),
    "infer": ("roi_align", (1, 256, 200, 304), 1000, 1 / 4, 2, False, 7, False, (16, 112)),
    "infer-adaptive": ("roi_align", (1, 256, 200, 304), 1000, 1 / 4, -1, False, 7, False, (16, 112)),
    "warp": ("roi_align", (2, 3, 128, 128), 256, 1.0, 1, True, 64, False, (16, 112)),
    "roi_pool": ("roi_pool", (1, 512, 50, 76), 1000, 1 / 16, 0, False, 7, True, (16, 512)),
}


def proposal_rois(n: int, batch: int, image_hw: tuple[float, float], sides: tuple[int, int], seed: int
                  ) -> torch.Tensor:
    """``(n, 5)`` RoIs: centres uniform over the image, sides log-uniform in ``sides``, clipped to the image."""
    g = torch.Generator().manual_seed(seed)
    h, w = image_hw
    centre = torch.rand(n, 2, generator=g) * torch.tensor([w, h])
    size = torch.exp(torch.empty(n, 2).uniform_(math.log(sides[0]), math.log(sides[1]), generator=g))
    boxes = torch.cat((centre - size / 2, centre + size / 2), dim=1)
    boxes = torch.minimum(boxes.clamp(min=0), torch.tensor([w, h, w, h]))
    return torch.cat((torch.randint(0, batch, (n, 1), generator=g).float(), boxes), dim=1)


def load_baseline(rev: str) -> ModuleType:
    """roi_ops.py as it was at git revision ``rev``, imported as a module of its own."""
    root = Path(__file__).resolve().parents[1]
    source = subprocess.run(["git", "show", f"{rev}:src/paperzoo/detection/roi_ops.py"], cwd=root, check=True,
                            capture_output=True, text=True).stdout
    module = ModuleType(f"roi_ops_{rev}")
    exec(compile(source, f"roi_ops.py@{rev}", "exec"), module.__dict__)  # our own file at an older commit
    return module


def timed(module: ModuleType, name: str, precision: str, repeats: int) -> tuple[float, float, torch.Tensor]:
    """Median forward and backward milliseconds of one case, and its output (float32)."""
    op, shape, n, scale, sampling_ratio, aligned, size, backward, sides = CASES[name]
    features = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    rois = proposal_rois(n, shape[0], (shape[2] / scale, shape[3] / scale), sides, seed=1)
    grad = torch.randn(n, shape[1], size, size, generator=torch.Generator().manual_seed(2))
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    args = (size, scale) if op == "roi_pool" else (size, scale, sampling_ratio, aligned)
    forward_ms, backward_ms = [], []
    for _ in range(repeats + 1):
        x = features.to(dtype).requires_grad_(backward)
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = getattr(module, op)(x, rois, *args)
        middle = time.perf_counter()
        if backward:
            out.backward(grad.to(out.dtype))
        forward_ms.append(1000 * (middle - start))
        backward_ms.append(1000 * (time.perf_counter() - middle))
    return statistics.median(forward_ms[1:]), statistics.median(backward_ms[1:]), out.detach().float()


def reference(name: str) -> torch.Tensor:
    op, shape, n, scale, sampling_ratio, aligned, size, _, sides = CASES[name]
    dtype = torch.float32 if op == "roi_pool" else torch.float64
    features = torch.randn(*shape, generator=torch.Generator().manual_seed(0)).to(dtype)
    rois = proposal_rois(n, shape[0], (shape[2] / scale, shape[3] / scale), sides, seed=1).to(dtype)
    args = (size, scale) if op == "roi_pool" else (size, scale, sampling_ratio, aligned)
    return getattr(roi_ops, op)(features, rois, *args).float()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--baseline", default=None, help="git revision whose roi_ops.py to time side by side")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    baseline = load_baseline(args.baseline) if args.baseline else None

    print(f"`python {shlex.join(sys.argv)}`  ")
    print(f"{cpu_model()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.2f} (1 min) before  ")
    print(f"median of {args.repeats} calls; times in ms; backward is `out.backward(grad)`\n")
    columns = ["case", "precision", "forward", "backward", "max error"]
    if baseline:
        columns[2:2] = [f"{args.baseline} forward", f"{args.baseline} backward"]
        columns += [f"{args.baseline} max error", "speed-up (fwd+bwd)"]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * 2 + "---:|" * (len(columns) - 2))
    for name in args.cases:
        want = reference(name)
        for precision in args.precisions:
            fwd, bwd, out = timed(roi_ops, name, precision, args.repeats)
            backward = CASES[name][7]
            cells = [name, precision, f"{fwd:.1f}", f"{bwd:.1f}" if backward else "–",
                     f"{(out - want).abs().max():.1e}"]
            if baseline:
                old_fwd, old_bwd, old_out = timed(baseline, name, precision, args.repeats)
                cells[2:2] = [f"{old_fwd:.1f}", f"{old_bwd:.1f}" if backward else "–"]
                cells += [f"{(old_out - want).abs().max():.1e}", f"{(old_fwd + old_bwd) / (fwd + bwd):.1f}x"]
            print("| " + " | ".join(cells) + " |", flush=True)
    print(f"\nload average {os.getloadavg()[0]:.2f} (1 min) after")


if __name__ == "__main__":
    main()
