"""Deployment (issue 18): fused inference and exported models (docs/deploy.md).

* :mod:`.fuse` — :func:`fuse` folds every BatchNorm into the convolution or linear layer before it.
* :mod:`.export` — :func:`export_run` writes a run's fused classifier as ONNX or a ``torch.export`` program,
  verified against the eager model, with its class names and normalization beside it.
* :mod:`.quantize` — :func:`~.quantize.quantize_run`: static int8 through ONNX Runtime's quantizer, calibrated on
  training images, with the accuracy before and after.
"""

from .export import EXPORT_FORMATS, ExportCard, ExportError, export_model, export_run, load_card, predict_onnx, run_onnx
from .fuse import FastPath, fast_path, fold_batchnorm, fusable_pairs, fuse

__all__ = ["EXPORT_FORMATS", "ExportCard", "ExportError", "FastPath", "export_model", "export_run", "fast_path",
           "fold_batchnorm", "fusable_pairs", "fuse", "load_card", "predict_onnx", "run_onnx"]
