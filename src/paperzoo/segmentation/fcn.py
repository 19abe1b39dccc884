"""Fully convolutional networks (FCN) for semantic segmentation, as torchvision builds ``fcn_resnet50``.

* Long, Shelhamer & Darrell 2015, "Fully Convolutional Networks for Semantic Segmentation", arXiv:1411.4038.
  A classification network's fully connected layers are convolutions whose kernels cover their entire input
  region (Sec. 3.1, Fig. 2: "convolutionalization"); without them every layer is local and translation-equivariant,
  so the network takes an input of any size and returns a map of class scores whose size follows the input's,
  which in-network upsampling brings back to the input's pixels (Sec. 3.3). Training is a per-pixel
  multinomial logistic loss (Sec. 3). :func:`convolutionalize` is Sec. 3.1's step; :class:`FullyConnectedSegmenter`
  is the network that has not taken it, kept as the counter-example of the notes' Q3.

Layout (torchvision's ``fcn_resnet50``, layer for layer: 32,957,013 parameters at 21 classes, 35,322,218 with the
auxiliary classifier; its state dict keys ``backbone.conv1...backbone.layer4``, ``classifier.0..4``,
``aux_classifier.0..4``, so its checkpoints load through ``load_weights(..., source="torchvision")``):

* ``backbone``: a ResNet without avgpool and fc whose layer3 and layer4 dilate instead of striding
  (``replace_stride_with_dilation=(False, True, True)``): output stride 8;
* ``classifier``: :class:`FCNHead` on layer4 -- 3x3 conv to C/4, BatchNorm, ReLU, dropout 0.1, 1x1 conv to K;
* ``aux_classifier`` (``aux_loss=True``): a second FCNHead on layer3, whose loss is added during training;
* both score maps are upsampled bilinearly to the input's size.

Deviations from the paper (all torchvision's):

* a ResNet backbone (He et al. 2016) instead of VGG16, and its 3x3-conv + BN head instead of the paper's
  convolutionalized fc6/fc7 (7x7 and 1x1 convolutions of 4096 channels);
* the output stride is brought to 8 by dilated convolutions (DeepLab, Chen et al., arXiv:1606.00915) rather than
  by the paper's skip layers (FCN-16s/8s, Sec. 4.2), and the stride-8 upsampling is fixed bilinear
  interpolation (the paper fixes its last upsampling to bilinear too, and learns the intermediate ones);
* the skip layers are an option (``skips``, :func:`fcn`): 1x1 score layers on finer maps, zero-initialised,
  summed with the coarser scores as the paper does, but those are upsampled by fixed bilinear interpolation
  rather than by a learned deconvolution initialised to it;
* the auxiliary classifier on layer3 (deep supervision, as PSPNet, Zhao et al., arXiv:1612.01105) is not in the
  paper.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import create_model
from ..weights import fill_bn_counters, register_converter
from .registry import register_segmenter

__all__ = ["FCN", "FCNHead", "FullyConnectedSegmenter", "convolutionalize", "fcn_backbone", "fcn_resnet50",
           "fcn", "skip_score"]

#: torchvision's FCN backbones: layer3 and layer4 keep stride 8 and dilate by 2 and 4 instead.
DILATE_LAYER3_4 = (False, True, True)


def upsample(scores: Tensor, size: Sequence[int]) -> Tensor:
    """Score maps (B, K, h, w) -> (B, K, H, W) by bilinear interpolation (Sec. 3.3), torchvision's corners."""
    return F.interpolate(scores, size=tuple(size), mode="bilinear", align_corners=False)


class FCNHead(nn.Sequential):
    """Per-location classifier on a feature map: 3x3 conv (C -> C/4), BN, ReLU, dropout 0.1, 1x1 conv (-> K).

    A Sequential so that its parameters are torchvision's ``classifier.0`` (conv), ``.1`` (BN) and ``.4`` (conv).
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        inter = in_channels // 4
        super().__init__(
            nn.Conv2d(in_channels, inter, 3, padding=1, bias=False),
            nn.BatchNorm2d(inter),
            nn.ReLU(),
            nn.Dropout(0.1),
            nn.Conv2d(inter, num_classes, 1),  # the class scores: a 1x1 conv is a fc layer at every location
        )


class FCN(nn.Module):
    """Backbone maps -> per-location class scores -> upsampled to the input: ``{"out"[, "aux"]: (B, K, H, W)}``.

    Args:
        backbone: images (B, C, H, W) -> list of maps, shallow to deep (a ``create_model(...,
            features_only=True)`` model): the last for ``classifier``, the one before for ``aux_classifier``,
            and the ones before the last for ``skips``.
        classifier, aux_classifier: map (B, C_i, h, w) -> scores (B, K, h, w).
        skips: the paper's skip layers (Sec. 4.2, Fig. 3), deepest first: a score layer on each map before the
            last, whose scores are added to the coarser ones upsampled to its size (FCN-16s: one, FCN-8s: two).
    """

    def __init__(self, backbone: nn.Module, classifier: nn.Module, aux_classifier: nn.Module | None = None,
                 skips: Sequence[nn.Module] = ()) -> None:
        super().__init__()
        self.backbone, self.classifier, self.aux_classifier = backbone, classifier, aux_classifier
        self.skips = nn.ModuleList(skips)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        size = x.shape[-2:]  # nothing below depends on it but the final upsampling: any input size works
        maps = self.backbone(x)  # ... layer3 (B, 1024, H/8, W/8), layer4 (B, 2048, H/8, W/8) for ResNet-50
        scores = self.classifier(maps[-1])
        for score, finer in zip(self.skips, reversed(maps[:-1])):  # Sec. 4.2: fuse "what" with "where"
            scores = upsample(scores, finer.shape[-2:]) + score(finer)  # (B, K, h, w) -> (B, K, 2h, 2w), summed
        out = {"out": upsample(scores, size)}
        if self.aux_classifier is not None:
            out["aux"] = upsample(self.aux_classifier(maps[-2]), size)
        return out


def skip_score(in_channels: int, num_classes: int) -> nn.Conv2d:
    """A skip layer's scores: a 1x1 conv on a finer map, zero-initialised as in Sec. 4.2, so that training starts
    from the coarser net's predictions."""
    conv = nn.Conv2d(in_channels, num_classes, 1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def fcn_backbone(name: str, *, aux_loss: bool, in_chans: int = 3,
                 replace_stride_with_dilation: Sequence[bool] | None = DILATE_LAYER3_4, skips: int = 0,
                 **model_args: Any) -> nn.Module:
    """Registered CNN ``name`` as a features-only model returning its last levels: layer4, with layer3 for
    ``aux_loss``, and the ``skips`` levels before layer4 for the skip layers (e.g. layer2, layer3, layer4).

    The classifier's avgpool and fc are dropped (torchvision's ``IntermediateLayerGetter``), the other modules
    keep their names. ``replace_stride_with_dilation`` is ResNet's (None for a family without that option).
    """
    if replace_stride_with_dilation is not None:
        model_args["replace_stride_with_dilation"] = tuple(replace_stride_with_dilation)
    levels = max(skips + 1, 2 if aux_loss else 1)  # layer4, and layer3 for aux, and the skip layers' maps
    try:
        return create_model(name, in_chans=in_chans, features_only=True,
                            out_indices=tuple(range(-levels, 0)), **model_args)
    except TypeError as e:  # a config field the family does not have
        raise ValueError(f"FCN backbone {name!r} does not take these arguments ({e}); the fcn builder's "
                         "defaults are ResNet's: choose a ResNet, or build FCN(fcn_backbone(name, "
                         "replace_stride_with_dilation=None, ...), FCNHead(...))") from None


def _build(backbone: str, num_classes: int, aux_loss: bool, skips: int = 0, **backbone_kw: Any) -> FCN:
    if skips < 0:
        raise ValueError(f"skips={skips}: the number of skip layers cannot be negative")
    body = fcn_backbone(backbone, aux_loss=aux_loss, skips=skips, **backbone_kw)  # too many: create_model says
    channels = body.feature_info.channels()  # shallow to deep
    model = FCN(body, FCNHead(channels[-1], num_classes),
                FCNHead(channels[-2], num_classes) if aux_loss else None,
                [skip_score(c, num_classes) for c in reversed(channels[-1 - skips:-1])])
    model.model_family = "fcn"  # load_weights finds the converters below through it
    model.backbone_name, model.num_classes, model.in_chans = backbone, num_classes, body.in_chans
    model.output_stride = body.feature_info.reduction()[-1 - skips]
    return model


# ------------------------------------------------------------------------- Q3: what a fully connected head does
def convolutionalize(fc: nn.Linear, in_shape: Sequence[int]) -> nn.Conv2d:
    """Sec. 3.1, Fig. 2: ``fc`` reading a flattened (C, h, w) map is the conv with one (C, h, w) kernel per output.

    On a (C, h, w) input the conv gives ``fc``'s outputs (as a 1x1 map); on a larger one it slides, giving a map
    of them -- the step that turns a classifier into a network that takes any input size.
    """
    c, h, w = in_shape
    if fc.in_features != c * h * w:
        raise ValueError(f"fc takes {fc.in_features} features, not C*h*w = {c}*{h}*{w} = {c * h * w}")
    conv = nn.Conv2d(c, fc.out_features, (h, w), bias=fc.bias is not None)
    with torch.no_grad():
        conv.weight.copy_(fc.weight.view(fc.out_features, c, h, w))  # (K, C*h*w) -> (K, C, h, w): flatten's order
        if fc.bias is not None:
            conv.bias.copy_(fc.bias)
    return conv


class FullyConnectedSegmenter(nn.Module):
    """The same backbone with a fully connected head: (C*h*w) features -> (K*h*w) scores, for one input size.

    The counter-example of Q3 (not registered): its fc layer's weight matrix has C*h*w columns, fixed by the
    ``input_size`` it is built for, so any other size is refused with a ValueError saying why.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, input_size: Sequence[int]) -> None:
        super().__init__()
        self.backbone, self.input_size = backbone, tuple(input_size)
        was_training = backbone.training
        with torch.no_grad():  # the map's shape at that size: one probe, eval mode (leaves BN statistics alone)
            c, h, w = backbone.eval()(torch.zeros(1, backbone.in_chans, *self.input_size))[-1].shape[1:]
        backbone.train(was_training)
        self.map_shape, self.num_classes = (c, h, w), num_classes
        self.fc = nn.Linear(c * h * w, num_classes * h * w)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        f = self.backbone(x)[-1]  # (B, C, h', w')
        if tuple(f.shape[1:]) != self.map_shape:
            c, h, w = self.map_shape
            raise ValueError(
                f"FullyConnectedSegmenter was built for {self.input_size[0]}x{self.input_size[1]} inputs: its fully "
                f"connected layer takes C*h*w = {c}*{h}*{w} = {c * h * w} features, and a {x.shape[2]}x{x.shape[3]} "
                f"input gives {'*'.join(map(str, f.shape[1:]))} = {f[0].numel()}; only a fully convolutional "
                "network takes any input size (FCN, Sec. 3.1)")
        scores = self.fc(f.flatten(1))  # (B, C*h*w) -> (B, K*h*w)
        scores = scores.view(x.shape[0], self.num_classes, *self.map_shape[1:])  # (B, K, h, w)
        return {"out": upsample(scores, x.shape[-2:])}


# ------------------------------------------------------------------------------------ torchvision checkpoints
@register_converter("fcn", "torchvision")
def _from_torchvision(sd: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Our keys are torchvision's. Its checkpoints were trained with the auxiliary classifier (torchvision forces
    ``aux_loss=True`` with weights): a model built without it drops those keys, as they only serve training."""
    if getattr(model, "aux_classifier", None) is None:
        sd = {k: v for k, v in sd.items() if not k.startswith("aux_classifier.")}
    return fill_bn_counters(sd, model)


# ----------------------------------------------------------------------------------------- registered models
@register_segmenter
def fcn_resnet50(*, num_classes: int = 21, aux_loss: bool = False, in_chans: int = 3,
                 **backbone_args: Any) -> FCN:
    """torchvision's ``fcn_resnet50``: 32,957,013 parameters at 21 classes (35,322,218 with ``aux_loss``)."""
    return _build("resnet50", num_classes, aux_loss, in_chans=in_chans, **backbone_args)


@register_segmenter
def fcn(*, backbone: str = "resnet18", num_classes: int = 21, aux_loss: bool = False, in_chans: int = 3,
        replace_stride_with_dilation: Sequence[bool] | None = DILATE_LAYER3_4, small_input: bool = True,
        stem_stride: int = 2, width: int = 32, skips: int = 0, **backbone_args: Any) -> FCN:
    """FCN on a registered ResNet, set up for small inputs (the 128x128 Fashion-MNIST scenes): output stride 4.

    The defaults: a half-width ResNet-18 (``width=32``: 32..256 channels) with the 3x3/2 small-input stem and no
    max pool, then layer1 at stride 2, layer2 at 4, layer3 and layer4 dilated (by 2 and 4) at stride 4, so a
    128x128 scene gives 32x32 score maps. Why not torchvision's stride 8: the scenes' items are 17-56 pixels
    wide, and scores at stride 8 bilinearly upsampled cap the mean IoU near 0.82 even with every cell right
    (ground-truth masks average-pooled by 8 and upsampled: 0.82; by 4: 0.93), which leaves no room for the
    classification errors under issue 17's 0.80. ``backbone_args`` go to ``create_model`` too;
    ``small_input=False, stem_stride=1, width=64`` is torchvision's layout (output stride 8).

    ``skips=2, replace_stride_with_dilation=None`` is the paper's FCN-8s way instead (Sec. 4.2): the backbone
    strides as its classifier does (layer4 at 16 on the scenes, 8x8 maps; far cheaper than dilating), and score
    layers on layer3 and layer2 bring the scores back to stride 4.
    """
    return _build(backbone, num_classes, aux_loss, skips, in_chans=in_chans,
                  replace_stride_with_dilation=replace_stride_with_dilation, small_input=small_input,
                  stem_stride=stem_stride, width=width, **backbone_args)
