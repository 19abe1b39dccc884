"""Getting a model and an image into the shape a picture needs."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn
from torch import Tensor


def load_model_and_image(source: str, image: str | os.PathLike | None, *, size: int | None = None,
                         in_chans: int = 3, **model_kw) -> tuple[nn.Module, Tensor, Tensor]:
    """``source`` is a checkpoint (run dir, checkpoint dir, .safetensors) or a registered model name (random
    weights). Returns (model in eval mode, normalised input (1, C, H, W), the [0, 1] image (C, H, W)).
    Without ``image`` a random image is used (shapes only)."""
    from paperzoo.train.evaluate import _load_image, load_checkpoint

    if Path(source).exists():
        ck = load_checkpoint(source)
        model, meta = ck.model, ck.meta
        c, h, w = meta["input_size"]
        mean, std = meta["normalization"]["mean"], meta["normalization"]["std"]
    else:
        from paperzoo.registry import create_model, get_entry

        entry = get_entry(source)
        model = create_model(source, in_chans=in_chans, **model_kw).eval()
        c, (h, w) = in_chans, (size, size) if size else entry.input_size
        mean, std = [0.5] * c, [0.25] * c
    if size:
        h = w = size
    raw = _load_image(image, c, (h, w)) if image else torch.rand(c, h, w)
    x = (raw - torch.tensor(mean).view(-1, 1, 1)) / torch.tensor(std).view(-1, 1, 1)  # (C, H, W)
    return model, x[None], raw
