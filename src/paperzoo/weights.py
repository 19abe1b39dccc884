"""Loading weights: our own checkpoints and the state dicts of torchvision / timm models.

``load_weights(model, path, source=...)`` reads a ``.safetensors`` file or a ``.pth``/``.pt`` state dict (with
``torch.load(weights_only=True)``: a file is never unpickled into arbitrary objects), converts its keys with the
converter registered for the model's family and ``source``, and loads it **strictly**: any missing or
unexpected key, or a shape that differs, raises a ``WeightLoadError`` that names them.

Each family registers its converters next to its architecture (``@register_converter("resnet", "timm")``);
a converter maps the source's key names (and, where needed, resizes position tables) to ours, and gives the
model what the source's forward uses but its state dict does not record (the BatchNorm eps of the mobile
families), so that the loaded model computes the source model's outputs. The mapping tables are in each
family's section of ``docs/models/cnn.md`` and ``docs/models/transformers.md``.

``load_pretrained(model, path, source=...)`` starts fine-tuning: the same, except that the classifier head is
re-initialised when the checkpoint's is for another number of classes and the first convolution adapted when
it was trained on another number of input channels (each model names both layers); it returns a line per
layer so changed. Everything else still loads strictly.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn
from torch import Tensor

__all__ = ["WeightLoadError", "register_converter", "read_state_dict", "convert_state_dict", "load_weights",
           "load_pretrained", "load_backbone", "adapt_to_model", "adapt_input_conv", "fill_bn_counters", "SOURCES"]

StateDict = dict[str, Tensor]
Converter = Callable[[StateDict, nn.Module], StateDict]

SOURCES = ("paperzoo", "torchvision", "timm", "openai")  # openai: the released DALL-E dVAE (dalle/dvae.py)
_CONVERTERS: dict[tuple[str, str], Converter] = {}


class WeightLoadError(RuntimeError):
    """A checkpoint that does not fit the model (missing/unexpected keys, wrong shapes) or cannot be read."""


def register_converter(family: str, source: str) -> Callable[[Converter], Converter]:
    """Register ``fn(state_dict, model) -> state_dict`` mapping ``source`` keys to ``family``'s keys (``fn`` may
    also set on ``model`` the source's conventions that no tensor holds, such as BatchNorm eps)."""
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; expected one of {SOURCES}")

    def wrap(fn: Converter) -> Converter:
        _CONVERTERS[(family, source)] = fn
        return fn

    return wrap


def fill_bn_counters(sd: StateDict, model: nn.Module) -> StateDict:
    """Add the BatchNorm ``num_batches_tracked`` counters that checkpoints saved before PyTorch 0.4 lack.

    ``nn.BatchNorm2d`` accepts their absence itself (the counter only matters with ``momentum=None``); a
    converter calls this so that strict loading does not report them as missing.
    """
    for key, value in model.state_dict().items():
        if key.endswith(".num_batches_tracked") and key not in sd and key.rsplit(".", 1)[0] + ".weight" in sd:
            sd[key] = torch.zeros_like(value, device="cpu")
    return sd


def _read_failure(e: Exception) -> str:
    """Why a weights file could not be read, in one line (torch's refusal of a pickled object spans ten)."""
    refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
    if refused:
        return (f"it pickles {refused.group(1)}, which weights_only loading refuses (it could run code); "
                "save a plain state dict or .safetensors")
    return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"


def read_state_dict(path: str | os.PathLike) -> StateDict:
    """Read tensors from ``.safetensors`` or a torch state dict file (``weights_only=True``).

    A paperzoo checkpoint is verified: tensors that do not match the digest in the safetensors header, or a
    file of ours that cannot be parsed, raise :class:`~paperzoo.train.checkpoint.CorruptCheckpointError`
    instead of loading damaged weights. Third-party files load unchecked.
    """
    from paperzoo.train.checkpoint import CorruptCheckpointError, check_tensors_digest, is_checkpoint_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path), device="cpu")
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt, truncated, or holding pickled objects we refuse to load
        if is_checkpoint_file(path):
            raise CorruptCheckpointError(path, f"cannot be read: {type(e).__name__}") from e
        raise WeightLoadError(f"could not read weights from {path}: {_read_failure(e)}") from e
    if path.suffix == ".safetensors":
        check_tensors_digest(path, sd)
    # common wrappers: {"state_dict": ...}, {"model": ...}, {"model_ema": ...}
    for wrapper in ("state_dict", "model", "model_ema"):
        if isinstance(sd, dict) and wrapper in sd and isinstance(sd[wrapper], dict):
            sd = sd[wrapper]
            break
    if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise WeightLoadError(f"{path} does not hold a state dict of tensors")
    # DataParallel / DDP / torch.compile prefixes
    for prefix in ("module.", "_orig_mod."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def _family_of(model: nn.Module) -> str:
    family = getattr(model, "model_family", None)
    if not family:
        raise WeightLoadError(
            f"{type(model).__name__} has no model_family; build it with paperzoo.create_model(...)"
        )
    return family


def convert_state_dict(model: nn.Module, sd: StateDict, source: str) -> StateDict:
    """Map ``sd`` from ``source``'s key layout to ``model``'s."""
    if source == "paperzoo":  # our own layout; a family may still adapt it (e.g. resize position tables)
        fn = _CONVERTERS.get((getattr(model, "model_family", ""), "paperzoo"))
        return fn(dict(sd), model) if fn else dict(sd)
    family = _family_of(model)
    try:
        fn = _CONVERTERS[(family, source)]
    except KeyError:
        have = sorted(s for f, s in _CONVERTERS if f == family)
        raise WeightLoadError(
            f"no {source} key mapping for family {family!r}"
            + (f"; available sources: {', '.join(have)}" if have else "")
        ) from None
    return fn(dict(sd), model)


def _read_converted(model: nn.Module, path: str | os.PathLike, source: str, which: str) -> tuple[StateDict, Path]:
    """The state dict of a weights file or a run / checkpoint directory, in ``model``'s key layout."""
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; expected one of {SOURCES}")
    path = Path(path)
    if path.is_dir():
        from paperzoo.train.checkpoint import find_checkpoint

        path = Path(find_checkpoint(path, which))
    return convert_state_dict(model, read_state_dict(path), source), path


def load_weights(model: nn.Module, path: str | os.PathLike, source: str = "paperzoo", strict: bool = True,
                 which: str = "final") -> nn.Module:
    """Load ``path`` into ``model`` (in place) and return it.

    Args:
        path: a weights file (``.safetensors``, ``.pth``, ``.pt``), or a paperzoo run or checkpoint directory.
        source: key layout of the file: ``"paperzoo"``, ``"torchvision"`` or ``"timm"``.
        strict: raise on missing/unexpected keys (shape mismatches always raise).
        which: for a run directory, its ``final``, ``best`` or ``last`` weights (see
            :func:`paperzoo.train.checkpoint.find_checkpoint`).

    To start fine-tuning from weights trained for other classes or channels, use :func:`load_pretrained`.
    """
    sd, path = _read_converted(model, path, source, which)
    load_state_dict_checked(model, sd, strict=strict, what=f"{path} (source={source})")
    return model


def load_pretrained(model: nn.Module, path: str | os.PathLike, source: str = "paperzoo",
                    which: str = "final") -> list[str]:
    """Start fine-tuning ``model`` from ``path``: :func:`load_weights` after :func:`adapt_to_model`.

    The classifier head is re-initialised where the checkpoint's does not fit (another number of classes)
    and the first convolution adapted where it was trained on another number of input channels; every other
    key must load strictly (a missing or unexpected key, or another shape, raises :class:`WeightLoadError`).

    Returns:
        one line per layer that was not loaded as it is in the checkpoint (empty when all of it fits).
    """
    sd, path = _read_converted(model, path, source, which)
    sd, changes = adapt_to_model(model, sd)
    load_state_dict_checked(model, sd, strict=True, what=f"{path} (source={source})")
    return changes


def adapt_input_conv(weight: Tensor, in_chans: int) -> Tensor:
    """A first convolution's filters ``(O, I, kh, kw)`` for ``in_chans`` input channels instead of ``I``.

    One channel: the sum of the ``I`` filters. A gray image ``g`` shown to the source as ``I`` equal channels
    gives ``sum_c W_c * g = (sum_c W_c) * g``, so the adapted model's outputs on ``g`` are the source's on the
    replicated image. Otherwise the filters are repeated (``I, 2I, ...`` channels, cut at ``in_chans``) and
    scaled by ``I / in_chans``, which keeps the response to an image with equal channels. The same rules as
    timm's ``adapt_input_conv`` (which sums in groups of 3 when ``I > 3`` and only repeats from ``I = 3``).
    """
    o, i = weight.shape[:2]
    if in_chans == i:
        return weight
    w = weight.float()
    if in_chans == 1:
        w = w.sum(dim=1, keepdim=True)  # (O, 1, kh, kw)
    else:
        w = w.repeat(1, -(-in_chans // i), 1, 1)[:, :in_chans] * (i / in_chans)  # (O, in_chans, kh, kw)
    return w.to(weight.dtype)


def adapt_to_model(model: nn.Module, sd: StateDict) -> tuple[StateDict, list[str]]:
    """Fit a converted checkpoint's classifier head and first convolution to ``model``.

    The layers are those the model names in ``head_names`` and ``first_conv_name``
    (:class:`paperzoo.models._base.ImageClassifier`); a model without them gets ``sd`` back unchanged.

    * a classifier module whose checkpoint tensors are absent or of another shape keeps the model's own
      (initial) values: re-initialised; checkpoint head tensors that a head-less model (``num_classes=0``)
      lacks are dropped;
    * a first-convolution weight with another number of input channels goes through :func:`adapt_input_conv`.

    Returns:
        the adapted state dict and one line per changed layer.
    """
    own, sd, changes = model.state_dict(), dict(sd), []
    for module in getattr(model, "head_names", ()):
        prefix = module + "."
        mine = sorted(k for k in own if k.startswith(prefix))
        theirs = sorted(k for k in sd if k.startswith(prefix))
        if mine == theirs and all(sd[k].shape == own[k].shape for k in mine):
            continue  # the head fits (same classes): loaded as it is
        w = prefix + "weight"
        was = f"checkpoint {tuple(sd[w].shape)}" if w in sd else "not in the checkpoint"
        for k in theirs:
            del sd[k]
        sd.update({k: own[k] for k in mine})
        changes.append(f"{module}: re-initialised ({was}, model {tuple(own[w].shape)})" if w in own
                       else f"{module}: dropped from the checkpoint (the model has no classifier)")
    first = getattr(model, "first_conv_name", "")
    key = first + ".weight"
    if first and key in sd and key in own and sd[key].dim() == 4 and sd[key].shape[1] != own[key].shape[1] \
            and sd[key].shape[0] == own[key].shape[0]:
        i, c = sd[key].shape[1], own[key].shape[1]
        sd[key] = adapt_input_conv(sd[key], c)
        how = "summed" if c == 1 else f"repeated, scaled by {i}/{c}"
        changes.append(f"{first}: adapted from {i} to {c} input channels ({how})")
    return sd, changes


def load_state_dict_checked(model: nn.Module, sd: StateDict, strict: bool = True, what: str = "state dict") -> None:
    """``model.load_state_dict`` with one readable error listing every problem."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in sd and sd[k].shape != own[k].shape]
    problems = []
    if shapes:
        problems.append("shape mismatches:\n  " + "\n  ".join(shapes))
    if strict and missing:
        more = " ..." if len(missing) > 20 else ""
        problems.append(f"missing keys ({len(missing)}): " + ", ".join(missing[:20]) + more)
    if strict and unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): " + ", ".join(unexpected[:20])
                        + (" ..." if len(unexpected) > 20 else ""))
    if problems:
        name = getattr(model, "model_name", "") or type(model).__name__
        raise WeightLoadError(f"cannot load {what} into {name}\n" + "\n".join(problems))  # the CLI joins with "; "
    model.load_state_dict(sd, strict=strict)


def load_backbone(model: nn.Module, path: str | Path, source: str = "paperzoo") -> list[str]:
    """Start a detector's or segmenter's backbone (``model.backbone``, or the ``.body`` below an FPN) from a
    classifier's weights (e.g. a Fashion-MNIST run, or torchvision's ImageNet ResNet-50): the classifier's head is
    left out and a first convolution trained on other input channels adapted (:func:`adapt_input_conv`); every
    backbone tensor must load. Returns one line per change."""
    holder = getattr(model, "backbone", None)
    body = getattr(holder, "body", holder)  # Faster R-CNN: backbone.body (below the FPN); Fast R-CNN: backbone
    if body is None or not hasattr(body, "feature_info"):
        raise ValueError(f"{type(model).__name__} has no features_only backbone to start from {path}")
    from paperzoo.train.checkpoint import find_checkpoint

    if Path(path).is_dir():  # a paperzoo run or checkpoint directory: its final weights
        path = find_checkpoint(path, "final")
    own = body.state_dict()
    sd = read_state_dict(path) if source == "paperzoo" else convert_state_dict(body, read_state_dict(path), source)
    changes = [f"{k}: not used by the backbone" for k in sorted(set(sd) - set(own))]
    sd = {k: v for k, v in sd.items() if k in own}
    for k, v in sd.items():  # a first convolution trained on gray images, say: (O, 1, kh, kw) -> (O, 3, kh, kw)
        if v.dim() == 4 and v.shape != own[k].shape and v.shape[0] == own[k].shape[0]:
            sd[k] = adapt_input_conv(v, own[k].shape[1])
            changes.append(f"{k}: adapted from {v.shape[1]} to {own[k].shape[1]} input channels")
    missing = sorted(set(own) - set(sd))
    if missing:
        raise WeightLoadError(f"{path} lacks {len(missing)} backbone tensors, e.g. {', '.join(missing[:3])}")
    body.load_state_dict(sd)
    return changes
