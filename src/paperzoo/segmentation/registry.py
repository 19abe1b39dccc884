"""The segmenter registry: ``@register_segmenter``, ``create_segmenter(name, **kwargs)``, ``segmenter_names()``.

Segmenters are kept apart from the classifier registry (:mod:`paperzoo.registry`) as detectors are: they return a
dict of per-pixel logits, torchvision's convention, not one logit vector. A segmenter maps images (B, C, H, W) to
``{"out": (B, K, H, W)}`` (plus ``"aux"`` where it has an auxiliary classifier) at the input's own size, in train
and eval mode alike; ``num_classes`` counts the background.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
from collections.abc import Callable
from typing import Any

from torch import nn

__all__ = ["register_segmenter", "create_segmenter", "segmenter_doc", "segmenter_names", "UnknownSegmenterError"]

_SEGMENTERS: dict[str, Callable[..., nn.Module]] = {}
# The modules whose import registers their builders (those present: the package grows one file at a time).
_MODULES = ("paperzoo.segmentation.fcn",)


class UnknownSegmenterError(KeyError):
    """No segmenter is registered under that name (a ``KeyError``: the CLI turns it into one line)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def register_segmenter(fn: Callable[..., nn.Module] | None = None, *, name: str | None = None):
    """Register a builder under its function name (or ``name``); duplicate names are refused."""

    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or builder.__name__
        if key in _SEGMENTERS and _SEGMENTERS[key] is not builder:
            raise ValueError(f"segmenter {key!r} is already registered (by {_SEGMENTERS[key].__module__})")
        _SEGMENTERS[key] = builder
        return builder

    return wrap(fn) if fn is not None else wrap


def _ensure_loaded() -> None:
    for module in _MODULES:
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module)


def segmenter_names() -> list[str]:
    """Sorted names of the registered segmenters."""
    _ensure_loaded()
    return sorted(_SEGMENTERS)


def segmenter_doc(name: str) -> str:
    """The first line of segmenter ``name``'s builder docstring."""
    _ensure_loaded()
    return ((_SEGMENTERS[name].__doc__ or "").strip().splitlines() or [""])[0]


def create_segmenter(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered segmenter ``name`` with its builder's keyword arguments (``num_classes``, ...)."""
    _ensure_loaded()
    if name not in _SEGMENTERS:
        close = difflib.get_close_matches(name, list(_SEGMENTERS), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UnknownSegmenterError(f"unknown segmenter {name!r}{hint} (known: {', '.join(sorted(_SEGMENTERS))})")
    model = _SEGMENTERS[name](**kwargs)
    model.model_name = name
    return model
