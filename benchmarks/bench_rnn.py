"""Forward+backward throughput of our LSTM/GRU (equations loop and fused path) against nn.LSTM / nn.GRU.

    python benchmarks/bench_rnn.py                                  # 2 layers, hidden 512, batch 32 x 128 steps
    python benchmarks/bench_rnn.py --repeats 20 --out benchmarks/results/rnn.md
    python benchmarks/bench_rnn.py --cells lstm --hidden 256 --batch 16 --seq 64 --repeats 3   # quick check
    python benchmarks/bench_rnn.py --threads 1 --clock cpu     # on a busy shared machine: CPU time, 1 thread

Method: every implementation gets the *same* weights (ours load nn.LSTM's state_dict) and the same input
(T, B, H) without grad; one iteration is forward, ``output.sum()``, backward, grads cleared. After
``--warmup`` untimed iterations each, the implementations are timed **round-robin** (A, B, C, A, B, C, ...)
so a busy machine slows them all alike; we report the median tokens/s (B*T / seconds per iteration), the
spread (min-max as % of the median), and the ratio to PyTorch's module. The 1-minute load average before
and after is printed: on a shared machine, compare ratios from one run, not absolute numbers across runs.
``--clock cpu`` times with the process's CPU time instead of the wall clock: with ``--threads 1`` it is
nearly insensitive to other processes (with more threads it also counts OpenMP threads spinning).
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn

from paperzoo.models import rnn

REFS = {"lstm": (nn.LSTM, rnn.LSTM, "nn.LSTM"), "gru": (nn.GRU, rnn.GRU, "nn.GRU"),
        "rnn": (nn.RNN, rnn.RNN, "nn.RNN")}


def make_step(module: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        out, _ = module(x)
        out.sum().backward()
        for p in module.parameters():
            p.grad = None
    return step


def run(args: argparse.Namespace) -> str:
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    T, B, H = args.seq, args.batch, args.hidden
    rows: list[tuple[str, str, Callable[[], None]]] = []
    x = torch.randn(T, B, args.input_size or H)
    for cell in args.cells:
        ref_cls, ours_cls, ref_name = REFS[cell]
        ref = ref_cls(x.shape[-1], H, num_layers=args.layers)
        impls = [(ref_name, ref)]
        for fused in (False, True):
            ours = ours_cls(x.shape[-1], H, num_layers=args.layers, fused=fused)
            ours.load_state_dict(ref.state_dict())
            impls.append((f"paperzoo {'fused' if fused else 'loop'}", ours))
        rows += [(cell.upper(), name, make_step(m, x)) for name, m in impls]
    for _, _, step in rows:
        for _ in range(args.warmup):
            step()
    load_before = os.getloadavg()[0]
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    times: list[list[float]] = [[] for _ in rows]
    for _ in range(args.repeats):
        for i, (_, _, step) in enumerate(rows):
            t0 = clock()
            step()
            times[i].append(clock() - t0)
    load_after = os.getloadavg()[0]

    tokens = B * T
    lines = [
        f"Command: `{shlex.join(['python', 'benchmarks/bench_rnn.py', *sys.argv[1:]])}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; 1-min load average {load_before:.1f} before, {load_after:.1f} after.",
        f"Config: {args.layers} layers, input {x.shape[-1]}, hidden {H}, batch {B} x {T} steps, fp32, "
        f"forward + backward, median of {args.repeats} round-robin repeats after {args.warmup} warm-up, "
        f"{'CPU' if args.clock == 'cpu' else 'wall-clock'} time.",
        "",
        "| cell | implementation | tokens/s | ms / iter | spread | vs PyTorch |",
        "|---|---|---:|---:|---:|---:|",
    ]
    base = 0.0
    for (cell, name, _), ts in zip(rows, times):
        med = statistics.median(ts)
        if name.startswith("nn."):
            base = med
        spread = (max(ts) - min(ts)) / med * 100
        lines.append(f"| {cell} | {name} | {tokens / med:,.0f} | {med * 1e3:.0f} | {spread:.0f}% | "
                     f"{base / med:.2f}x |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", nargs="+", choices=sorted(REFS), default=["lstm", "gru"])
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--input-size", type=int, default=None, help="default: = hidden")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="wall-clock or process CPU time")
    p.add_argument("--out", type=Path, default=None, help="also write the Markdown to this file")
    args = p.parse_args()
    table = run(args)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
