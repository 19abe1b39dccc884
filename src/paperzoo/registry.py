"""A tiny model registry: ``@register_model``, ``create_model``, ``list_models``.

Every builder is registered with the paper it implements, so the CLI, the docs tables and the
registry-wide tests can iterate over the whole zoo.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import re
import typing
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn

__all__ = ["PORTABLE_ARGS", "Paper", "ModelEntry", "UnknownModelError", "register_model", "create_model", "list_models",
           "get_entry", "model_arg_names", "model_config_type", "resolve_model_args"]


class UnknownModelError(KeyError):
    """No model is registered under that name (a ``KeyError``, so ``except KeyError`` still catches it)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""  # KeyError would show the message quoted


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
    """Return the registry entry of ``name``; unknown names raise :class:`UnknownModelError` listing close
    matches."""
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise UnknownModelError(f"unknown model {name!r}.{hint} See `paperzoo models` for the full list.") from None


def create_model(name: str, *, num_classes: int = 1000, in_chans: int = 3, features_only: bool = False,
                 out_indices: Sequence[int] | None = None, **overrides: Any) -> nn.Module:
    """Build a registered model.

    Args:
        name: registry name (see :func:`list_models`).
        num_classes: size of the classifier output (image models).
        in_chans: input channels, e.g. 1 for grayscale (image models).
        features_only: return the backbone's multi-scale maps instead of logits: a
            :class:`~paperzoo.models.features.FeatureExtractor` whose forward gives a list of (B, C_i, H_i, W_i)
            and whose ``feature_info`` lists their channels and reductions (CNN and Swin families).
        out_indices: the levels ``features_only`` returns (default: all); see the family's ``feature_levels()``.
        **overrides: fields of the family's config dataclass, e.g. ``small_input=True``, ``drop_rate=0.2``.
    """
    if out_indices is not None and not features_only:
        raise ValueError("out_indices selects feature levels: it needs features_only=True")
    entry = get_entry(name)
    kwargs = {"num_classes": num_classes, "in_chans": in_chans, **overrides} if entry.kind == "image" else overrides
    try:
        model = entry.builder(**kwargs)
    except TypeError as e:  # a field the variant's builder sets itself, e.g. alpha of mobilenetv2_100
        fixed = re.search(r"multiple values for (?:keyword )?argument '(\w+)'", str(e))
        if fixed is None:
            raise
        raise ValueError(f"model.args.{fixed[1]}: {name} sets {fixed[1]!r} itself (it defines the variant); "
                         f"pick another variant (paperzoo models --family {entry.family})") from None
    model.model_name = name  # lets load_weights / checkpoints find the family without a lookup table
    model.model_family = entry.family
    if features_only:
        from paperzoo.models.features import FeatureExtractor

        return FeatureExtractor(model, out_indices)
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


# ------------------------------------------------------------------------------------------ model arguments
#: arguments whose meaning every image family shares: kept when a recipe written for one family trains another
PORTABLE_ARGS = ("small_input", "drop_rate", "drop_path_rate")


def model_config_type(name: str) -> type | None:
    """The config dataclass whose fields :func:`create_model`'s overrides fill, e.g. ``DenseNetConfig``.

    Read from the type hints: a builder returns its model class, whose ``__init__`` takes ``cfg: <Config>``.
    None for a model registered without them (e.g. a user's builder taking plain keyword arguments).
    """
    model_cls = typing.get_type_hints(get_entry(name).builder).get("return")
    cfg_type = typing.get_type_hints(model_cls.__init__).get("cfg") if isinstance(model_cls, type) else None
    return cfg_type if dataclasses.is_dataclass(cfg_type) else None


def model_arg_names(name: str) -> list[str] | None:
    """The arguments model ``name`` takes (its config dataclass's fields), e.g. ``["block_layers", "k", ...]``;
    None when the model does not declare them (see :func:`model_config_type`)."""
    cfg_type = model_config_type(name)
    return None if cfg_type is None else [f.name for f in dataclasses.fields(cfg_type)]


def resolve_model_args(name: str, args: dict[str, Any], *, explicit: Collection[str] = (),
                       written_for: str | None = None) -> tuple[dict[str, Any], str | None]:
    """The arguments of ``args`` that model ``name`` takes, and a line naming those dropped (or None).

    Args:
        name: the model to build.
        args: ``model.args`` of a config.
        explicit: keys the user gave for this run (``--set model.args.k=v``): they are never dropped.
        written_for: the model a recipe wrote the other keys for, when the run trains another one (``--model``).
            Within the same family (same config dataclass) every key carries over; to another family only
            :data:`PORTABLE_ARGS` do, because the others mean something else or nothing there (ResNet's
            ``width`` is a channel count, EfficientNet's a multiplier).

    Raises:
        ValueError: a key the model cannot take that was explicit, or written for this same family: one line
            listing the arguments it takes.
    """
    valid = model_arg_names(name)
    if valid is None:  # the model declares no config dataclass: its builder checks its own arguments
        return dict(args), None
    same_family = written_for is None or _config_type_or_none(written_for) is model_config_type(name)
    kept = {k: v for k, v in args.items()
            if k in explicit or same_family or (k in PORTABLE_ARGS and k in valid)}
    bad = [k for k in kept if k not in valid]
    if bad:
        close = difflib.get_close_matches(bad[0], valid, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"model.args: {name} takes no {', '.join(map(repr, bad))}{hint}; its arguments: "
                         f"{', '.join(valid)}")
    portable = f"only {', '.join(PORTABLE_ARGS)} carry over to another family"
    dropped = [f"{k}={v!r} ({f'{name} takes no {k!r}' if k not in valid else portable})"
               for k, v in args.items() if k not in kept]
    if not dropped:
        return kept, None
    carried = [f"{k}={v!r}" for k, v in kept.items() if k not in explicit]
    note = f"model {name}: dropped {', '.join(dropped)}, set by the recipe for {written_for}"
    return kept, note + (f"; kept {', '.join(carried)}" if carried else "")


def _config_type_or_none(name: str) -> type | None:
    try:
        return model_config_type(name)
    except KeyError:  # not a registered model (UnknownModelError): nothing carries over as same-family
        return None
