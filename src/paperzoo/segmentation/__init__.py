"""Semantic segmentation (issue 17): which class each pixel belongs to.

* :mod:`.registry` — the segmenter registry: ``register_segmenter``, ``create_segmenter(name, **kwargs)``,
  ``segmenter_names()``.
"""
