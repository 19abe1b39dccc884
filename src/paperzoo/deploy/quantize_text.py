"""Dynamic int8 for the text models: the Transformer's, GPT's and the LSTM/GRU models' matrices in int8.

Post-training *dynamic* quantization, without calibration data: the affine scheme r = S·(q − Z) of Jacob et al.,
"Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference",
arXiv:1712.05877 (Sec. 2.1), applied as PyTorch's ``quantize_dynamic`` applies it to LSTMs and Transformers
(and Zafrir et al., "Q8BERT: Quantized 8Bit BERT", arXiv:1910.06188, to BERT's linears):

* **weights**, every ``nn.Linear`` weight and the recurrent matrices W_ih, W_hh, W_hr (models/rnn.py and the
  RNNsearch decoder cell): symmetric int8 **per output channel** (per row o), Z = 0,
  s_o = max_i |W_oi| / 127,  q_oi = round(W_oi / s_o) ∈ [−127, 127];
* **activations**, quantized **per batch** when the linear runs: the range [min(x, 0), max(x, 0)] onto the uint8
  codes 0..127 (7 bits, FBGEMM's ``reduce_range``: a u8·s8 pair sum then cannot saturate int16 on CPUs without
  VNNI), s_x = (max − min) / 127, z_x = round(−min / s_x);
* **product**: y_o = s_x s_o Σ_i q_oi (q_x,i − z_x) + b_o, the int32 sums in FBGEMM's dynamic int8 linear
  (Khudia et al., "FBGEMM: Enabling High-Performance Low-Precision Deep Learning Inference", arXiv:2101.05615),
  the kernel behind ``torch.ao.quantization.quantize_dynamic``; :func:`dynamic_int8_linear` is the same formula
  in fp32, the reference it is tested against and the fallback where the kernel is missing.

Deviations from ``quantize_dynamic`` (why it is not called):
* ``quantize_dynamic`` swaps each ``nn.Linear`` for a new module, but the KV-cached decoding steps
  (models/fast_decode.py) and the RNNsearch decoder read the weight tensors themselves (``F.linear(x,
  layer.in_proj.weight)``), so a swap would leave them in fp32. Here the weight *tensor* is replaced by an
  :class:`Int8Weight`, a parameter whose ``F.linear`` runs the int8 kernel wherever the model calls it.
  (``torch.ao.quantization`` also warns in torch 2.13 that it is deprecated in favour of torchao.)
* Every other use of a quantized matrix (the fused LSTM/GRU kernels of the encoders, a tied embedding's lookup,
  a column slice) computes in fp32 with the int8-rounded weights: the file and the numbers are int8, the
  speed of those ops is fp32's. Embeddings that are not tied to a linear stay fp32.
* CPU only (FBGEMM); the saved file loads without unpickling (safetensors: int8 ``<name>.int8``, fp32
  ``<name>.scale``, the run's metadata in the header) through :func:`load_int8_text` and therefore
  ``paperzoo lm``/``paperzoo translate`` given the file.
"""

from __future__ import annotations

import json
import os
import statistics
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Int8Weight", "quantize_weight", "dynamic_int8_linear", "int8_error_bound", "quantizable_weights",
           "quantize_text_model", "save_text_weights", "load_int8_text", "is_int8_text_file", "greedy_speed",
           "greedy_inputs", "decode_once", "TextQuantReport", "quantize_text_run"]

FORMAT = "paperzoo-text-int8-dynamic"
QMAX_X = 127  # activation codes 0..127 (reduce_range)
RECURRENT = ("weight_ih", "weight_hh", "weight_hr")  # the matrices of models/rnn.py and the RNNsearch cell


def quantize_weight(w: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric per-row int8: (q (O, I) int8, s (O,) fp32) with w ≈ s[:, None] · q, |w − s q| ≤ s / 2."""
    s = w.detach().float().abs().amax(dim=1).clamp_min(1e-12) / 127  # s_o = max_i |W_oi| / 127
    q = torch.round(w.detach().float() / s[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, s


def _activation_qparams(x: Tensor) -> tuple[Tensor, Tensor]:
    """(s_x, z_x) of one batch: [min(x, 0), max(x, 0)] onto 0..127, zero exactly representable."""
    lo, hi = x.min().clamp(max=0), x.max().clamp(min=0)
    s = ((hi - lo) / QMAX_X).clamp_min(1e-12)
    return s, torch.round(-lo / s).clamp(0, QMAX_X)


def dynamic_int8_linear(x: Tensor, q: Tensor, s: Tensor, bias: Tensor | None) -> Tensor:
    """y = s_x s_o Σ_i q_oi (q_x,i − z_x) + b in fp32: the int8 kernel's arithmetic, written out (the reference)."""
    s_x, z_x = _activation_qparams(x)
    x_hat = (torch.round(x / s_x) + z_x).clamp_(0, QMAX_X).sub_(z_x).mul_(s_x)  # x̂ = s_x (q_x − z_x)
    return F.linear(x_hat, q.float() * s[:, None], bias)


def int8_error_bound(x: Tensor, w: Tensor, s: Tensor) -> Tensor:
    """|y − ŷ| ≤ Σ_i |w_oi − ŵ_oi| |x̂_i| + |w_oi| |x_i − x̂_i| ≤ (s_o / 2) Σ_i (|x_i| + s_x / 2) + (s_x / 2) Σ_i |w_oi|
    per output (..., O), from |w − ŵ| ≤ s_o / 2 and |x − x̂| ≤ s_x / 2 (round to nearest, no clipping)."""
    s_x, _ = _activation_qparams(x)
    sum_x = (x.abs() + s_x / 2).sum(-1, keepdim=True)  # (..., 1)
    return s / 2 * sum_x + s_x / 2 * w.abs().sum(1)


def _prepack(q: Tensor, s: Tensor) -> Any | None:
    """FBGEMM's packed int8 weight, or None where the quantized kernels are missing (then the fp32 reference)."""
    try:
        with warnings.catch_warnings():  # quantized-tensor constructors warn that they are deprecated (torch 2.13)
            warnings.simplefilter("ignore")
            qw = torch._make_per_channel_quantized_tensor(q, s.double(), torch.zeros_like(s, dtype=torch.long), 0)
            return torch.ops.quantized.linear_prepack(qw, None)
    except (AttributeError, RuntimeError):
        return None


class Int8Weight(nn.Parameter):
    """A weight matrix stored as int8 rows + scales; ``F.linear`` with it runs dynamic int8.

    The tensor itself holds the dequantized values s_o·q (fp32), so any other op on it (slices, the fused
    RNN kernels, an embedding lookup of a tied matrix) sees the int8-rounded weights. ``F.linear(x, w, b)`` on
    a CPU fp32 ``x`` without autograd runs FBGEMM's dynamic int8 linear instead; a row slice ``w[a:b]`` (how
    the KV-cached cross-attention takes Wᑫ and [Wᴷ; Wⱽ]) is again an Int8Weight, cached per slice.
    """

    q: Tensor
    scale: Tensor

    def __new__(cls, q: Tensor, scale: Tensor) -> Int8Weight:
        self = super().__new__(cls, q.float() * scale[:, None], requires_grad=False)
        self.q, self.scale, self.packed, self._rows = q, scale, _prepack(q, scale), {}
        return self

    def linear(self, x: Tensor, bias: Tensor | None) -> Tensor:
        if self.packed is None:
            return dynamic_int8_linear(x, self.q, self.scale, bias)
        y = torch.ops.quantized.linear_dynamic(x, self.packed, True)  # reduce_range=True: codes 0..127
        return y if bias is None else y + bias

    def rows(self, sl: slice) -> Int8Weight:
        key = sl.indices(self.q.shape[0])
        if key not in self._rows:
            self._rows[key] = Int8Weight(self.q[sl], self.scale[sl])
        return self._rows[key]

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN206
        kwargs = kwargs or {}
        if func is F.linear and len(args) >= 2 and type(args[1]) is cls and type(args[0]) is Tensor:
            x, bias = args[0], args[2] if len(args) > 2 else kwargs.get("bias")
            autograd = torch.is_grad_enabled() and x.requires_grad
            if x.device.type == "cpu" and x.dtype == torch.float32 and not autograd:
                return args[1].linear(x, bias)
        if func is Tensor.__getitem__ and type(args[0]) is cls and isinstance(args[1], slice):
            return args[0].rows(args[1])
        with torch._C.DisableTorchFunctionSubclass():  # anything else: plain fp32 on the dequantized values
            return func(*args, **kwargs)

    def __repr__(self) -> str:
        return f"Int8Weight({tuple(self.q.shape)}, kernel={'fbgemm' if self.packed is not None else 'reference'})"


# ------------------------------------------------------------------------------------------ the model
def quantizable_weights(model: nn.Module) -> list[str]:
    """Names of the matrices to quantize: every ``nn.Linear`` weight, and the recurrent W_ih / W_hh / W_hr."""
    names = [f"{m_name}.weight" if m_name else "weight" for m_name, m in model.named_modules()
             if isinstance(m, nn.Linear)]
    names += [n for n, p in model.named_parameters() if p.dim() == 2 and n.split(".")[-1].startswith(RECURRENT)]
    return names


def _set_param(model: nn.Module, name: str, value: nn.Parameter) -> None:
    owner, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(owner) if owner else model, leaf, value)


def quantize_text_model(model: nn.Module) -> nn.Module:
    """Replace, in place, every quantizable matrix by an :class:`Int8Weight` (a tied matrix by one shared
    Int8Weight); returns the model in eval mode."""
    model.eval()
    todo = {id(model.get_parameter(n)) for n in quantizable_weights(model)}
    done: dict[int, Int8Weight] = {}  # id of the fp32 tensor -> its Int8Weight: a tied matrix stays tied
    for name, p in list(model.named_parameters(remove_duplicate=False)):
        if id(p) in todo and not isinstance(p, Int8Weight):
            if id(p) not in done:
                done[id(p)] = Int8Weight(*quantize_weight(p))
            _set_param(model, name, done[id(p)])
    return model


def _weights_and_ties(model: nn.Module) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The tensors to save (each storage once) and {alias: saved name} for tied parameters."""
    first: dict[int, str] = {}
    tensors, ties = {}, {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            ties[name] = first[id(p)]
            continue
        first[id(p)] = name
        if isinstance(p, Int8Weight):
            tensors[f"{name}.int8"], tensors[f"{name}.scale"] = p.q, p.scale
        else:
            tensors[name] = p.detach()
    persistent = model.state_dict().keys()
    for name, b in model.named_buffers():
        if name in persistent:
            tensors[name] = b.detach()
    return tensors, ties


def save_text_weights(model: nn.Module, meta: dict[str, Any], path: str | os.PathLike) -> int:
    """Write the model (quantized or not) as safetensors, tied tensors once, ``meta`` in the header; returns
    the file size in bytes. Plain fp32 models are written the same way, for a fair size ratio."""
    from paperzoo.train.checkpoint import _safetensors_bytes, atomic_write_bytes

    tensors, ties = _weights_and_ties(model)
    meta = {**meta, "quantization": {**meta.get("quantization", {}), "ties": ties}}
    if any(isinstance(p, Int8Weight) for p in model.parameters()):
        meta["quantization"]["format"] = FORMAT
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, _safetensors_bytes(tensors, {"paperzoo": json.dumps(meta)}))
    return path.stat().st_size


def is_int8_text_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a file written by :func:`save_text_weights` for a quantized text model."""
    from paperzoo.train.checkpoint import _safetensors_header

    p = Path(path)
    header = _safetensors_header(p) if p.is_file() and p.suffix == ".safetensors" else None
    return bool(header) and FORMAT in header.get("paperzoo", "")


def load_int8_text(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> Any:
    """The :class:`~paperzoo.text.tasks.TextCheckpoint` of an int8 file (safetensors, digest-checked, no pickle)."""
    from paperzoo.registry import create_model
    from paperzoo.text.tasks import TextCheckpoint
    from paperzoo.text.tokenizers import tokenizer_from_dict
    from paperzoo.train.checkpoint import read_meta
    from paperzoo.weights import read_state_dict

    if torch.device(device).type != "cpu":
        raise ValueError(f"{path}: the int8 text model runs on the CPU only (FBGEMM), not on {device}")
    meta, sd = read_meta(path), read_state_dict(path)
    q = meta.get("quantization", {})
    if q.get("format") != FORMAT:
        raise ValueError(f"{path} is not a dynamic-int8 text model (paperzoo quantize writes one)")
    model = create_model(meta["model"]["name"], **meta["model"]["args"]).eval()
    names = {k[: -len(".int8")] for k in sd if k.endswith(".int8")}
    shared: dict[str, Int8Weight] = {n: Int8Weight(sd.pop(f"{n}.int8"), sd.pop(f"{n}.scale")) for n in names}
    for alias, target in q.get("ties", {}).items():
        if target in shared:
            shared[alias] = shared[target]
        else:
            sd[alias] = sd[target]
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if unexpected or set(missing) - set(shared):
        raise ValueError(f"{path} does not match {meta['model']['name']}: missing {sorted(set(missing) - set(shared))}"
                         f", unexpected {sorted(unexpected)}")
    for name, w in shared.items():
        _set_param(model, name, w)
    toks = {k: tokenizer_from_dict(v) for k, v in meta["tokenizers"].items()}
    return TextCheckpoint(model, meta, toks, Path(path))


# -------------------------------------------------------------------------------- quality and speed of a run
def _quality(ck: Any, limit: int | None) -> dict[str, float]:
    """The task's own ``evaluate`` on held-out text: the LM's validation tail (loss, perplexity), or the
    translation test split (loss, token accuracy, exact match, BLEU, chrF; greedy decoding as the run's)."""
    from paperzoo.text.config import text_config_from_dict
    from paperzoo.text.tasks import LanguageModelTask, TranslationTask, load_translation_pairs

    data = dict(ck.meta["data"])
    if ck.task == "language_model":
        cfg = text_config_from_dict({"data": {**data, "val_batches": limit},
                                     "model": {"name": ck.meta["model"]["name"]}})
        return LanguageModelTask(cfg, tokenizer=ck.tokenizers["lm"]).evaluate(ck.model)
    cfg = text_config_from_dict({"data": {**data, "val_decode": None}, "decode": ck.meta.get("decode", {}),
                                 "model": {"name": ck.meta["model"]["name"]}})
    test = load_translation_pairs(cfg)["test"][:limit]
    task = TranslationTask(cfg, tokenizers=(ck.tokenizers["src"], ck.tokenizers["tgt"]),
                           pairs={"train": test[:1], "val": test})  # evaluate() scores "val": here the test split
    return {k.replace("val_", "test_"): v for k, v in task.evaluate(ck.model).items()}


def greedy_inputs(ck: Any, batch: int, new_tokens: int = 60) -> tuple[Tensor, Tensor | None, dict[str, Any]]:
    """(src, src_lengths, generate kwargs) of a timing run at ``batch``: the LM continues a newline for
    ``new_tokens`` (kept inside its block, so that every step is cached); the translator decodes the first
    ``batch`` test sources with the run's ``max_len``, stopping at EOS."""
    if ck.task == "language_model":
        block = ck.meta["model"]["args"].get("block_size") or new_tokens + 1
        prompt = ck.tokenizers["lm"].encode("\n")[-1:]
        return torch.tensor([prompt] * batch), None, {"max_len": min(new_tokens, block - 1)}
    from paperzoo.text.config import text_config_from_dict
    from paperzoo.text.data import pad_sequences
    from paperzoo.text.tasks import load_translation_pairs

    pairs = load_translation_pairs(text_config_from_dict({"data": ck.meta["data"]}))["test"][:batch]
    s_tok, t_tok = ck.tokenizers["src"], ck.tokenizers["tgt"]
    src, lengths = pad_sequences([s_tok.encode(s, add_eos=True) for s, _ in pairs], s_tok.pad_id)
    return src, lengths, {"max_len": ck.meta.get("decode", {}).get("max_len") or new_tokens,
                          "bos_id": t_tok.bos_id, "eos_id": t_tok.eos_id, "pad_id": t_tok.pad_id}


@torch.no_grad()
def decode_once(model: nn.Module, src: Tensor, lengths: Tensor | None, kw: dict[str, Any]) -> tuple[float, int]:
    """(seconds, tokens made) of one greedy decoding; padding after EOS is not counted."""
    from paperzoo.generate import generate

    t0 = time.perf_counter()
    out = generate(model, src, lengths, method="greedy", **kw)
    return time.perf_counter() - t0, int((out != kw["pad_id"]).sum()) if "pad_id" in kw else out.numel()


def greedy_speed(ck: Any, batch: int, *, new_tokens: int = 60, repeats: int = 3) -> float:
    """Tokens per second of KV-cached greedy decoding at ``batch`` (:func:`greedy_inputs`): the median of
    ``repeats`` timed runs after a warm-up."""
    src, lengths, kw = greedy_inputs(ck, batch, new_tokens)
    runs = [decode_once(ck.model, src, lengths, kw) for _ in range(repeats + 1)][1:]
    return statistics.median(n / t for t, n in runs)


@dataclass
class TextQuantReport:
    path: str
    task: str
    model: str
    quantized_matrices: int
    size_fp32_bytes: int
    size_int8_bytes: int
    quality_fp32: dict[str, float]
    quality_int8: dict[str, float]
    tokens_per_s: dict[str, dict[str, float]] = field(default_factory=dict)  # {"batch 1": {"fp32": .., "int8": ..}}
    threads: int = 1
    kernel: str = "fbgemm"


def quantize_text_run(run: str | os.PathLike, out: str | os.PathLike, *, which: str = "best",
                      limit: int | None = None, batches: tuple[int, ...] = (1, 8)) -> TextQuantReport:
    """Write the run's text model as dynamic int8 to ``out`` (report in ``<out>.json``); quality on held-out text
    (``limit``: test sentences / validation batches) and greedy tokens/s at ``batches``, fp32 and int8."""
    import tempfile

    from paperzoo.text.tasks import load_text_checkpoint
    from paperzoo.train.checkpoint import atomic_write_bytes

    ck = load_text_checkpoint(run, which)
    with tempfile.TemporaryDirectory() as tmp:
        size32 = save_text_weights(ck.model, ck.meta, Path(tmp) / "fp32.safetensors")
    q32 = _quality(ck, limit)
    speed = {f"batch {b}": {"fp32": greedy_speed(ck, b)} for b in batches}
    quantize_text_model(ck.model)
    n = sum(isinstance(p, Int8Weight) for p in ck.model.parameters())
    q8 = _quality(ck, limit)
    meta = {**ck.meta, "source": str(ck.path), "quantization": {"quality_fp32": q32, "quality_int8": q8}}
    if ck.task == "language_model":  # `paperzoo lm sample` prints the file's own validation perplexity
        meta["metrics"] = {**ck.meta.get("metrics", {}), **q8}
    size8 = save_text_weights(ck.model, meta, out)
    for b in batches:
        speed[f"batch {b}"]["int8"] = greedy_speed(ck, b)
    kernel = "fbgemm" if next(p for p in ck.model.parameters() if isinstance(p, Int8Weight)).packed is not None \
        else "reference"
    report = TextQuantReport(str(out), ck.task, ck.meta["model"]["name"], n, size32, size8, q32, q8, speed,
                             torch.get_num_threads(), kernel)
    atomic_write_bytes(Path(f"{out}.json"), (json.dumps(asdict(report), indent=1) + "\n").encode())
    return report
