"""The segmenter registry: ``@register_segmenter``, ``create_segmenter(name, **kwargs)``, ``segmenter_names()``.

Segmenters are kept apart from the classifier registry (:mod:`paperzoo.registry`) as detectors are: they return a
dict of per-pixel logits, torchvision's convention, not one logit vector. A segmenter maps images (B, C, H, W) to
``{"out": (B, K, H, W)}`` (plus ``"aux"`` where it has an auxiliary classifier) at the input's own size, in train
and eval mode alike; ``num_classes`` counts the background.
"""

from __future__ import annotations

from ..named_registry import NamedRegistry, UnknownNameError

__all__ = ["register_segmenter", "create_segmenter", "segmenter_doc", "segmenter_names", "UnknownSegmenterError"]


class UnknownSegmenterError(UnknownNameError):
    """No segmenter is registered under that name (a ``KeyError``: the CLI turns it into one line)."""


# The modules whose import registers their builders.
_REGISTRY = NamedRegistry("segmenter", ("paperzoo.segmentation.fcn",), UnknownSegmenterError)
register_segmenter = _REGISTRY.register
segmenter_names = _REGISTRY.names
segmenter_doc = _REGISTRY.doc
create_segmenter = _REGISTRY.create
