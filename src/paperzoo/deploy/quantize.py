"""Post-training int8 quantization of a trained CNN through ONNX Runtime's static quantizer.

The run's fused classifier is exported to ONNX (:mod:`.export`), then ``onnxruntime.quantization.quantize_static``
rewrites it with int8 weights (symmetric, **per output channel**) and uint8 activations whose ranges come from a
**calibration set drawn from the training data** (the first ``calib`` training images of the run's dataset,
normalized as in training; min-max ranges). The QDQ format keeps QuantizeLinear / DequantizeLinear pairs around
each quantized operator, which ONNX Runtime's CPU provider fuses into integer kernels (VNNI / AMX-INT8 where the
CPU has them).

Accuracy before and after is measured on the test split in ONNX Runtime (fp32 export vs int8) and stored in the
card beside the int8 file (``<file>.json``), with both file sizes.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from paperzoo.train.checkpoint import atomic_write_bytes

from .export import export_model, onnx_session, run_onnx

__all__ = ["QuantReport", "onnx_accuracy", "quantize_onnx", "quantize_run"]


@dataclass
class QuantReport:
    path: str
    calib_images: int
    test_images: int
    accuracy_fp32: float  # the fp32 export in ONNX Runtime (= the eager fused model within 1e-4 of the logits)
    accuracy_int8: float
    size_fp32_bytes: int
    size_int8_bytes: int


def _normalized_batches(meta: dict, split: str, limit: int | None, batch_size: int = 256
                        ) -> tuple[int, Iterator[tuple[torch.Tensor, torch.Tensor]]]:
    """(number of images, iterator of (normalized images (B, C, H, W), labels)) of a split of the run's data."""
    from paperzoo.train.evaluate import _eval_batches

    _, n, batches = _eval_batches(meta, split, root=None, dataset=None, batch_size=batch_size, limit=limit)
    mean, std = (torch.tensor(meta["normalization"][k]).view(1, -1, 1, 1) for k in ("mean", "std"))
    return n, (((x - mean) / std, y) for x, y in batches)


def onnx_accuracy(path: str | os.PathLike, meta: dict, limit: int | None = None) -> tuple[float, int]:
    """(top-1 accuracy, images) of an ONNX classifier on the run's test split, through ONNX Runtime."""
    n, batches = _normalized_batches(meta, "test", limit)
    sess = onnx_session(path)  # one session for every batch
    correct = sum(int((run_onnx(sess, x).argmax(1) == y).sum()) for x, y in batches)
    return correct / max(n, 1), n


class _Calibration:
    """ONNX Runtime's CalibrationDataReader protocol: ``get_next()`` returns one input feed or None."""

    def __init__(self, batches: Iterable[torch.Tensor], input_name: str) -> None:
        self.batches, self.input_name, self.n = iter(batches), input_name, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self.batches, None)
        if x is None:
            return None
        self.n += len(x)
        return {self.input_name: x.contiguous().numpy()}


def quantize_onnx(fp32: str | os.PathLike, out: str | os.PathLike, calibration: Iterable[torch.Tensor]) -> int:
    """Quantize an fp32 ONNX classifier (input ``images``) to static int8 QDQ at ``out``: per-channel int8
    weights, uint8 activations with min-max ranges over the ``calibration`` batches (normalized images).
    Returns the number of calibration images."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        prepped = Path(tmp) / "prepped.onnx"
        quant_pre_process(str(fp32), str(prepped))  # shape inference + graph cleanup, as ORT recommends
        reader = _Calibration(calibration, "images")
        quantize_static(str(prepped), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                        weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                        calibrate_method=CalibrationMethod.MinMax)
    if reader.n == 0:
        raise ValueError("no calibration images")
    return reader.n


def quantize_run(run: str | os.PathLike, out: str | os.PathLike, *, calib: int = 512, which: str = "final",
                 test_limit: int | None = None) -> QuantReport:
    """Write the run's classifier as a static int8 ONNX model to ``out`` (card beside it); returns the report.
    Calibration: the first ``calib`` images of the run's training split, normalized as in training."""
    from paperzoo.train.evaluate import load_checkpoint

    if calib < 1:
        raise ValueError(f"--calib: need at least one calibration image, got {calib}")
    ck = load_checkpoint(run, which=which)
    norm, out = ck.meta["normalization"], Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "model.onnx"
        card = export_model(ck.model, fp32, fmt="onnx", input_size=list(ck.meta["input_size"]),
                            classes=ck.classes, mean=norm["mean"], std=norm["std"], source=str(ck.path))
        _, batches = _normalized_batches(ck.meta, "train", calib, batch_size=32)
        n_calib = quantize_onnx(fp32, out, (x for x, _ in batches))
        acc32, n = onnx_accuracy(fp32, ck.meta, test_limit)
        size32 = fp32.stat().st_size
    acc8, _ = onnx_accuracy(out, ck.meta, test_limit)
    report = QuantReport(path=str(out), calib_images=n_calib, test_images=n, accuracy_fp32=acc32,
                         accuracy_int8=acc8, size_fp32_bytes=size32, size_int8_bytes=out.stat().st_size)
    card = {**asdict(card), "format": "onnx-int8", "quantization": asdict(report)}  # predict reads it as any card
    atomic_write_bytes(Path(f"{out}.json"), (json.dumps(card, indent=1) + "\n").encode())
    return report
