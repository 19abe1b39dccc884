"""The detector registry: ``@register_detector``, ``create_detector(name, **kwargs)``, ``detector_names()``.

Detectors are kept apart from the classifier registry (:mod:`paperzoo.registry`): they take other arguments
(``num_classes`` counts the background, recipes set sizes and thresholds) and return losses or boxes, not
logits. Each builder returns a model whose ``model_family`` names its weight converters.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
from collections.abc import Callable
from typing import Any

from torch import nn

__all__ = ["register_detector", "create_detector", "detector_doc", "detector_names", "UnknownDetectorError"]

_DETECTORS: dict[str, Callable[..., nn.Module]] = {}
# The modules whose import registers their builders (those present: the package grows one file at a time).
_MODULES = ("paperzoo.detection.faster_rcnn", "paperzoo.detection.rcnn", "paperzoo.detection.retinanet",
           "paperzoo.detection.detr", "paperzoo.detection.yolo")


class UnknownDetectorError(KeyError):
    """No detector is registered under that name (a ``KeyError``: the CLI turns it into one line)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def register_detector(fn: Callable[..., nn.Module] | None = None, *, name: str | None = None):
    """Register a builder under its function name (or ``name``); duplicate names are refused.

    Usable bare (``@register_detector``) or with a name (``@register_detector(name="fast_rcnn")``).
    """

    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or builder.__name__
        if key in _DETECTORS and _DETECTORS[key] is not builder:
            raise ValueError(f"detector {key!r} is already registered (by {_DETECTORS[key].__module__})")
        _DETECTORS[key] = builder
        return builder

    return wrap(fn) if fn is not None else wrap


def _ensure_loaded() -> None:
    for module in _MODULES:
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module)


def detector_names() -> list[str]:
    """Sorted names of the registered detectors."""
    _ensure_loaded()
    return sorted(_DETECTORS)


def detector_doc(name: str) -> str:
    """The first line of detector ``name``'s builder docstring (what ``paperzoo models --detectors`` shows)."""
    _ensure_loaded()
    return ((_DETECTORS[name].__doc__ or "").strip().splitlines() or [""])[0]


def create_detector(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered detector ``name`` with its builder's keyword arguments (``num_classes``, ...)."""
    _ensure_loaded()
    if name not in _DETECTORS:
        close = difflib.get_close_matches(name, list(_DETECTORS), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UnknownDetectorError(f"unknown detector {name!r}{hint} (known: {', '.join(sorted(_DETECTORS))})")
    model = _DETECTORS[name](**kwargs)
    model.model_name = name
    return model
