"""Our Transformer against nn.Transformer (training tokens/s), and KV-cached against uncached generation.

    python benchmarks/bench_transformer.py                        # d_model 256, 8 heads, 3+3 layers, FF 1024,
                                                                  # batch 32 x 64, 256 generated tokens
    python benchmarks/bench_transformer.py --repeats 20 --out benchmarks/results/transformer.md
    python benchmarks/bench_transformer.py --quick                # a few seconds: checks that it runs
    python benchmarks/bench_transformer.py --skip train --breakdown --threads 1   # KV cache only, + (c)

(a) Training. Both models get the same configuration *and the same weights*: ours is built with nn.Transformer's
    extras (final LayerNorms, dropout 0.1 also on attention weights and after the FFN ReLU), the same embeddings
    (x √d_model + sinusoidal positions) and output layer, and loads the nn.Transformer's weights; before timing,
    the two losses are checked to be equal in eval mode. One training step is forward + cross-entropy +
    backward + Adam step on a (B, S) source and (B, T) target batch, causal target mask, no padding;
    tokens/s = B·T target tokens / seconds per step. The steps are timed round-robin (ours, nn, ours, nn, ...)
    so that a busy machine slows both alike; we report the median, the spread (± half the min-max range, as %
    of the median) and the ratio. A third row is our model with the paper's dropout (residual + embeddings only).
(b) Generation. Greedy decoding of ``--gen-len`` tokens (EOS disabled, so every step runs) with the KV cache
    (one new position per step through paperzoo.models.fast_decode; encoder-decoder K/V computed once) and
    without it (the model's own decoder re-runs the whole prefix each step), timed round-robin in one process,
    for the Transformer above (source of S tokens) and a GPT (``gpt_mini``, 1-token prompt), at batch 1 and 8
    (``--gen-batch``). The tokens of the two runs are checked to be identical.
(c) Where a cached step's time goes (``--breakdown``): per position, the cached step against the matrix products
    it must do (the same weights, the same input widths: every Linear the step applies, including the output
    layer over the whole vocabulary), each the minimum over ``--gen-repeats`` runs so that preemption on a shared
    machine drops out. At batch 1 those products read every weight once per token (memory-bound matrix-vector
    products); the remainder is Python, dispatch and the small ops (attention, LayerNorm, cache writes).

The 1-minute load average before and after is printed: on a shared machine compare ratios within one run,
not absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import math
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
import torch.nn.functional as F

import paperzoo
from paperzoo.generate import generate
from paperzoo.models.transformer import Transformer, TransformerConfig, load_torch_transformer


class TorchSeq2Seq(nn.Module):
    """nn.Transformer with our model's embeddings, positions and output layer (shared with it by copy)."""

    def __init__(self, ours: Transformer) -> None:
        super().__init__()
        c = ours.cfg
        self.d_model = c.d_model
        self.src_embed = nn.Embedding(c.src_vocab_size, c.d_model)
        self.tgt_embed = nn.Embedding(c.tgt_vocab_size, c.d_model)
        self.transformer = nn.Transformer(c.d_model, c.h, c.N_enc, c.N_dec, c.d_ff, dropout=c.P_drop,
                                          batch_first=True, norm_first=c.norm_first)
        self.generator = nn.Linear(c.d_model, c.tgt_vocab_size, bias=False)
        self.generator.weight = self.tgt_embed.weight
        self.drop = nn.Dropout(c.P_drop)
        self.pos = ours.pos

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        scale = math.sqrt(self.d_model)
        s = self.drop(self.pos(self.src_embed(src) * scale))
        t = self.drop(self.pos(self.tgt_embed(tgt) * scale))
        causal = nn.Transformer.generate_square_subsequent_mask(tgt.shape[1], device=tgt.device)
        return self.generator(self.transformer(s, t, tgt_mask=causal, tgt_is_causal=True))


def make_pair(args: argparse.Namespace) -> tuple[Transformer, TorchSeq2Seq, Transformer]:
    """(ours configured like nn.Transformer, nn.Transformer wrapper with the same weights, ours as the paper)."""
    common = dict(src_vocab_size=args.vocab, tgt_vocab_size=args.vocab, N_enc=args.layers, N_dec=args.layers,
                  d_model=args.d_model, d_ff=args.d_ff, h=args.heads, P_drop=0.1)
    ours = Transformer(TransformerConfig(**common, attn_drop=0.1, act_drop=0.1, final_norm=True))
    ref = TorchSeq2Seq(ours)
    load_torch_transformer(ours, ref.transformer)
    with torch.no_grad():
        ref.src_embed.weight.copy_(ours.src_embed.weight)
        ref.tgt_embed.weight.copy_(ours.tgt_embed.weight)
    paper = Transformer(TransformerConfig(**common))
    return ours, ref, paper


def train_step(model: nn.Module, src: torch.Tensor, tgt: torch.Tensor, vocab: int) -> Callable[[], float]:
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    model.train()

    def step() -> float:
        logits = model(src, tgt[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, vocab), tgt[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    return step


def round_robin(steps: dict[str, Callable[[], object]], warmup: int, repeats: int) -> dict[str, list[float]]:
    for fn in steps.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(repeats):
        for name, fn in steps.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def spread(ts: list[float]) -> str:
    med = statistics.median(ts)
    return f"±{100 * (max(ts) - min(ts)) / 2 / med:.0f}%"


def bench_training(args: argparse.Namespace) -> list[list[str]]:
    torch.manual_seed(0)
    ours, ref, paper = make_pair(args)
    B, S, T = args.batch, args.seq, args.seq
    src = torch.randint(3, args.vocab, (B, S))  # no padding token (pad_id 0): neither model needs a mask
    tgt = torch.randint(3, args.vocab, (B, T + 1))
    with torch.no_grad():  # same configuration and weights => the same function
        ours.eval(), ref.eval()
        a = F.cross_entropy(ours(src, tgt[:, :-1]).flatten(0, 1), tgt[:, 1:].flatten())
        b = F.cross_entropy(ref(src, tgt[:, :-1]).flatten(0, 1), tgt[:, 1:].flatten())
    if not torch.allclose(a, b, rtol=1e-4, atol=1e-4):
        raise SystemExit(f"ours and nn.Transformer disagree: loss {a.item():.6f} vs {b.item():.6f}")
    steps = {"nn.Transformer": train_step(ref, src, tgt, args.vocab),
             "ours (same config as nn)": train_step(ours, src, tgt, args.vocab),
             "ours (paper dropout)": train_step(paper, src, tgt, args.vocab)}
    times = round_robin(steps, args.warmup, args.repeats)
    base = statistics.median(times["nn.Transformer"])
    rows = []
    for name, ts in times.items():
        med = statistics.median(ts)
        rows.append([name, f"{B * T / med:,.0f}", f"{1000 * med:.0f}", spread(ts), f"{base / med:.2f}x"])
    return rows


def generation_models(args: argparse.Namespace) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    tr = paperzoo.create_model("transformer_small", src_vocab_size=args.vocab, tgt_vocab_size=args.vocab,
                               N_enc=args.layers, N_dec=args.layers, d_model=args.d_model, d_ff=args.d_ff,
                               h=args.heads).eval()
    gpt = paperzoo.create_model("gpt_mini", vocab_size=args.vocab, block_size=args.gen_len + 1).eval()
    return tr, gpt


def bench_generation(args: argparse.Namespace) -> list[list[str]]:
    tr, gpt = generation_models(args)
    n = args.gen_len
    rows = []
    for gb in args.gen_batch:
        cases = {
            "Transformer": (tr, torch.randint(3, args.vocab, (gb, args.seq)), {"bos_id": 1}),
            "GPT (gpt_mini)": (gpt, torch.randint(3, args.vocab, (gb, 1)), {}),
        }
        for name, (model, src, kw) in cases.items():
            out: dict[bool, torch.Tensor] = {}

            def run(cache: bool, model=model, src=src, kw=kw, out=out) -> None:
                out[cache] = generate(model, src, method="greedy", max_len=n, eos_id=None, use_cache=cache, **kw)

            times = round_robin({"cached": lambda: run(True), "uncached": lambda: run(False)}, args.gen_warmup,
                                args.gen_repeats)
            same = "yes" if torch.equal(out[True], out[False]) and out[True].shape[1] == n else "NO"
            tc, tu = statistics.median(times["cached"]), statistics.median(times["uncached"])
            rows.append([name, f"{gb}x{n}", f"{gb * n / tc:,.0f}", f"{gb * n / tu:,.0f}", f"{tu / tc:.1f}x", same])
    return rows


def _step_linears(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """(weight, bias) of every matrix product one cached decoding step does, in order."""
    if getattr(model, "is_decoder_only", False):
        out = []
        for b in model.h:
            out += [(m.weight, m.bias) for m in (b.attn.in_proj, b.attn.out_proj, b.mlp.c_fc, b.mlp.c_proj)]
        return out + [(model.lm_head.weight, None)]
    out = []
    for layer in model.decoder.layers:
        e, ca = layer.cross_attn.embed_dim, layer.cross_attn
        wq = (ca.in_proj.weight[:e], None if ca.in_proj.bias is None else ca.in_proj.bias[:e])  # only Wq: K/V cached
        out += [(layer.self_attn.in_proj.weight, layer.self_attn.in_proj.bias),
                (layer.self_attn.out_proj.weight, layer.self_attn.out_proj.bias), wq,
                (ca.out_proj.weight, ca.out_proj.bias),
                (layer.ffn.linear1.weight, layer.ffn.linear1.bias), (layer.ffn.linear2.weight, layer.ffn.linear2.bias)]
    return out + [(model.generator.weight, None)]


@torch.inference_mode()
def bench_breakdown(args: argparse.Namespace, models: dict[str, tuple[nn.Module, torch.Tensor]]) -> list[list[str]]:
    n, rows = args.gen_len, []
    for name, (model, src) in models.items():
        linears = _step_linears(model)
        b = src.shape[0]
        inputs = [torch.zeros(b, 1, w.shape[1]) for w, _ in linears]  # (B, 1, C_in) as in the step
        step_t, lin_t = [math.inf] * n, [math.inf] * n
        for _ in range(max(args.gen_repeats, 1)):
            if model.is_decoder_only:
                state, tok = model.init_state(src[:, :-1]), src[:, -1]
            else:
                state, tok = model.init_state(src), src.new_full((b,), 1)
            for i in range(n):
                t0 = time.perf_counter()
                logits, state = model.step(tok, state)
                tok = logits.argmax(dim=-1)
                t1 = time.perf_counter()
                for x, (w, bias) in zip(inputs, linears):
                    F.linear(x, w, bias)
                t2 = time.perf_counter()
                step_t[i], lin_t[i] = min(step_t[i], t1 - t0), min(lin_t[i], t2 - t1)
        step, lin = 1000 * sum(step_t) / n, 1000 * sum(lin_t) / n
        mb = sum(w.numel() + (0 if bias is None else bias.numel()) for w, bias in linears) * 4 / 2**20
        rows.append([name, f"{b}", f"{step:.2f}", f"{lin:.2f} ({mb:.0f} MB of weights)", f"{step - lin:.2f}",
                     f"{100 * lin / step:.0f}%"])
    return rows


def cpu_model() -> str:
    """The CPU's model name as ``lscpu`` prints it (from /proc/cpuinfo), or the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--layers", type=int, default=3, help="encoder layers = decoder layers")
    p.add_argument("--d-ff", type=int, default=1024)
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=64, help="source and target length")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--gen-len", type=int, default=256)
    p.add_argument("--gen-batch", type=int, nargs="+", default=[1, 8], help="batch sizes for (b)")
    p.add_argument("--gen-warmup", type=int, default=1)
    p.add_argument("--gen-repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="tiny sizes, one repeat: checks the script runs")
    p.add_argument("--skip", choices=["train", "generate"], default=None)
    p.add_argument("--breakdown", action="store_true", help="(c): a cached step vs its matrix products alone")
    p.add_argument("--out", type=Path, default=None, help="also write the Markdown report here")
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.seq, args.repeats, args.warmup = 4, 16, 2, 1
        args.gen_len, args.gen_repeats, args.gen_warmup, args.gen_batch = 32, 1, 0, [1, 2]
    if args.threads:
        torch.set_num_threads(args.threads)
    load0 = os.getloadavg()[0]
    cmd = shlex.join(sys.argv if argv is None else ["benchmarks/bench_transformer.py", *argv])
    parts = [f"## Transformer benchmarks\n\nCommand: `python {cmd}`",
             f"Machine: {cpu_model()} ({platform.machine()}, {os.cpu_count()} CPUs), torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads, "
             f"load average {load0:.1f} before"]
    if args.skip != "train":
        rows = bench_training(args)
        parts.append(f"### (a) Training, d_model {args.d_model}, {args.heads} heads, {args.layers}+{args.layers} "
                     f"layers, FF {args.d_ff}, vocab {args.vocab}, batch {args.batch}x{args.seq}\n\n"
                     + md_table(["model", "target tokens/s", "ms/step", "spread", "vs nn.Transformer"], rows))
    if args.skip != "generate":
        rows = bench_generation(args)
        parts.append(f"### (b) Greedy generation of {args.gen_len} tokens, KV cache vs none\n\n"
                     + md_table(["model", "batch x tokens", "cached tok/s", "uncached tok/s", "speed-up",
                                 "same tokens"], rows))
    if args.breakdown:
        tr, gpt = generation_models(args)
        models = {"Transformer": (tr, torch.randint(3, args.vocab, (1, args.seq))),
                  "GPT (gpt_mini)": (gpt, torch.randint(3, args.vocab, (1, 1)))}
        rows = bench_breakdown(args, models)
        parts.append(f"### (c) One cached greedy step at batch 1, mean over {args.gen_len} positions of the "
                     f"per-position minimum over {args.gen_repeats} runs\n\n"
                     + md_table(["model", "batch", "cached step ms", "its matrix products alone, ms",
                                 "rest (Python, small ops) ms", "share in products"], rows))
    parts.append(f"Load average after: {os.getloadavg()[0]:.1f}")
    report = "\n\n".join(parts)
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report + "\n")
    return report


if __name__ == "__main__":
    main()
