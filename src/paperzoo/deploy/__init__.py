"""Deployment (issue 18): fused inference; exported and quantized models come next.

* :mod:`.fuse` — :func:`fuse` folds every BatchNorm into the convolution or linear layer before it.
"""

from .fuse import fold_batchnorm, fusable_pairs, fuse

__all__ = ["fold_batchnorm", "fuse", "fusable_pairs"]
