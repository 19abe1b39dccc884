"""A tiny model registry: ``@register_model``, ``create_model``, ``list_models``.

Every builder is registered with the paper it implements, so the CLI, the docs tables and the
registry-wide tests can iterate over the whole zoo.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn

__all__ = ["Paper", "ModelEntry", "register_model", "create_model", "list_models", "get_entry"]


@dataclass(frozen=True)
class Paper:
    """The paper a model family comes from."""

    title: str
    arxiv: str
    year: int

    def __str__(self) -> str:
        return f"{self.title} (arXiv:{self.arxiv}, {self.year})"


@dataclass(frozen=True)
class ModelEntry:
    """One registered builder and what we know about it.

    Attributes:
        name: registry name, e.g. ``"resnet50"``.
        builder: callable returning an ``nn.Module``; accepts ``num_classes``, ``in_chans`` and overrides.
        family: architecture family, e.g. ``"resnet"``; also the key for weight converters.
        paper: the paper the family implements.
        input_size: default (H, W) of the reference model (224 for most, 299 for Inception-v3, ...).
        ref_params: parameter count of the reference implementation (timm/torchvision) at 1000 classes,
            or ``None`` when there is no common reference.
        ref_source: where ``ref_params`` comes from.
        kind: ``"image"`` for classifiers, ``"sequence"`` for language/translation models.
        tags: free-form tags (``"small"`` for small-input configs, ...).
    """

    name: str
    builder: Callable[..., nn.Module]
    family: str
    paper: Paper
    input_size: tuple[int, int] = (224, 224)
    ref_params: int | None = None
    ref_source: str | None = None
    kind: str = "image"
    tags: tuple[str, ...] = field(default_factory=tuple)


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    *,
    family: str,
    paper: Paper,
    input_size: int | tuple[int, int] = 224,
    ref_params: int | None = None,
    ref_source: str | None = None,
    kind: str = "image",
    tags: tuple[str, ...] = (),
    name: str | None = None,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a model builder under its function name (or ``name``).

    Duplicate names are refused so that two files cannot silently shadow each other.
    """
    if isinstance(input_size, int):
        input_size = (input_size, input_size)

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or fn.__name__
        if key in _REGISTRY:
            raise ValueError(f"model {key!r} is already registered (by {_REGISTRY[key].builder.__module__})")
        _REGISTRY[key] = ModelEntry(
            name=key,
            builder=fn,
            family=family,
            paper=paper,
            input_size=tuple(input_size),
            ref_params=ref_params,
            ref_source=ref_source,
            kind=kind,
            tags=tuple(tags),
        )
        return fn

    return wrap


def _ensure_loaded() -> None:
    # Importing the models package imports every model module, which registers its builders.
    import paperzoo.models  # noqa: F401


def get_entry(name: str) -> ModelEntry:
    """Return the registry entry of ``name``; unknown names raise ``KeyError`` listing close matches."""
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise KeyError(f"unknown model {name!r}.{hint} See `paperzoo models` for the full list.") from None


def create_model(name: str, *, num_classes: int = 1000, in_chans: int = 3, **overrides: Any) -> nn.Module:
    """Build a registered model.

    Args:
        name: registry name (see :func:`list_models`).
        num_classes: size of the classifier output (image models).
        in_chans: input channels, e.g. 1 for grayscale (image models).
        **overrides: fields of the family's config dataclass, e.g. ``small_input=True``, ``drop_rate=0.2``.
    """
    entry = get_entry(name)
    if entry.kind == "image":
        model = entry.builder(num_classes=num_classes, in_chans=in_chans, **overrides)
    else:
        model = entry.builder(**overrides)
    model.model_name = name  # lets load_weights / checkpoints find the family without a lookup table
    model.model_family = entry.family
    return model


def list_models(pattern: str | None = None, family: str | None = None, kind: str | None = None) -> list[str]:
    """Sorted registered names, optionally filtered by a glob ``pattern``, ``family`` and ``kind``."""
    _ensure_loaded()
    names = []
    for key, entry in _REGISTRY.items():
        if pattern and not fnmatch.fnmatch(key, pattern):
            continue
        if family and entry.family != family:
            continue
        if kind and entry.kind != kind:
            continue
        names.append(key)
    return sorted(names, key=_natural_key)


def _natural_key(name: str) -> list:
    # resnet18 < resnet34 < resnet101 (numbers compare as numbers)
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def list_families() -> list[str]:
    _ensure_loaded()
    return sorted({e.family for e in _REGISTRY.values()})
