"""Every image family on every deployment path: eager fp32, fused, exported (ONNX Runtime fp32) and int8, side by side.

    python benchmarks/bench_deploy_families.py --threads 2                 # the table of BENCHMARKS.md, ~30 min
    python benchmarks/bench_deploy_families.py --quick --families resnet vit  # smoke run, ~1 min, writes to /tmp

One representative per registered image family, chosen as tests/train/test_every_family_trains.py chooses it (the
family's smallest variant), built as ``paperzoo models`` lists it (its default input size, RGB, 1000 classes,
random weights: speed does not depend on the values) and run four ways:

* **eager fp32**: the module as it trains (the baseline; it runs at timm's speed);
* **fused**: :func:`paperzoo.deploy.fast_path` — BatchNorms folded, channels_last, and bf16 autocast where the CPU
  has native bf16 (AVX-512 BF16 / AMX; the header says which), fp32 elsewhere;
* **exported**: the fused model exported to ONNX (dynamic batch) and run by ONNX Runtime in fp32;
* **int8**: that export quantized statically by :func:`paperzoo.deploy.quantize.quantize_onnx` (per-channel int8
  weights, uint8 activations calibrated on 32 random images: ranges matter for accuracy, not for speed).

Batch 1 and 32; the four are timed round-robin, one call each per round, so a slow moment of the machine hits all
alike; each cell is the median of ``--repeats`` rounds after ``--warmup`` untimed ones. A path that fails for a
model (an exporter limit) is a blank cell with its one-line reason in the JSON. Each family runs in its own
process, which writes its rows after every batch size: a model that needs more memory than the machine has (the
stand-alone self-attention net at batch 32 and 224 px asks for more than 24 GiB) is killed alone, and its row says
so instead of the whole table being lost.

Accuracy comes from trained runs where they exist: every classifier run under ``--runs`` (default ``runs/`` of
the repository) is listed under its family with its recorded test accuracy (as trained, ``final/meta.json``)
and, where ``paperzoo quantize`` has been run on it, the fp32 / int8 accuracies of its card
(``export/model.int8.onnx.json``). Writes ``benchmarks/results/deploy_families.{json,md}``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(__file__))
from bench_nms import cpu_model  # noqa: E402

import paperzoo  # noqa: E402
from paperzoo.deploy import fast_path  # noqa: E402
from paperzoo.deploy.export import export_model, onnx_session, run_onnx  # noqa: E402
from paperzoo.deploy.quantize import quantize_onnx  # noqa: E402
from paperzoo.registry import create_model, get_entry, list_models  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PATHS = ("eager fp32", "fused", "exported", "int8")


def representatives() -> dict[str, str]:
    """family -> its smallest variant (parameters at 10 classes, small input), as test_every_family_trains."""
    best: dict[str, tuple[int, str]] = {}
    for name in list_models(kind="image"):
        with torch.device("meta"):
            n = paperzoo.count_params(create_model(name, num_classes=10, in_chans=1, small_input=True))
        family = get_entry(name).family
        if family not in best or n < best[family][0]:
            best[family] = (n, name)
    return {f: name for f, (_, name) in sorted(best.items())}


def _reason(e: Exception) -> str:
    """The first line of an error, or its type where it has no message."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def runners(model: torch.nn.Module, size: tuple[int, int], tmp: Path, threads: int
            ) -> tuple[dict[str, Callable[[torch.Tensor], object]], dict[str, str], dict[str, float]]:
    """(path -> function of a batch, path -> why it failed, file -> MiB) for the four paths of one model."""
    runs: dict[str, Callable[[torch.Tensor], object]] = {"eager fp32": model}
    errors: dict[str, str] = {}
    sizes: dict[str, float] = {}
    x1 = torch.randn(1, 3, *size)
    try:
        runs["fused"] = fast_path(model, x1)
    except Exception as e:  # noqa: BLE001 - the reason goes in the table
        errors["fused"] = _reason(e)
    fp32, int8 = tmp / "m.onnx", tmp / "m.int8.onnx"
    try:
        export_model(model, fp32, fmt="onnx", input_size=[3, *size], classes=[str(i) for i in range(1000)],
                     mean=[0.0] * 3, std=[1.0] * 3)
        runs["exported"] = functools.partial(run_onnx, onnx_session(fp32, threads))
        sizes["fp32_mib"] = fp32.stat().st_size / 2**20
    except Exception as e:  # noqa: BLE001
        errors["exported"] = errors["int8"] = _reason(e)
        return runs, errors, sizes
    try:
        g = torch.Generator().manual_seed(0)
        quantize_onnx(fp32, int8, (torch.randn(4, 3, *size, generator=g) for _ in range(8)))
        runs["int8"] = functools.partial(run_onnx, onnx_session(int8, threads))
        sizes["int8_mib"] = int8.stat().st_size / 2**20
    except Exception as e:  # noqa: BLE001
        errors["int8"] = _reason(e)
    return runs, errors, sizes


@torch.inference_mode()
def time_round_robin(runs: dict[str, Callable[[torch.Tensor], object]], x: torch.Tensor, warmup: int,
                     repeats: int) -> dict[str, float]:
    """Images per second of each runner on ``x``: the median of ``repeats`` rounds, one call each per round."""
    times: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(warmup + repeats):
        for k, fn in runs.items():
            start = time.perf_counter()
            fn(x)
            if r >= warmup:
                times[k].append(time.perf_counter() - start)
    return {k: len(x) / statistics.median(v) for k, v in times.items()}


def trained_runs(root: Path) -> dict[str, list[dict]]:
    """family -> [{run, model, accuracy, accuracy_fp32_onnx, accuracy_int8}] of the classifier runs under root."""
    out: dict[str, list[dict]] = {}
    for meta_file in sorted(root.glob("*/final/meta.json")):
        meta = json.loads(meta_file.read_text())
        name = (meta.get("model") or {}).get("name")
        if meta.get("task", "image_classification") != "image_classification" or name not in list_models(kind="image"):
            continue
        run = meta_file.parents[1]
        row = {"run": run.name, "model": name, "accuracy": (meta.get("metrics") or {}).get("test_acc")}
        card = run / "export" / "model.int8.onnx.json"
        if card.is_file():
            q = json.loads(card.read_text()).get("quantization") or {}
            row.update(accuracy_fp32_onnx=q.get("accuracy_fp32"), accuracy_int8=q.get("accuracy_int8"))
        out.setdefault(get_entry(name).family, []).append(row)
    return out


def markdown(rows: list[dict], header: str) -> str:
    lines = [header, "", "| family | model | params | input | batch | eager fp32 img/s | fused | exported | int8 "
             "| fp32 / int8 MiB | trained run: test acc. (int8) |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        base = r["img_s"].get("eager fp32")
        cells = [f"{base:,.1f}" if base else "–"]
        for k in PATHS[1:]:
            v = r["img_s"].get(k)
            cells.append(f"{v:,.1f} ({v / base:.2f}x)" if v and base else "–")
        mib = (f"{r['sizes']['fp32_mib']:.1f} / {r['sizes']['int8_mib']:.1f}" if "int8_mib" in r["sizes"] else "–")
        acc = "; ".join(f"{t['model']} {100 * t['accuracy']:.2f} %"
                        + (f" ({100 * t['accuracy_int8']:.2f} %)" if t.get("accuracy_int8") is not None else "")
                        for t in r["trained"] if t.get("accuracy") is not None) or "–"
        params = f"{r['params'] / 1e6:.2f}M" if r["params"] else "–"
        lines.append(f"| {r['family']} | {r['model']} | {params} | {r['input']} | {r['batch']} | "
                     + " | ".join(cells) + f" | {mib} | {acc} |")
    errors = list(dict.fromkeys(f"- {r['family']} ({r['model']}), {k}: {v}" + (
        "" if k != "every path" else f" (batch {r['batch']})") for r in rows for k, v in r["errors"].items()))
    return "\n".join(lines + (["", "Failed paths:", *errors] if errors else [])) + "\n"


def measure_family(name: str, args: argparse.Namespace, rows_file: Path) -> None:
    """Time one family's model on every path, writing its rows to ``rows_file`` after every batch size."""
    if args.threads:
        torch.set_num_threads(args.threads)
    size = tuple(get_entry(name).input_size[-2:])
    model = create_model(name).eval()
    rows: list[dict] = []
    facts = {"params": paperzoo.count_params(model), "input": f"{size[0]}x{size[1]}"}
    with tempfile.TemporaryDirectory() as tmp:
        runs, errors, sizes = runners(model, size, Path(tmp), torch.get_num_threads())
        for batch in args.batches:
            img_s = time_round_robin(runs, torch.randn(batch, 3, *size), args.warmup, args.repeats)
            rows.append({**facts, "batch": batch, "img_s": img_s, "errors": errors, "sizes": sizes})
            rows_file.write_text(json.dumps(rows))


def run_family(family: str, name: str, args: argparse.Namespace, trained: list[dict]) -> list[dict]:
    """The rows of one family, measured in a child process (see the module docstring: memory)."""
    with tempfile.TemporaryDirectory() as tmp:
        rows_file = Path(tmp) / "rows.json"
        cmd = [sys.executable, __file__, "--_one", name, "--_rows", str(rows_file), "--warmup", str(args.warmup),
               "--repeats", str(args.repeats), "--batches", *map(str, args.batches)]
        rc = subprocess.run(cmd + (["--threads", str(args.threads)] if args.threads else [])).returncode
        done = json.loads(rows_file.read_text()) if rows_file.is_file() else []
    why = f"the process ended with status {rc}" + (" (killed: out of memory)" if rc == -signal.SIGKILL else "")
    # batch sizes the child did not finish: the facts it measured before, no speeds, and why
    unfinished = {"params": None, "input": "?", "sizes": {}, **(done[0] if done else {}), "img_s": {},
                  "errors": {"every path": why}}
    rows = [{"family": family, "model": name, "trained": trained, **r}
            for r in done + [{**unfinished, "batch": b} for b in args.batches[len(done):]]]
    for r in rows:
        print(f"  {family} {name} batch {r['batch']}: " + ", ".join(f"{k} {v:,.1f}" for k, v in r["img_s"].items())
              + (f"; failed: {r['errors']}" if r["errors"] else ""), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--families", nargs="+", help="only these families (default: every registered image family)")
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch and ONNX Runtime intra-op threads")
    ap.add_argument("--runs", default=str(ROOT / "runs"), help="directory of trained runs (accuracy column)")
    ap.add_argument("--quick", action="store_true", help="smoke run: batch 1, one round, no warm-up, output in /tmp")
    ap.add_argument("--out", help="output prefix (default: benchmarks/results/deploy_families)")
    ap.add_argument("--_one", help=argparse.SUPPRESS)  # child process: this model only
    ap.add_argument("--_rows", help=argparse.SUPPRESS)  # child process: where its rows go
    args = ap.parse_args()
    if args._one:
        return measure_family(args._one, args, Path(args._rows))
    if args.quick:
        args.batches, args.warmup, args.repeats = [1], 0, 1
    out = Path(args.out or (Path(tempfile.gettempdir()) / "deploy_families_quick" if args.quick
                            else ROOT / "benchmarks" / "results" / "deploy_families"))
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    reps = representatives()
    unknown = set(args.families or []) - set(reps)
    if unknown:
        raise SystemExit(f"unknown families {sorted(unknown)}; registered: {', '.join(reps)}")
    probe = fast_path(torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1)), torch.zeros(1, 3, 8, 8))
    header = (f"# {cpu_model()}, torch {torch.__version__}, {threads} threads; native bf16: "
              f"{', '.join(probe.native) or 'none'}, so fused = {probe.label}; median of {args.repeats} rounds")
    print(header, flush=True)
    trained, rows = trained_runs(Path(args.runs)), []
    for family, name in reps.items():
        if not args.families or family in args.families:
            rows += run_family(family, name, args, trained.get(family, []))
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.json").write_text(json.dumps({"header": header, "rows": rows}, indent=1) + "\n")
    Path(f"{out}.md").write_text(markdown(rows, header))
    print(f"wrote {out}.json and {out}.md")


if __name__ == "__main__":
    main()
