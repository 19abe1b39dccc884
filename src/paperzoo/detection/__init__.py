"""Object detection: the R-CNN line (issue 15) and one-stage / set detectors (issue 17).

Each module is a small, tested, paper-cited piece; docs/models/detection.md explains them in the papers' order.

Building blocks:

* :mod:`.boxes` — box formats, area, IoU / GIoU, and Faster R-CNN's box coder (Eq. 2).
* :mod:`.nms` — non-maximum suppression and class-aware batched NMS, vectorized in torch.
* :mod:`.anchors` — anchors per feature level (sizes x aspect ratios, torchvision's rounding).
* :mod:`.matcher` — the IoU matcher (thresholds, low-quality matches) and the balanced positive/negative sampler.
* :mod:`.roi_ops` — RoI pooling (Fast R-CNN) and RoIAlign (Mask R-CNN).
* :mod:`.fpn` — the Feature Pyramid Network with the extra max-pooled level, and a features_only backbone with it.

Proposals and the detectors' stages:

* :mod:`.selective_search` — selective search (Uijlings et al. 2013): hierarchical grouping of Felzenszwalb
  segments with the four similarities, diversified; "fast" and "quality" modes.
* :mod:`.transform` — the detector's input transform: normalize, resize, pad to a batch; boxes mapped back.
* :mod:`.rpn` — the Region Proposal Network (Faster R-CNN): head, anchor targets, Eq. 1 loss, proposal selection.
* :mod:`.roi_heads` — the second stage: multi-scale RoIAlign (FPN Eq. 1), the 2fc head, the class and box
  predictor, sampling, Fast R-CNN's multi-task loss, per-class postprocessing.

Detectors:

* :mod:`.faster_rcnn` — Faster R-CNN-FPN on any registered CNN; ``fasterrcnn_resnet50_fpn`` is torchvision's,
  and loads its checkpoints through ``paperzoo.load_weights(..., source="torchvision")``.
* :mod:`.rcnn` — R-CNN (warped regions through a whole classifier) and Fast R-CNN (RoI pooling on one shared map),
  on given proposals.
* :mod:`.retinanet` — RetinaNet: the sigmoid focal loss, prior init, class and box subnets on P3-P7;
  ``retinanet_resnet50_fpn`` is torchvision's v1.
* :mod:`.yolo` — YOLO v1: the S x S grid, B boxes per cell, Eq. 3's sum-squared loss; the paper's own network.
* :mod:`.detr` and :mod:`.set_loss` — DETR: sine positions, object queries, Hungarian matching (scipy) with the
  paper's cost, the set loss with auxiliary decoding losses.
* :mod:`.registry` — the detector registry: ``register_detector``, ``create_detector(name, **kwargs)``,
  ``detector_names()``.

Data, metrics and training:

* :mod:`.scenes` — Fashion-MNIST scenes: a seeded detection dataset of real items, exported in COCO format.
* :mod:`.data` — COCO, Pascal VOC and scenes datasets (bad annotations named, ``skip_invalid``), batching.
* :mod:`.augment` — box-moving flips and resizes, YOLO's scale / translate and exposure / saturation.
* :mod:`.coco_eval` — COCO AP / AR through pycocotools.
* :mod:`.task` — the ``detection`` task on the shared trainer (``paperzoo detect train|eval|predict``),
  ``load_detector`` and inference helpers.

Import the submodule you need; this package imports nothing by itself.
"""
