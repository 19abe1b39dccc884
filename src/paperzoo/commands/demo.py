"""``paperzoo demo``: the main job. Trains the default recipe on Fashion-MNIST, prints the test accuracy and
where the run directory is (``make demo`` runs this).

``--procs N`` trains data-parallel instead: N DDP processes started through ``torch.distributed.run`` (gloo on
CPU), each with cores/N threads, on the same global batch. On the 2-core machine two one-thread processes were
not faster than one two-thread process (~950 img/s each way; BENCHMARKS.md), so the default is one process. The
final evaluation runs in this process on every core, with the recipe's ``eval`` settings (test-time
augmentation, EMA weights).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RECIPE = "fashion_mnist_default"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help=f"train the default recipe ({RECIPE}) on Fashion-MNIST and report accuracy",
                       description=f"Train configs/{RECIPE}.yaml on Fashion-MNIST (Debian's dataset-fashion-mnist "
                                   "or --data-dir), evaluate on the 10,000 test images and print the accuracy.")
    p.add_argument("--recipe", default=RECIPE, help="recipe name or YAML path")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="override recipe values, as paperzoo train --set")
    p.add_argument("--data-dir", help="directory with the Fashion-MNIST idx files")
    p.add_argument("--out-dir", default="runs", help="directory the run directory is made in")
    p.add_argument("--procs", default="1",
                   help="training processes: N > 1 runs DDP (torch.distributed.run, gloo on CPU) with cores/N "
                        "threads each; auto = one per GPU, or 1 without a GPU")
    p.set_defaults(func=run)


def default_procs(spec: str) -> int:
    """The number of training processes for ``--procs`` (``auto`` or an integer >= 1)."""
    if spec != "auto":
        if not spec.isdigit() or int(spec) < 1:
            raise SystemExit(f"--procs: expected 'auto' or a positive integer, got {spec!r}")
        return int(spec)
    import torch

    return max(1, torch.cuda.device_count())


def _train_ddp(recipe: Path, overrides: list[str], cfg: Any, procs: int) -> tuple[str, Path, float]:
    """Run ``paperzoo train`` under ``torch.distributed.run`` with ``procs`` processes; (status, run dir, s).
    ``cfg`` is the resolved config of ``recipe`` + ``overrides`` (for the run directory's name)."""
    name = cfg.run.name or f"{cfg.model.name}-{cfg.data.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or procs)
    threads = max(1, cores // procs)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
           "-m", "paperzoo", "train", str(recipe), "--set", *overrides, f"run.name={name}",
           f"train.threads={threads}"]
    print(f"training with {procs} DDP processes x {threads} thread(s) (gloo); run.name={name}", flush=True)
    rc = subprocess.call(cmd, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    run_dir = Path(cfg.run.out_dir) / name
    status_file = run_dir / "status.json"
    if not status_file.is_file():
        raise SystemExit(f"distributed training exited with status {rc} before writing {status_file}")
    status = json.loads(status_file.read_text())["status"]
    train_time = 0.0
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        train_time = json.loads(line).get("train_time_s", train_time)
    return status, run_dir, train_time


def run(args: argparse.Namespace) -> int:
    from paperzoo.train.api import resolve_config, train
    from paperzoo.train.config import find_recipe
    from paperzoo.train.evaluate import evaluate

    overrides = [f"run.out_dir={args.out_dir}", *args.overrides]
    if args.data_dir:
        overrides.append(f"data.root={args.data_dir}")
    recipe = find_recipe(args.recipe)
    cfg = resolve_config(recipe, overrides)
    procs = default_procs(args.procs)
    t0 = time.perf_counter()
    if procs > 1:
        status, run_dir, train_time = _train_ddp(recipe, overrides, cfg, procs)
    else:
        result = train(cfg)
        status, run_dir, train_time = result.status, result.run_dir, result.train_time_s
    if status != "done":
        print(f"training {status}; run directory: {run_dir}")
        return 1 if status == "failed" else 130
    ev = cfg.eval
    tta = ev.tta
    report = evaluate(run_dir, ema=ev.ema, tta=",".join(tta) or None,
                      out_dir=run_dir / ("eval-test" + ("-ema" if ev.ema else "") + "".join(f"-{t}" for t in tta)))
    wall = time.perf_counter() - t0
    m = report.metrics
    how = (" (EMA weights)" if ev.ema else "") + (f" with test-time augmentation ({' + '.join(tta)})" if tta else "")
    print(f"\nFashion-MNIST test accuracy{how}: {100 * m['accuracy']:.2f} % (top-5 {100 * m['top5']:.2f} %, "
          f"macro-F1 {m['macro_f1']:.4f}) on {m['n']:,} images")
    print(f"training + evaluation wall-clock: {wall:.0f} s ({train_time:.0f} s in the training loop)")
    print(f"run directory: {run_dir}")
    print(f"  weights: {run_dir / 'final'}   curves: {run_dir / 'curves.png'}   report: {report.out_dir}")
    return 0
