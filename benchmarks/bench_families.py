"""Each family's small-input config trained on Fashion-MNIST for the same CPU-time budget (issue 4).

    python benchmarks/bench_families.py                      # every row, 300 CPU-seconds each, 2 jobs at once
    python benchmarks/bench_families.py --budget 60 --only resnet20 vit_tiny_patch4_32   # a quick look

Every run uses one torch thread, so "CPU seconds" is well defined and two runs can share the two cores without
disturbing each other's budget. The budget is turned into a number of optimizer steps by a short probe (a few
timed training steps of that model, after warm-up): steps = budget x measured img/s per CPU-second / batch. The
run then trains exactly that many steps with a one-cycle schedule (so every model ends its schedule inside the
budget), evaluating on the 10,000 test images at each epoch end and at the last step. CNNs use SGD + Nesterov, the
transformers AdamW (as in the ViT / Swin papers); everything else (augmentation, label smoothing, bf16 autocast,
batch 128) is shared.

Writes benchmarks/results/families.{md,json} and families.png (final accuracy, and accuracy against training CPU
time from each run's epoch-end evaluations).

The command form of this table is ``paperzoo compare MODEL... --budget 5m`` (paperzoo.train.compare, with the
trainer's ``train.time_budget_s``), which budgets wall-clock training time and runs the models one after the
other with each family's own recipe. This script stays separate because the published table counts CPU-seconds
of one thread (its probe reads the process CPU clock, which other processes on a shared machine do not inflate)
and runs two models at a time with the shared settings above.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

# (label, registered model, model args, optimizer override). One small-input config per family; ResNet-18 at
# 1/4 width is the default recipe's model.
ROWS: list[tuple[str, str, dict, dict]] = [
    ("ResNet (CIFAR ResNet-20)", "resnet20", {}, {}),
    ("ResNet-18 (1/4 width)", "resnet18", {"width": 16}, {}),
    ("ResNet-18", "resnet18", {}, {}),
    ("SE-ResNet-50", "seresnet50", {}, {}),
    ("DenseNet-121", "densenet121", {}, {}),
    ("MobileNet V2", "mobilenetv2_100", {}, {}),
    ("MobileNet V3-L", "mobilenetv3_large_100", {}, {}),
    ("ShuffleNet V2 1.0x", "shufflenet_v2_x1_0", {}, {}),
    ("EfficientNet-B0", "efficientnet_b0", {}, {}),
    ("ViT-Ti/4", "vit_tiny_patch4_32", {}, {"name": "adamw", "lr": 1e-3, "weight_decay": 0.05}),
    ("Swin-T (patch 2, window 4)", "swin_tiny_patch2_window4_32", {}, {"name": "adamw", "lr": 1e-3,
                                                                        "weight_decay": 0.05}),
]
BATCH = 128
STEPS_PER_EPOCH = 60_000 // BATCH + 1  # 469: the trainer keeps the last partial batch


def base_config(name: str, args: dict, optim: dict) -> dict:
    cnn = not name.startswith(("vit", "swin"))
    return {
        "model": {"name": name, "args": {"small_input": True, **args}},
        "data": {"dataset": "fashion_mnist", "batch_size": BATCH, "eval_batch_size": 500},
        "aug": {"crop_padding": 2, "hflip": 0.5},
        "loss": {"name": "label_smoothing", "smoothing": 0.1},
        "optim": {"name": "sgd", "lr": 0.1, "weight_decay": 5e-4, "momentum": 0.9, "nesterov": True, **optim},
        "sched": {"name": "onecycle", "pct_start": 0.25},
        "train": {"precision": "bf16", "channels_last": cnn, "threads": 1, "log_every": 50},
        "run": {"progress": "off", "tensorboard": False, "plots": False},
    }


def probe_rate(cfg: dict, min_cpu_s: float = 5.0, warmup: int = 3) -> float:
    """Training images per CPU-second of one thread: steps on random data of the dataset's shape, timed with
    the process CPU clock (which other processes on the machine do not inflate) for at least ``min_cpu_s``."""
    import torch
    import torch.nn.functional as F

    from paperzoo.registry import create_model

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = create_model(cfg["model"]["name"], num_classes=10, in_chans=1, **cfg["model"]["args"])
    fmt = torch.channels_last if cfg["train"]["channels_last"] else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(BATCH, 1, 28, 28).to(memory_format=fmt)
    y = torch.randint(0, 10, (BATCH,))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
            loss = F.cross_entropy(out[0] if isinstance(out, tuple) else out, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    t0, n = time.process_time(), 0
    while n < 3 or time.process_time() - t0 < min_cpu_s:
        step()
        n += 1
    return n * BATCH / (time.process_time() - t0)


def run_one(label: str, name: str, args: dict, optim: dict, budget: float, out_root: Path) -> dict:
    """Probe, train for the budget, and return the row (runs in its own process: see main)."""
    from paperzoo.registry import create_model
    from paperzoo.train.api import train

    cfg = base_config(name, args, optim)
    rate = probe_rate(cfg)
    steps = max(1, int(budget * rate / BATCH))
    cfg["train"]["max_steps"] = steps
    cfg["train"]["epochs"] = -(-steps // STEPS_PER_EPOCH)
    cfg["run"].update(out_dir=str(out_root), name=f"{name}-{'-'.join(f'{k}{v}' for k, v in args.items())}".rstrip("-"))
    c0 = time.process_time()
    result = train(cfg)
    cpu = time.process_time() - c0
    curve = []
    for line in (result.run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "test_acc" in rec:  # evaluated on the test set (data.val_fraction = 0)
            # x = the share of the CPU budget spent by then (steps run at the probed rate)
            curve.append({"step": rec["step"], "cpu_s": round(budget * rec["step"] / steps, 1),
                          "test_acc": rec["test_acc"]})
    model = create_model(name, num_classes=10, in_chans=1, small_input=True, **args)
    return {
        "label": label, "model": name, "args": args, "optimizer": cfg["optim"]["name"], "budget_cpu_s": budget,
        "params": sum(p.numel() for p in model.parameters()), "probe_img_per_cpu_s": round(rate, 1),
        "steps": steps, "epochs": round(steps * BATCH / 60_000, 2), "status": result.status,
        "test_acc": result.metrics.get("test_acc"), "train_time_s": round(result.train_time_s, 1),
        "cpu_s_total": round(cpu, 1), "train_img_per_s": round(rate, 1),
        "curve": curve, "run_dir": str(result.run_dir),
    }


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    done = [r for r in rows if r.get("test_acc") is not None]
    order = sorted(done, key=lambda r: r["test_acc"])
    ax1.barh([r["label"] for r in order], [100 * r["test_acc"] for r in order], color="tab:blue")
    for i, r in enumerate(order):
        ax1.text(100 * r["test_acc"] + 0.3, i, f"{100 * r['test_acc']:.1f} %  ({r['train_img_per_s']:.0f} img/s, "
                 f"{r['params'] / 1e6:.1f}M)", va="center", fontsize=8)
    lo = min(100 * r["test_acc"] for r in order)
    ax1.set_xlim(max(0, lo - 10), 100)
    ax1.set_xlabel("Fashion-MNIST test accuracy (%)")
    ax1.set_title("same CPU budget per model")
    for r in done:
        pts = [(p["cpu_s"], 100 * p.get("test_acc", p.get("val_acc"))) for p in r["curve"]]  # older results: val_acc
        if pts:
            ax2.plot(*zip(*pts), marker="o", ms=3, label=r["label"])
    ax2.set_xlabel("training CPU-seconds (one thread)")
    ax2.set_ylabel("test accuracy (%)")
    ax2.set_ylim(max(0, lo - 10), 100)
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=7)
    ax2.set_title("accuracy against training time (epoch ends + last step)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_results(rows: list[dict], budget: float, command: str, stem: Path) -> None:
    stem.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = [f"Command: `{command}`", "",
             f"Fashion-MNIST, {budget:.0f} CPU-seconds of training per model (one thread), batch {BATCH}, bf16 "
             "autocast, one-cycle schedule, crop + flip, label smoothing 0.1.", "",
             "| family (model) | params | optimizer | train img/s per CPU-second | steps | epochs | test acc (%) |",
             "|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: -(r.get("test_acc") or 0)):
        acc = f"{100 * r['test_acc']:.2f}" if r.get("test_acc") is not None else r["status"]
        lines.append(f"| {r['label']} (`{r['model']}`) | {r['params']:,} | {r['optimizer']} | "
                     f"{r['train_img_per_s']:,.0f} | {r['steps']:,} | {r['epochs']} | {acc} |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    plot(rows, stem.with_suffix(".png"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", type=float, default=300.0, help="training CPU-seconds per model (one thread)")
    p.add_argument("--only", nargs="+", help="registered model names (default: every row)")
    p.add_argument("--jobs", type=int, default=2, help="runs at once (one thread each)")
    p.add_argument("--runs-dir", default="runs/families")
    p.add_argument("--out", default=str(RESULTS / "families"), help="result path stem (.md/.json/.png)")
    p.add_argument("--_one", type=int, help=argparse.SUPPRESS)  # internal: run row N in this process
    a = p.parse_args()
    if a._one is not None:
        label, name, args, optim = ROWS[a._one]
        print(json.dumps(run_one(label, name, args, optim, a.budget, Path(a.runs_dir))))
        return
    picked = [i for i, r in enumerate(ROWS) if not a.only or r[1] in a.only]

    def launch(i: int) -> dict:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        out = subprocess.run([sys.executable, __file__, "--_one", str(i), "--budget", str(a.budget),
                              "--runs-dir", a.runs_dir], capture_output=True, text=True, env=env)
        if out.returncode != 0:
            print(f"{ROWS[i][1]} failed:\n{out.stderr[-2000:]}", file=sys.stderr)
            return {"label": ROWS[i][0], "model": ROWS[i][1], "status": "error", "params": 0, "optimizer": "",
                    "train_img_per_s": 0, "steps": 0, "epochs": 0, "test_acc": None, "curve": []}
        row = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{row['label']:<28} {row['params']:>11,} params  {row['train_img_per_s']:>7.0f} img/s  "
              f"{row['epochs']:>5} epochs  test acc {100 * (row['test_acc'] or 0):.2f} %", flush=True)
        return row

    with ThreadPoolExecutor(a.jobs) as pool:
        rows = list(pool.map(launch, picked))
    cmd = "python benchmarks/bench_families.py " + " ".join(sys.argv[1:])
    write_results(rows, a.budget, cmd.strip(), Path(a.out))
    print(f"wrote {a.out}.md / .json / .png")


if __name__ == "__main__":
    main()
