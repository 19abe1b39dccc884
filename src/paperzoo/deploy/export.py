"""Export a trained image classifier for inference outside paperzoo: ONNX or a ``torch.export`` program (``.pt2``).

The exported graph is the **fused** model (:func:`paperzoo.deploy.fuse`): BatchNorms folded, eval mode, fp32,
with a dynamic batch dimension and the height and width of its training images. Beside the file a JSON "card"
(``<file>.json``) keeps what a user needs to feed it: the class names in output order, the input size and the
per-channel normalization ``(x / 255 - mean) / std`` that inputs must get (the graph takes normalized float
images, as the model did in training), the source run and the tolerance the export was verified to.

Verification: traced on a batch of 2, the exported model runs on a seeded batch of 3 (ONNX through ONNX Runtime,
``.pt2`` through ``torch.export.load``), so a batch dimension fixed by the trace is caught, and its logits must
equal the eager model's within ``atol = rtol_of_max x max |logit|``;
otherwise the file is removed and ``RuntimeError`` says by how much they differed.

A model torch cannot trace into one graph (data-dependent Python control flow) fails with the exporter's reason
in one line (``ExportError``, a ``ValueError`` the CLI reports with exit status 2).

Faster graphs for the transformers (ViT, Swin: their time is in matmuls and attention, which eager PyTorch
already runs with oneDNN, so a plain export gains little):

* ONNX of a model with attention is written at opset 23, whose ``Attention`` operator holds each
  ``scaled_dot_product_attention`` as one node (one ONNX Runtime kernel) instead of MatMul-Softmax-MatMul.
* ``compiled=True`` (``.pt2`` only) compiles the exported program ahead of time with AOTInductor
  (``torch._inductor.aoti_compile_and_package``, weights frozen into the package) into C++ kernels; load it with
  :func:`load_exported`. ``precision="bf16"`` runs that package in bf16 inside (fp32 images in, fp32 logits out),
  which uses AMX / AVX-512 BF16 matmuls where the CPU has them; its logits are verified within
  ``RTOL_OF_MAX_BF16`` (bf16 keeps 8 significant bits) instead of fp32 rounding.
* :func:`quantize_dynamic_onnx`: ONNX Runtime's dynamic int8 of the MatMul / Gemm weights (per output channel,
  activations quantized per call), the int8 of transformers; it changes the logits by a few percent.
"""

from __future__ import annotations

import copy
import functools
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from paperzoo.train.checkpoint import atomic_write_bytes

__all__ = ["EXPORT_FORMATS", "ExportCard", "ExportError", "export_graph", "export_model", "export_run", "has_attention",
           "load_card", "load_exported", "onnx_session", "predict_onnx", "quantize_dynamic_onnx", "run_onnx"]

EXPORT_FORMATS = ("onnx", "pt2")
#: largest |exported - eager| logit difference accepted, relative to the largest |logit| (fp32 rounding of a
#: differently ordered graph: ONNX Runtime fuses and reorders reductions)
RTOL_OF_MAX = 1e-4
#: the same for a bf16 package: bf16 rounds every weight and activation to 8 significant bits, which moves ViT-Ti's
#: and Swin-T's logits by about 1 % of their largest value (measured); 5 % still catches a wrong graph
RTOL_OF_MAX_BF16 = 5e-2
#: ONNX opset of models with attention: the first with the ``Attention`` operator (one node per SDPA)
ATTENTION_OPSET = 23
PRECISIONS = ("fp32", "bf16")


class ExportError(ValueError):
    """The model cannot be exported in that format (the exporter's reason in one line)."""


@dataclass
class ExportCard:
    """What travels beside an exported file (``<file>.json``)."""

    format: str
    model: str
    classes: list[str]
    input_size: list[int]  # (C, H, W)
    mean: list[float]
    std: list[float]
    max_abs_diff: float  # |exported - eager| on the verification batch, relative to max |logit|
    source: str = ""
    fused: bool = True
    opset: int | None = None
    quantization: dict | None = None  # int8 files (paperzoo quantize): calibration, accuracy and sizes
    compiled: bool = False  # .pt2 compiled by AOTInductor (load with load_exported), not an ExportedProgram
    precision: str = "fp32"  # "bf16": the compiled package computes in bf16 (fp32 in and out)


def _example(input_size: list[int], batch: int = 2) -> Tensor:
    # batch 2 to trace: torch.export specializes sizes 0 and 1, so a batch of 1 would fix the batch dimension
    return torch.randn(batch, *input_size, generator=torch.Generator().manual_seed(0))


def onnx_session(path: str | os.PathLike, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session of ``path`` (``threads`` intra-op threads, default ONNX Runtime's choice)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    # no spin-waiting after a call: it would steal the CPU from whatever runs next (e.g. an eager model timed after)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_onnx(model: str | os.PathLike | Any, x: Tensor) -> Tensor:
    """Logits of an exported ``.onnx`` file (or an :func:`onnx_session` of one, to run many batches) on ``x``
    (normalized float (B, C, H, W)) through ONNX Runtime."""
    sess = onnx_session(model) if isinstance(model, (str, os.PathLike)) else model
    name = sess.get_inputs()[0].name
    return torch.from_numpy(sess.run(None, {name: x.detach().float().contiguous().numpy()})[0])


def has_attention(model: nn.Module) -> bool:
    """Whether ``model`` holds an attention layer (ViT's MultiHeadAttention, Swin's WindowAttention, ...)."""
    return any(type(m).__name__.endswith("Attention") for m in model.modules())


class _Bf16(nn.Module):
    """``model`` in bf16 behind an fp32 interface: images are cast on the way in, logits back on the way out."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.to(torch.bfloat16)
        self.model_name = getattr(model, "model_name", type(model).__name__)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x.to(torch.bfloat16)).float()


def _compile_aoti(program: torch.export.ExportedProgram, path: Path) -> None:
    """AOTInductor: C++ kernels for ``program`` built by the local compiler, packaged with the weights."""
    # freezing folds the weights into the graph as constants, which lets Inductor pre-pack them for oneDNN
    torch._inductor.aoti_compile_and_package(program, package_path=str(path), inductor_configs={"freezing": True})


def _strip_debug_info(model: Any) -> None:
    """Drop what the exporter records per node of ``model`` (its ``onnx_ir.Model``) for debugging: the
    ``metadata_props`` (Python stack trace, module path, FX node; ~470 bytes a node, 4 % of MobileNetV2's int8
    file) and doc strings. A deployed file does not need them, and they would ship the exporting machine's paths."""
    from onnx_ir.traversal import RecursiveGraphIterator

    for graph in [model.graph, *model.functions.values()]:
        for node in RecursiveGraphIterator(graph):
            node.metadata_props.clear()
            node.doc_string = None


def export_graph(model: nn.Module, x: Tensor, path: Path, fmt: str, *, compiled: bool = False) -> int | None:
    """Write ``model`` traced on ``x`` with a dynamic batch to ``path`` (``compiled``: an AOTInductor package of
    the ``.pt2`` program); returns the ONNX opset (None for pt2)."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    try:
        if fmt == "pt2":
            program = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
            _compile_aoti(program, path) if compiled else torch.export.save(program, str(path))
            return None
        opset = ATTENTION_OPSET if has_attention(model) else None  # None: the exporter's default
        onnx_program = torch.onnx.export(model, (x,), dynamo=True, dynamic_shapes=({0: batch},), opset_version=opset,
                                         input_names=["images"], output_names=["logits"], verbose=False)
        _strip_debug_info(onnx_program.model)
        onnx_program.save(str(path))
        return int(onnx_program.model.opset_imports[""])
    except ImportError as e:  # onnx / onnxscript missing: the `deploy` extra
        raise ExportError(f"ONNX export needs the onnx and onnxscript packages (pip install "
                          f"'paperzoo[deploy]'): {e}") from None
    except Exception as e:  # the exporters raise many types; the first line says what could not be traced
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"{getattr(model, 'model_name', type(model).__name__)} cannot be exported to {fmt}: "
                          f"{first}") from None


def load_exported(path: str | os.PathLike, *, fmt: str | None = None, compiled: bool | None = None,
                  threads: int | None = None) -> Callable[[Tensor], Tensor]:
    """A function from normalized float images (B, C, H, W) to logits for an exported file: ONNX through ONNX
    Runtime, ``.pt2`` through ``torch.export.load`` or, for a compiled one, ``aoti_load_package``. ``fmt`` and
    ``compiled`` default to what the card beside the file says."""
    if fmt is None or compiled is None:
        card = load_card(path)
        fmt, compiled = fmt or card.format, card.compiled if compiled is None else compiled
    if fmt == "onnx":
        return functools.partial(run_onnx, onnx_session(path, threads))
    if threads:
        torch.set_num_threads(threads)  # the compiled kernels' OpenMP threads are torch's
    if compiled:
        return torch._inductor.aoti_load_package(str(path))
    return torch.export.load(str(path)).module()


def quantize_dynamic_onnx(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """ONNX Runtime's dynamic int8 of ``src``'s MatMul / Gemm weights (per output channel, symmetric int8;
    each call quantizes its activations by their own range), written to ``dst``: the transformers' int8
    (the CNNs' is static, :func:`paperzoo.deploy.quantize.quantize_onnx`)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), per_channel=True, weight_type=QuantType.QInt8,
                     op_types_to_quantize=["MatMul", "Gemm"])
    return Path(dst)


def _check_options(fmt: str, compiled: bool, precision: str) -> None:
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; valid: {', '.join(EXPORT_FORMATS)}")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    if compiled and fmt != "pt2":
        raise ValueError("compiling (AOTInductor) applies to the pt2 format only")
    if precision == "bf16" and not compiled:
        raise ValueError("bf16 export is the AOTInductor package's: use --format pt2 --compile")


@torch.no_grad()
def export_model(model: nn.Module, path: str | os.PathLike, *, fmt: Literal["onnx", "pt2"] = "onnx",
                 input_size: list[int], classes: list[str], mean: list[float], std: list[float],
                 source: str = "", fused: bool = True, compiled: bool = False,
                 precision: Literal["fp32", "bf16"] = "fp32") -> ExportCard:
    """Export ``model`` (an image classifier taking normalized (B, *input_size)) to ``path``, verify it against
    the eager fp32 model, and write the card beside it. Returns the card."""
    _check_options(fmt, compiled, precision)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    x = _example(input_size)
    if fused:
        from .fuse import fuse

        model = fuse(model, x[:1])
    graph = _Bf16(copy.deepcopy(model)) if precision == "bf16" else model  # `model` stays the fp32 reference
    opset = export_graph(graph, x, path, fmt, compiled=compiled)
    x = _example(input_size, batch=3)  # checked at another batch size than traced: the batch must stay dynamic
    want = model(x)
    try:
        got = load_exported(path, fmt=fmt, compiled=compiled)(x)
    except Exception as e:  # e.g. ONNX Runtime refusing batch 3 of a graph that fixed the batch dimension
        path.unlink(missing_ok=True)
        raise ExportError(f"the exported {fmt} model does not run on a batch of 3: {str(e).strip()[:200]}") from None
    scale = float(want.abs().max().clamp_min(1e-12))
    diff = float((got - want).abs().max()) / scale
    rtol = RTOL_OF_MAX_BF16 if precision == "bf16" else RTOL_OF_MAX
    if not diff <= rtol:  # also catches NaN
        path.unlink(missing_ok=True)
        raise RuntimeError(f"the exported {fmt} model's logits differ from the eager model's by {diff:.2e} of "
                           f"their largest value (> {rtol:.0e}); nothing was written")
    card = ExportCard(format=fmt, model=getattr(model, "model_name", type(model).__name__), classes=list(classes),
                      input_size=list(input_size), mean=list(mean), std=list(std), max_abs_diff=diff,
                      source=source, fused=fused, opset=opset, compiled=compiled, precision=precision)
    atomic_write_bytes(Path(f"{path}.json"), (json.dumps(asdict(card), indent=1) + "\n").encode())
    return card


def export_run(run: str | os.PathLike, out: str | os.PathLike, *, fmt: Literal["onnx", "pt2"] = "onnx",
               which: str = "final", ema: bool = False, fused: bool = True, compiled: bool = False,
               precision: Literal["fp32", "bf16"] = "fp32") -> ExportCard:
    """Export the image classifier of a paperzoo run (or checkpoint) to ``out`` (see :func:`export_model`)."""
    from paperzoo.train.evaluate import load_checkpoint

    _check_options(fmt, compiled, precision)  # before loading the run
    ck = load_checkpoint(run, which=which, ema=ema)
    norm = ck.meta["normalization"]
    return export_model(ck.model, out, fmt=fmt, input_size=list(ck.meta["input_size"]), classes=ck.classes,
                        mean=norm["mean"], std=norm["std"], source=str(ck.path), fused=fused, compiled=compiled,
                        precision=precision)


def load_card(path: str | os.PathLike) -> ExportCard:
    """The card written beside an exported file (``<file>.json``)."""
    card = Path(f"{path}.json")
    if not card.is_file():
        raise FileNotFoundError(f"{card}: no export card beside {path} (was it written by paperzoo export?)")
    try:
        return ExportCard(**json.loads(card.read_text()))
    except (json.JSONDecodeError, TypeError) as e:
        raise ValueError(f"{card}: not a paperzoo export card ({e})") from None


def predict_onnx(path: str | os.PathLike, images: list[str | os.PathLike], *, topk: int = 5) -> list[dict]:
    """Top-k classes of image files through ONNX Runtime, from an exported ``.onnx`` and its card (the same
    output as :func:`paperzoo.predict`)."""
    from paperzoo.train.evaluate import _load_image, top_classes

    card = load_card(path)
    c, h, w = card.input_size
    x = torch.stack([_load_image(p, c, (h, w)) for p in images])  # (B, C, H, W) in [0, 1]
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in (card.mean, card.std))  # (1, C, 1, 1)
    probs = run_onnx(path, (x - mean) / std).softmax(-1)
    return top_classes(probs, card.classes, images, topk)
