"""Semantic segmentation (issue 17): which class each pixel belongs to (docs/models/segmentation.md).

* :mod:`.registry` — the segmenter registry: ``register_segmenter``, ``create_segmenter(name, **kwargs)``,
  ``segmenter_names()``.
* :mod:`.fcn` — FCN (Long et al. 2015): ``fcn_resnet50`` as torchvision builds it, ``fcn`` on any ResNet.
* :mod:`.data` — semantic masks of the Fashion-MNIST scenes, COCO (polygons / RLE) and VOC PNGs; joint transforms.
* :mod:`.metrics` — confusion matrix, mean IoU, per-class IoU, pixel accuracy.
* :mod:`.task` — the ``segmentation`` task on the shared trainer (``paperzoo segment train|eval|predict``).
"""
