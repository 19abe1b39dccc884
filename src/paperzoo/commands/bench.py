"""``paperzoo bench``: params, FLOPs, inference/training throughput, memory and utilization of models."""

from __future__ import annotations

import argparse
import platform
import sys

import torch

from paperzoo.tools.bench import (
    BenchConfig,
    bench_model,
    matmul_gflops,
    native_bf16,
    plot_results,
    resolve_models,
    trust_notes,
)
from paperzoo.tools.tables import FORMATS, render

COLUMNS = ["name", "params", "input", "batch", "dtype", "fused", "runtime", "gflops_per_img", "infer_img_s",
           "infer_gflop_s", "util_infer_pct", "train_img_s", "train_gflop_s", "util_train_pct", "train_spread_pct",
           "train_mem_mb"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmark models: params, FLOPs, img/s, GFLOP/s, memory",
                       description="Time inference and a training step of registered image models. FLOPs are "
                                   "multiply-adds x 2; training counts 3x forward. Utilization is achieved GFLOP/s "
                                   "over the measured dense-matmul GFLOP/s of this machine at the same dtype.")
    p.add_argument("models", nargs="+", help="model names or globs, e.g. resnet18 'mobilenet*'")
    p.add_argument("--batch", type=int, default=64, help="images per batch")
    p.add_argument("--size", type=int, default=None, help="input side (default: the model's, or 32 with --small-input)")
    p.add_argument("--in-chans", type=int, default=3, help="input channels")
    p.add_argument("--num-classes", type=int, default=1000,
                   help="classifier outputs (1000 counts parameters as `paperzoo models` does)")
    p.add_argument("--small-input", action="store_true", help="build the small-input (28x28/32x32) configuration")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default=None,
                   help="fp32, or bf16 / fp16 autocast (as train.precision); default fp32, and with --fused bf16 "
                        "where the CPU has native bf16 (AVX-512 BF16 / AMX), else fp32")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="NHWC memory format for inputs and weights (default: on with --fused, off otherwise)")
    p.add_argument("--compile", action="store_true", help="wrap the model in torch.compile")
    p.add_argument("--fused", action="store_true",
                   help="the fast inference path: every BatchNorm folded into its convolution (paperzoo.fuse), "
                        "channels_last, and bf16 autocast where the CPU has native bf16 (inference only)")
    p.add_argument("--runtime", choices=("torch", "onnxruntime"), default="torch",
                   help="onnxruntime: time the model exported to ONNX in ONNX Runtime (inference only, fp32)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--warmup", type=int, default=3, help="untimed iterations first")
    p.add_argument("--repeats", type=int, default=10, help="timed iterations")
    p.add_argument("--mode", default="infer,train", help="comma list of infer, train")
    p.add_argument("--format", choices=FORMATS, default="table", help="table format")
    p.add_argument("-o", "--out", help="also write the table to this file (format from --format)")
    p.add_argument("--plot", help="write a throughput-vs-FLOPs/params PNG here")
    p.set_defaults(func=run)


def inference_path(args: argparse.Namespace) -> tuple[str, bool]:
    """(precision, channels_last): what the user gave, else the defaults. With --fused on the CPU the defaults are
    the fast inference path of issue 18 (docs/deploy.md): channels_last, and bf16 autocast only where the CPU has
    native bf16 (elsewhere bf16 is emulated and slower than fp32); said on stderr."""
    fused_cpu = args.fused and args.runtime == "torch" and args.device == "cpu"
    native = native_bf16()
    precision = args.precision or ("bf16" if fused_cpu and native else "fp32")
    channels_last = args.fused if args.channels_last is None else args.channels_last
    if fused_cpu:
        print(f"paperzoo bench --fused: fused + {'channels_last' if channels_last else 'contiguous'} + {precision} "
              f"(native bf16 on this CPU: {', '.join(native) or 'none'})", file=sys.stderr)
    return precision, channels_last


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    modes = tuple(m.strip() for m in args.mode.split(",") if m.strip())
    if not set(modes) <= {"infer", "train"}:
        raise ValueError(f"--mode takes infer and/or train, got {args.mode!r}")
    if (args.fused or args.runtime != "torch") and "train" in modes:
        modes = tuple(m for m in modes if m != "train")
        if not modes:
            raise ValueError("--fused and --runtime onnxruntime models are for inference only: use --mode infer")
        print("paperzoo bench: --fused / --runtime onnxruntime time inference only (such a model cannot train)",
              file=sys.stderr)
    args.precision, args.channels_last = inference_path(args)
    cfg = BenchConfig(batch_size=args.batch, input_size=args.size, in_chans=args.in_chans,
                      num_classes=args.num_classes, small_input=args.small_input, dtype=args.precision,
                      channels_last=args.channels_last, compile=args.compile, fused=args.fused,
                      runtime=args.runtime, device=args.device, threads=args.threads, warmup=args.warmup,
                      repeats=args.repeats, modes=modes)
    names = resolve_models(args.models)
    machine = matmul_gflops(args.precision if args.precision != "fp16" or args.device != "cpu" else "fp32", args.device)
    header = (f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads, device {args.device}; "
              f"measured {args.precision} matmul: {machine:,.0f} GFLOP/s; "
              f"native bf16: {', '.join(native_bf16()) or 'none'}")
    print(header, file=sys.stderr)
    results = []
    for name in names:
        r = bench_model(name, cfg, machine_gflops=machine)
        results.append(r)
        print(f"  {name}: train {r.train_img_s or 0:,.0f} img/s, infer {r.infer_img_s or 0:,.0f} img/s",
              file=sys.stderr)
    rows = [r.as_dict() for r in results]
    cols = [c for c in COLUMNS if any(row.get(c) is not None for row in rows)]
    text = render(rows, cols, args.format)
    print(text)
    for line in trust_notes(results, cfg):
        print(line, file=sys.stderr)
    if args.out:
        with open(args.out, "w") as f:
            f.write((header + "\n\n" if args.format in ("md", "table") else "") + text + "\n")
    if args.plot:
        plot_results(results, args.plot)
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0
