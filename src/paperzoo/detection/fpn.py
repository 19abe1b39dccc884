"""Feature Pyramid Network: one 256-channel map per backbone stage, each with the semantics of the deepest.

Lin et al. 2017, "Feature Pyramid Networks for Object Detection", arXiv:1612.03144, Sec. 3 and Fig. 3:

* **bottom-up**: the backbone's stage outputs C2 ... C5 (strides 4 ... 32);
* **lateral connections**: a 1x1 convolution maps each ``C_i`` to ``d = 256`` channels;
* **top-down pathway**: starting from the coarsest, the running map is upsampled by nearest neighbour to the
  next lateral's size and added to it (element-wise sum);
* each merged map goes through a 3x3 convolution "to reduce the aliasing effect of upsampling", giving P2 ... P5.

Faster R-CNN with FPN (Sec. 4.1) adds P6, "a stride two subsampling of P5", used only by the RPN for the largest
anchors (512^2): as in Detectron and torchvision, a max pooling with kernel 1 and stride 2. RetinaNet (Lin et al.
2017, arXiv:1708.02002, Sec. 4) adds P6 = conv3x3/2(C5) and P7 = conv3x3/2(ReLU(P6)) instead (``"p6p7_c5"``);
torchvision's ``retinanet_resnet50_fpn`` (v1) takes P6 from P5 (``"p6p7"``), its v2 from C5.

Layout and details follow torchvision's ``ops/feature_pyramid_network.py`` so that the ``backbone.fpn.*`` tensors
of its Faster R-CNN checkpoints load one to one:

* each convolution sits at index 0 of a small ``nn.Sequential`` (torchvision's ``Conv2dNormActivation``):
  ``inner_blocks.{i}.0`` are the laterals, ``layer_blocks.{i}.0`` the 3x3 output convolutions; with a
  ``norm_layer`` the convolution loses its bias and the norm sits at index 1 (``fasterrcnn_resnet50_fpn_v2``);
* the convolutions are initialised with ``kaiming_uniform_(a=1)`` and zero bias (torchvision's and Detectron's
  choice; the paper does not specify one);
* upsampling goes to the lateral's exact size (``F.interpolate(size=...)``), not by a factor of 2, so inputs
  whose sides are not multiples of 32 work (the paper's images are padded; ours need not be);
* older checkpoints (torchvision < 0.13, among them the v1 COCO Faster R-CNN) name the convolutions
  ``inner_blocks.{i}.weight``; :meth:`FeaturePyramidNetwork._load_from_state_dict` renames them on load.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FeaturePyramidNetwork", "BackboneWithFPN", "LastLevelP6P7", "last_level_max_pool"]

EXTRA_BLOCKS = ("maxpool", "p6p7", "p6p7_c5", None)


def last_level_max_pool(p5: Tensor) -> Tensor:
    """P6 of Faster R-CNN-FPN (Sec. 4.1): P5 subsampled with stride 2 (max pooling, kernel 1, no padding)."""
    return F.max_pool2d(p5, kernel_size=1, stride=2, padding=0)  # (B, d, ceil(H/2), ceil(W/2))


class LastLevelP6P7(nn.Module):
    """RetinaNet's P6 = conv3x3/2(x), P7 = conv3x3/2(ReLU(P6)), x being P5 or C5 (keys ``p6.*``, ``p7.*``)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.p6 = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)
        self.p7 = nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> list[Tensor]:
        p6 = self.p6(x)  # (B, d, ceil(H/2), ceil(W/2))
        return [p6, self.p7(F.relu(p6))]


def _conv_block(in_chs: int, out_chs: int, kernel_size: int, norm_layer: Callable[..., nn.Module] | None
                ) -> nn.Sequential:
    """Conv (index 0) [+ norm (index 1)], no activation: the FPN adds and smooths linearly."""
    conv = nn.Conv2d(in_chs, out_chs, kernel_size, padding=kernel_size // 2, bias=norm_layer is None)
    return nn.Sequential(conv, norm_layer(out_chs)) if norm_layer is not None else nn.Sequential(conv)


class FeaturePyramidNetwork(nn.Module):
    """The FPN of Lin et al. 2017 (Sec. 3) on maps ordered from finest to coarsest.

    Args:
        in_channels_list: channels of the input maps, finest first (ResNet-50: ``[256, 512, 1024, 2048]``).
        out_channels: ``d``, the channels of every output map (256 in the paper).
        extra_block: ``"maxpool"`` adds the ``"pool"`` level P6 = max_pool(P5, 1, stride 2); ``"p6p7"`` /
            ``"p6p7_c5"`` add RetinaNet's ``"p6"``, ``"p7"`` from P5 / from C5 (:class:`LastLevelP6P7`, module
            ``extra_blocks``); ``None`` adds none.
        norm_layer: a norm after each convolution (e.g. ``nn.BatchNorm2d``); ``None`` in the paper.

    Forward takes a mapping ``name -> (B, C_i, H_i, W_i)`` in that order and returns an ``OrderedDict`` with the
    same names -> ``(B, d, H_i, W_i)``, then ``"pool"`` when ``extra_block="maxpool"``.
    """

    def __init__(self, in_channels_list: Sequence[int], out_channels: int = 256, extra_block: str | None = "maxpool",
                 norm_layer: Callable[..., nn.Module] | None = None) -> None:
        super().__init__()
        if extra_block not in EXTRA_BLOCKS:
            raise ValueError(f"extra_block must be one of {EXTRA_BLOCKS}, got {extra_block!r}")
        if not in_channels_list or any(int(c) <= 0 for c in in_channels_list):
            raise ValueError(f"in_channels_list must be positive channel counts, got {list(in_channels_list)}")
        self.in_channels_list = [int(c) for c in in_channels_list]
        self.out_channels = out_channels
        self.extra_block = extra_block
        self.inner_blocks = nn.ModuleList(_conv_block(c, out_channels, 1, norm_layer) for c in self.in_channels_list)
        self.layer_blocks = nn.ModuleList(
            _conv_block(out_channels, out_channels, 3, norm_layer) for _ in self.in_channels_list)
        if extra_block in ("p6p7", "p6p7_c5"):
            source = out_channels if extra_block == "p6p7" else self.in_channels_list[-1]
            self.extra_blocks = LastLevelP6P7(source, out_channels)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, features: Mapping[str, Tensor]) -> OrderedDict[str, Tensor]:
        names, maps = list(features.keys()), list(features.values())
        if len(maps) != len(self.inner_blocks):
            raise ValueError(f"FPN built for {len(self.inner_blocks)} maps, got {len(maps)} ({names})")
        top_down = self.inner_blocks[-1](maps[-1])  # (B, d, H_top, W_top): the coarsest lateral starts the pathway
        outputs = [self.layer_blocks[-1](top_down)]
        for i in range(len(maps) - 2, -1, -1):  # finer and finer
            lateral = self.inner_blocks[i](maps[i])  # (B, d, H_i, W_i)
            top_down = lateral + F.interpolate(top_down, size=lateral.shape[-2:], mode="nearest")  # Fig. 3 merge
            outputs.insert(0, self.layer_blocks[i](top_down))  # 3x3 conv against upsampling's aliasing
        if self.extra_block == "maxpool":
            names, outputs = names + ["pool"], outputs + [last_level_max_pool(outputs[-1])]
        elif self.extra_block in ("p6p7", "p6p7_c5"):
            names = names + ["p6", "p7"]
            outputs = outputs + self.extra_blocks(outputs[-1] if self.extra_block == "p6p7" else maps[-1])
        return OrderedDict(zip(names, outputs))

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:
        """Accept torchvision's pre-0.13 keys, ``inner_blocks.{i}.weight``, as ``inner_blocks.{i}.0.weight``."""
        old = re.compile(re.escape(prefix) + r"(inner_blocks|layer_blocks)\.(\d+)\.(weight|bias)$")
        for key in [k for k in state_dict if old.match(k)]:
            blocks, i, kind = old.match(key).groups()
            state_dict[f"{prefix}{blocks}.{i}.0.{kind}"] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class BackboneWithFPN(nn.Module):
    """A features-only backbone followed by an FPN: image -> ``{"0": P2, "1": P3, "2": P4, "3": P5, "pool": P6}``.

    Args:
        backbone: a model from ``create_model(name, features_only=True, out_indices=...)`` (its forward returns a
            list of maps, its ``feature_info.channels()`` their channels). For Faster R-CNN-FPN on a ResNet, take
            ``out_indices=(1, 2, 3, 4)``: C2 ... C5 at strides 4 ... 32.
        out_channels: ``d`` of the FPN.
        extra_block: see :class:`FeaturePyramidNetwork`.

    The submodules are named ``body`` and ``fpn`` as in torchvision's ``BackboneWithFPN``; the output names are
    the level's position as a string, as torchvision's detectors expect (``MultiScaleRoIAlign`` selects by name).
    ``out_channels`` is the attribute a detection head reads.
    """

    def __init__(self, backbone: nn.Module, out_channels: int = 256, extra_block: str | None = "maxpool",
                 norm_layer: Callable[..., nn.Module] | None = None) -> None:
        super().__init__()
        if not hasattr(backbone, "feature_info"):
            raise ValueError("BackboneWithFPN needs a features_only model: "
                             "create_model(name, features_only=True, out_indices=...)")
        self.body = backbone
        self.fpn = FeaturePyramidNetwork(backbone.feature_info.channels(), out_channels, extra_block, norm_layer)
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        maps = self.body(x)  # [(B, C_i, H_i, W_i)], finest first
        return self.fpn(OrderedDict((str(i), m) for i, m in enumerate(maps)))
