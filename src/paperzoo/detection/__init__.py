"""Object detection building blocks (the R-CNN line: issue 15), each a small, tested, paper-cited piece.

* :mod:`.boxes` — box formats, area, IoU / GIoU, and Faster R-CNN's box coder (Eq. 2).
* :mod:`.nms` — non-maximum suppression and class-aware batched NMS, vectorized in torch.
* :mod:`.anchors` — anchors per feature level (sizes x aspect ratios, torchvision's rounding).
* :mod:`.matcher` — the IoU matcher (thresholds, low-quality matches) and the balanced positive/negative sampler.
* :mod:`.roi_ops` — RoI pooling (Fast R-CNN) and RoIAlign (Mask R-CNN).
* :mod:`.scenes` — Fashion-MNIST scenes: a seeded detection dataset of real items, exported in COCO format.
* :mod:`.fpn` — the Feature Pyramid Network with the extra max-pooled level, and a features_only backbone with it.

Import the submodule you need; this package imports nothing by itself.
"""
