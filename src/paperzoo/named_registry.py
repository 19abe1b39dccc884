"""A name -> builder registry for model kinds kept apart from the classifier registry (detectors, segmenters).

Each kind takes other arguments than classifiers and returns losses, boxes or per-pixel logits, so it has its own
:class:`NamedRegistry`; the modules that register builders are imported on first use (those present).
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

Builder = Callable[..., nn.Module]


class NamedRegistry:
    """Builders of one kind (``"detector"``, ``"segmenter"``) by name; unknown names raise ``unknown_error``."""

    def __init__(self, kind: str, modules: Sequence[str], unknown_error: type[KeyError]) -> None:
        self.kind, self.modules, self.unknown_error = kind, tuple(modules), unknown_error
        self.builders: dict[str, Builder] = {}

    def register(self, fn: Builder | None = None, *, name: str | None = None):
        """Register a builder under its function name (or ``name``); duplicate names are refused. Usable bare
        (``@register``) or with a name (``@register(name="fast_rcnn")``)."""

        def wrap(builder: Builder) -> Builder:
            key = name or builder.__name__
            if key in self.builders and self.builders[key] is not builder:
                raise ValueError(f"{self.kind} {key!r} is already registered (by {self.builders[key].__module__})")
            self.builders[key] = builder
            return builder

        return wrap(fn) if fn is not None else wrap

    def _load(self) -> None:
        for module in self.modules:
            if importlib.util.find_spec(module) is not None:
                importlib.import_module(module)

    def names(self) -> list[str]:
        """Sorted names of the registered builders."""
        self._load()
        return sorted(self.builders)

    def doc(self, name: str) -> str:
        """The first line of builder ``name``'s docstring."""
        self._load()
        return ((self.builders[name].__doc__ or "").strip().splitlines() or [""])[0]

    def create(self, name: str, **kwargs: Any) -> nn.Module:
        """Build ``name`` with its builder's keyword arguments; the model remembers its name (``model_name``)."""
        self._load()
        if name not in self.builders:
            close = difflib.get_close_matches(name, list(self.builders), n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise self.unknown_error(f"unknown {self.kind} {name!r}{hint} "
                                     f"(known: {', '.join(sorted(self.builders))})")
        model = self.builders[name](**kwargs)
        model.model_name = name
        return model


class UnknownNameError(KeyError):
    """No builder is registered under that name (a ``KeyError`` whose message is the plain sentence)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
