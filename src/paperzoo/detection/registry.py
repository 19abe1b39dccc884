"""The detector registry: ``@register_detector``, ``create_detector(name, **kwargs)``, ``detector_names()``.

Detectors are kept apart from the classifier registry (:mod:`paperzoo.registry`): they take other arguments
(``num_classes`` counts the background, recipes set sizes and thresholds) and return losses or boxes, not
logits. Each builder returns a model whose ``model_family`` names its weight converters.
"""

from __future__ import annotations

from ..named_registry import NamedRegistry, UnknownNameError

__all__ = ["register_detector", "create_detector", "detector_doc", "detector_names", "UnknownDetectorError"]


class UnknownDetectorError(UnknownNameError):
    """No detector is registered under that name (a ``KeyError``: the CLI turns it into one line)."""


# The modules whose import registers their builders (those present: the package grows one file at a time).
_REGISTRY = NamedRegistry("detector", ("paperzoo.detection.faster_rcnn", "paperzoo.detection.rcnn",
                                       "paperzoo.detection.retinanet", "paperzoo.detection.detr",
                                       "paperzoo.detection.yolo"), UnknownDetectorError)
register_detector = _REGISTRY.register
detector_names = _REGISTRY.names
detector_doc = _REGISTRY.doc
create_detector = _REGISTRY.create
