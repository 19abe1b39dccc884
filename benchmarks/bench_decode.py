"""Greedy decoding with the KV cache: eager fp32 against ``torch.compile`` of the step and dynamic int8.

    python benchmarks/bench_decode.py --lm runs/lm_fortunes --translation runs/translate_en_ko --threads 1
    python benchmarks/bench_decode.py --wide            # only the untrained 768-wide GPT (speed needs no training)

Measured on this project's machine: an ``Intel(R) Xeon(R) Processor`` (Sapphire Rapids: AVX-512 VNNI, AMX-INT8,
AMX-BF16), 2 cores, torch 2.13.0+cpu, run with ``--threads 1`` beside other jobs; the CPU model and threads are
written into the results. Writes benchmarks/results/decode.{json,md}.

Each trained run (``--lm`` / ``--translation``, any number) is decoded greedily, as ``paperzoo lm`` /
``paperzoo translate`` decode, at batch 1 and batch 8 (the LM continues a newline for 60 tokens inside its block;
the translator decodes the first test sentences to EOS), three ways on the same inputs:

* **eager**: ``generate(..., use_cache=True)``, the KV-cached steps of models/fast_decode.py (the RNNs' state is
  their cache);
* **compiled**: the same with ``model.step = torch.compile(model.step, dynamic=True)`` (Inductor, C++ kernels);
  the compile time is reported separately (its first decoding);
* **int8**: :func:`paperzoo.deploy.quantize_text.quantize_text_model` (FBGEMM dynamic int8 linears).

``--wide`` adds an untrained GPT of GPT-2-small width (n_embd 768, 4 layers, 12 heads, 256 tokens): its matrices
(768 x 2304, 768 x 3072) no longer fit the core's L2 cache, where int8's 4x fewer weight bytes pay off; its
"quality" is meaningless, its speed is not. Timed round-robin (one decoding of each variant per round), each
cell the median of ``--repeats`` rounds, tokens/s counting the tokens each decoding made.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(__file__))
from bench_nms import cpu_model  # noqa: E402

from paperzoo.deploy.quantize_text import decode_once, greedy_inputs, quantize_text_model  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("eager", "compiled", "int8")


def variants(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The eager model, a copy whose step is compiled, and an int8 copy."""
    torch._dynamo.reset()  # the models share their step's code object, and dynamo's recompile limit counts per code
    compiled = copy.deepcopy(model)
    compiled.step = torch.compile(compiled.step, dynamic=True)
    return {"eager": model, "compiled": compiled, "int8": quantize_text_model(copy.deepcopy(model))}


def measure(models: dict[str, torch.nn.Module], src: torch.Tensor, lengths: torch.Tensor | None,
            kw: dict[str, Any], repeats: int) -> dict[str, Any]:
    """Tokens/s per variant (median of round-robin rounds) and the first (compiling) decoding's seconds."""
    first = {name: decode_once(m, src, lengths, kw)[0] for name, m in models.items()}  # warm-up; compiles
    speed: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(repeats):
        for name, m in models.items():
            t, n = decode_once(m, src, lengths, kw)
            speed[name].append(n / t)
    return {"tokens_per_s": {k: statistics.median(v) for k, v in speed.items()},
            "first_decode_s": first, "tokens": decode_once(models["eager"], src, lengths, kw)[1]}


def wide_gpt() -> tuple[torch.nn.Module, Any]:
    from paperzoo.registry import create_model

    torch.manual_seed(0)
    model = create_model("gpt_char_small", vocab_size=256, block_size=128, n_layer=4, n_head=12, n_embd=768,
                         dropout=0.0).eval()
    return model, lambda batch: (torch.ones(batch, 1, dtype=torch.long), None, {"max_len": 60})


def cases(args: argparse.Namespace) -> list[tuple[str, torch.nn.Module, Any]]:
    """(label, eager model, batch -> greedy inputs) of every run asked for."""
    from paperzoo.text.tasks import load_text_checkpoint

    out = []
    for run in [*args.lm, *args.translation]:
        ck = load_text_checkpoint(run, "best")
        label = f"{ck.meta['model']['name']} ({ck.task}, {Path(run).name})"
        out.append((label, ck.model, lambda batch, ck=ck: greedy_inputs(ck, batch)))
    if args.wide:
        out.append(("gpt 768-wide, 4 layers (untrained)", *wide_gpt()))
    return out


def markdown(results: list[dict[str, Any]], header: str) -> str:
    lines = [header, "", "| model | batch | eager tok/s | compiled tok/s | int8 tok/s | compiled / eager | "
             "int8 / eager | compile s |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        s = r["tokens_per_s"]
        lines.append(f"| {r['model']} | {r['batch']} | {s['eager']:.0f} | {s['compiled']:.0f} | {s['int8']:.0f} | "
                     f"{s['compiled'] / s['eager']:.2f}x | {s['int8'] / s['eager']:.2f}x | "
                     f"{r['first_decode_s']['compiled']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lm", nargs="*", default=[], help="language-model run directories")
    ap.add_argument("--translation", nargs="*", default=[], help="translation run directories")
    ap.add_argument("--wide", action="store_true", help="also an untrained 768-wide GPT (speed only)")
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads (this machine has 2 cores)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "decode"), help="results path stem")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    header = f"# Greedy decoding: {cpu_model()}, torch {torch.__version__}, {args.threads} thread(s)"
    print(header)
    results = []
    for label, model, inputs in cases(args):
        models = variants(model)
        for batch in args.batches:
            t0 = time.perf_counter()
            r = {"model": label, "batch": batch, **measure(models, *inputs(batch), args.repeats)}
            results.append(r)
            s = r["tokens_per_s"]
            print(f"{label}, batch {batch}: " + ", ".join(f"{k} {s[k]:.0f}" for k in VARIANTS)
                  + f" tok/s ({time.perf_counter() - t0:.0f} s)", flush=True)
    md = markdown(results, header)
    print(md)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"cpu": cpu_model(), "torch": torch.__version__,
                                                    "threads": args.threads, "results": results}, indent=1) + "\n")
    out.with_suffix(".md").write_text(md)


if __name__ == "__main__":
    main()
