"""Benchmarks: params, FLOPs, inference and training throughput, memory, and how close we get to the machine.

Method (per model):
* FLOPs: one forward pass counted by :func:`paperzoo.flops.count_flops` on the ``meta`` device (multiply-adds
  x 2, attention added by formula). A training step is counted as 3x the forward FLOPs (backward ≈ 2x forward),
  the usual approximation (Kaplan et al. 2020, arXiv:2001.08361, Sec. 2.1).
* Time: ``warmup`` untimed iterations, then ``repeats`` timed ones; we report the median and the spread
  (min-max, as a percentage of the median). Inference runs under ``torch.inference_mode``; a training step is
  forward + cross-entropy + backward + SGD step.
* Utilization: achieved GFLOP/s divided by the machine's measured dense matmul GFLOP/s at the same dtype
  (:func:`matmul_gflops`), so a number near 100 % means the model runs as fast as a large GEMM.
* Memory: on CUDA, ``torch.cuda.max_memory_allocated`` of a training step. On CPU, PyTorch has no allocator
  statistics, so we report what a training step must hold: parameters + gradients + momentum + the tensors
  autograd saves for backward (measured with ``saved_tensors_hooks``).
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from paperzoo.flops import count_flops, count_params
from paperzoo.registry import create_model, get_entry, list_models

__all__ = ["BenchConfig", "BenchResult", "SPREAD_WARN_PCT", "matmul_gflops", "bench_model", "native_bf16",
           "resolve_models", "trust_notes"]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class BenchConfig:
    batch_size: int = 64
    input_size: int | None = None  # None: the model's default size (or 32 with small_input)
    in_chans: int = 3
    num_classes: int = 1000  # as `paperzoo models` counts parameters
    small_input: bool = False
    dtype: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    fused: bool = False  # BatchNorms folded into their convolutions (paperzoo.fuse): inference only
    runtime: str = "torch"  # or "onnxruntime": the fused model exported to ONNX, run by ONNX Runtime (fp32)
    device: str = "cpu"
    threads: int | None = None
    warmup: int = 3
    repeats: int = 10
    modes: tuple[str, ...] = ("infer", "train")

    def __post_init__(self) -> None:
        if self.runtime not in ("torch", "onnxruntime"):
            raise ValueError(f"unknown runtime {self.runtime!r}; valid: torch, onnxruntime")
        if self.runtime == "onnxruntime" and (self.dtype != "fp32" or self.compile):
            raise ValueError("the onnxruntime benchmark runs the exported fp32 graph: no --precision or --compile")
        if (self.fused or self.runtime != "torch") and "train" in self.modes:
            raise ValueError("a fused or exported model is for inference only: bench it with --mode infer")


@dataclass
class BenchResult:
    name: str
    params: int
    input: str
    batch: int
    dtype: str
    gflops_per_img: float
    fused: bool | None = None  # True: BatchNorms folded (paperzoo.fuse); None leaves the column out
    runtime: str | None = None  # "onnxruntime" when not torch; None leaves the column out
    infer_img_s: float | None = None
    infer_ms: float | None = None
    infer_spread_pct: float | None = None
    infer_gflop_s: float | None = None
    train_img_s: float | None = None
    train_ms: float | None = None
    train_spread_pct: float | None = None
    train_gflop_s: float | None = None
    train_mem_mb: float | None = None
    util_infer_pct: float | None = None
    util_train_pct: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _time(fn: Callable[[], object], warmup: int, repeats: int, device: str) -> list[float]:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def matmul_gflops(dtype: str = "fp32", device: str = "cpu", n: int = 2048, repeats: int = 5) -> float:
    """Measured dense matmul throughput (GFLOP/s) of an n x n x n product, the best of ``repeats``."""
    a = torch.randn(n, n, device=device, dtype=DTYPES[dtype])
    b = torch.randn(n, n, device=device, dtype=DTYPES[dtype])
    times = _time(lambda: a @ b, 2, repeats, device)
    return 2 * n**3 / min(times) / 1e9


def native_bf16() -> list[str]:
    """The CPU's native bf16 features, from /proc/cpuinfo: ``avx512_bf16`` (bf16 dot products) and ``amx_bf16``
    (Intel AMX tiles, where a bf16 matmul runs ~8x fp32). Empty elsewhere: there bf16 autocast is emulated and
    usually slower than fp32, so the fast inference path stays fp32."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return []
    return [flag for flag in ("avx512_bf16", "amx_bf16") if flag in flags]


def resolve_models(patterns: Sequence[str]) -> list[str]:
    """Expand names and globs over the registry (image models), keeping order and dropping repeats."""
    out: list[str] = []
    for p in patterns:
        names = list_models(p, kind="image") if any(c in p for c in "*?[") else [get_entry(p).name]
        if not names:
            raise ValueError(f"no image model matches {p!r}")
        out += [n for n in names if n not in out]
    return out


def _saved_bytes(model: nn.Module, x: torch.Tensor, y: torch.Tensor, autocast: contextlib.AbstractContextManager
                 ) -> int:
    """Bytes of the activations autograd saves for backward in one forward pass (parameters excluded; each
    storage counted once, since many saved tensors are views of one buffer)."""
    seen = {p.untyped_storage().data_ptr() for p in model.parameters()}
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        ptr = t.untyped_storage().data_ptr()
        if ptr not in seen:
            seen.add(ptr)
            total += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast:
        F.cross_entropy(model(x), y)
    return total


def _onnxruntime_runner(model: nn.Module, x: torch.Tensor, threads: int) -> Callable[[torch.Tensor], object]:
    """``model`` exported to ONNX (dynamic batch, in a temporary file) as an ONNX Runtime session; the returned
    function runs it on a tensor like ``x``."""
    import tempfile
    from pathlib import Path

    from paperzoo.deploy.export import export_graph, onnx_session

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        # traced on 2 images: torch.export specializes a batch of 1, fixing the batch dimension
        export_graph(model.eval(), x[:1].expand(2, *x.shape[1:]).contiguous(), path, "onnx")
        sess = onnx_session(path, threads)
    name = sess.get_inputs()[0].name
    return lambda t: sess.run(None, {name: t.contiguous().numpy()})


def _build(name: str, cfg: BenchConfig, shape: tuple[int, ...], kw: dict) -> tuple[nn.Module, torch.Tensor,
                                                                                  Callable[[torch.Tensor], object]]:
    """(model, input batch, what to time on it): eager, fused, compiled or exported as ``cfg`` asks."""
    model = create_model(name, num_classes=cfg.num_classes, in_chans=cfg.in_chans, **kw).to(cfg.device)
    mf = torch.channels_last if cfg.channels_last else torch.contiguous_format
    x = torch.randn(shape, device=cfg.device).to(memory_format=mf)
    if cfg.fused or cfg.runtime != "torch":
        from paperzoo.deploy import fuse

        model = fuse(model, x[:1].contiguous())
    model = model.to(memory_format=mf)
    if cfg.runtime == "onnxruntime":
        return model, x, _onnxruntime_runner(model, x, cfg.threads or torch.get_num_threads())
    return model, x, torch.compile(model) if cfg.compile else model


def bench_model(name: str, cfg: BenchConfig, machine_gflops: float | None = None) -> BenchResult:
    """Benchmark one registered image model under ``cfg``."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    entry = get_entry(name)
    kw = {"small_input": True} if cfg.small_input else {}
    size = cfg.input_size or (32 if cfg.small_input else entry.input_size[0])
    shape = (cfg.batch_size, cfg.in_chans, size, size)

    with torch.device("meta"):
        meta_model = create_model(name, num_classes=cfg.num_classes, in_chans=cfg.in_chans, **kw)
        fwd_flops = count_flops(meta_model, inputs=torch.zeros(1, *shape[1:], device="meta"))
    del meta_model

    device, dtype = cfg.device, DTYPES[cfg.dtype]
    model, x, run = _build(name, cfg, shape, kw)
    y = torch.randint(0, cfg.num_classes, (cfg.batch_size,), device=device)
    # low precision through autocast: weights stay fp32 (as in real mixed-precision training)
    autocast = (torch.autocast(device_type=torch.device(device).type, dtype=dtype) if dtype != torch.float32
                else contextlib.nullcontext())

    res = BenchResult(name=name, params=count_params(model), input=f"{size}x{size}", batch=cfg.batch_size,
                      dtype=cfg.dtype, gflops_per_img=fwd_flops / 1e9, fused=True if cfg.fused else None,
                      runtime=None if cfg.runtime == "torch" else cfg.runtime)

    if "infer" in cfg.modes:
        model.eval()

        def infer() -> None:
            with torch.inference_mode(), autocast:
                run(x)

        t = _time(infer, cfg.warmup, cfg.repeats, device)
        med = statistics.median(t)
        res.infer_ms, res.infer_img_s = med * 1e3, cfg.batch_size / med
        res.infer_spread_pct = 100 * (max(t) - min(t)) / med
        res.infer_gflop_s = fwd_flops * res.infer_img_s / 1e9

    if "train" in cfg.modes:
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

        def step() -> None:
            with autocast:
                loss = F.cross_entropy(run(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        t = _time(step, cfg.warmup, cfg.repeats, device)
        med = statistics.median(t)
        res.train_ms, res.train_img_s = med * 1e3, cfg.batch_size / med
        res.train_spread_pct = 100 * (max(t) - min(t)) / med
        res.train_gflop_s = 3 * fwd_flops * res.train_img_s / 1e9
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
            step()
            res.train_mem_mb = torch.cuda.max_memory_allocated() / 2**20
        else:
            state = sum(p.numel() * p.element_size() for p in model.parameters()) * 3  # weights, grads, momentum
            res.train_mem_mb = (state + _saved_bytes(model, x, y, autocast)) / 2**20

    if machine_gflops:
        if res.infer_gflop_s:
            res.util_infer_pct = 100 * res.infer_gflop_s / machine_gflops
        if res.train_gflop_s:
            res.util_train_pct = 100 * res.train_gflop_s / machine_gflops
    return res


#: a min-max spread of the timed repeats above this share of the median makes a row's speed untrustworthy
SPREAD_WARN_PCT = 25.0


def trust_notes(results: Sequence[BenchResult], cfg: BenchConfig) -> list[str]:
    """Lines a reader needs before trusting the table.

    * A wide spread: the timed repeats of a row differ by more than :data:`SPREAD_WARN_PCT` % of their median
      (a busy machine, a frequency change, too few repeats): its throughput is a guess.
    * Parameters that differ from ``paperzoo models``: that command counts each model at its registered default
      (1000 classes, 3 input channels, the ImageNet stem); the benchmark builds what its options ask for.
    """
    notes = []
    for r in results:
        for mode, spread in (("inference", r.infer_spread_pct), ("training", r.train_spread_pct)):
            if spread is not None and spread > SPREAD_WARN_PCT:
                notes.append(f"warning: {r.name}: the {mode} times spread {spread:.0f} % of their median over "
                             f"{cfg.repeats} repeats (> {SPREAD_WARN_PCT:.0f} %): a busy machine or too few "
                             "repeats; re-run with more --repeats on a quiet machine before trusting it")
    changed = [f"{k}={v}" for k, v, default in (("num_classes", cfg.num_classes, 1000),
                                                ("in_chans", cfg.in_chans, 3),
                                                ("small_input", cfg.small_input, False)) if v != default]
    if changed:
        for r in (r for r in results if not r.fused):  # folding changes the count by construction
            with torch.device("meta"):
                registered = count_params(create_model(r.name))
            if registered != r.params:
                notes.append(f"note: {r.name}: {r.params:,} parameters as benchmarked ({', '.join(changed)}); "
                             f"`paperzoo models` counts {registered:,} at the registered default")
    return notes


def plot_results(results: Sequence[BenchResult], path: str) -> None:
    """Throughput vs GFLOPs and vs params, one point per model, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = "train_img_s" if any(r.train_img_s for r in results) else "infer_img_s"
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    for ax, xkey, xlabel in ((axes[0], "gflops_per_img", "GFLOPs per image (forward)"),
                             (axes[1], "params", "parameters (millions)")):
        for r in results:
            xv = getattr(r, xkey) / (1e6 if xkey == "params" else 1)
            ax.scatter(xv, getattr(r, key), s=30)
            ax.annotate(r.name, (xv, getattr(r, key)), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(("training" if key == "train_img_s" else "inference") + " throughput (img/s)")
        ax.grid(True, which="both", alpha=0.3)
    r0 = results[0]
    fig.suptitle(f"paperzoo bench: batch {r0.batch}, {r0.input}, {r0.dtype}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
