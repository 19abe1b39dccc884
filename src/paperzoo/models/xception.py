"""Xception.

Chollet, "Xception: Deep Learning with Depthwise Separable Convolutions", arXiv:1610.02357 (CVPR 2017).

Key idea: take the Inception hypothesis (cross-channel and spatial correlations can be mapped separately,
Sec. 1.1) to its extreme. Every Inception module becomes a *depthwise separable convolution*: a 3x3
depthwise conv (one filter per channel) followed by a 1x1 pointwise conv. Fig. 5 stacks 36 convolutional
layers (2 plain, 34 separable) in 14 modules, all with linear residual connections except the first and
last: an *entry flow* that downsamples to 728 channels at 1/16 resolution, a *middle flow* of eight
identical residual modules, and an *exit flow* to 2048 channels. Sec. 4.7 / Fig. 10: *no* non-linearity
between the depthwise and the pointwise step works best, so :class:`SeparableConv2d` has none (and no BN
in between either).

Deviations (all as timm's ``legacy_xception``, whose weights load here with ``source="timm"``):
* Every convolution is followed by batch norm (Sec. 3: "all Convolution and SeparableConvolution layers
  are followed by batch normalization"; Fig. 5 leaves it out); the two stem convolutions are unpadded
  ("valid"), the 3x3/2 max-pools are padded, so 299x299 gives 10x10 at the exit flow.
* The classifier is global average pooling -> [dropout] -> linear, without the optional fully-connected
  layers of Fig. 5 (the paper's ImageNet model has none). ``drop_rate`` defaults to 0; the paper used 0.5
  on ImageNet (Sec. 4.3).
* Init: Kaiming-normal (fan-out) convs, BN weight 1 / bias 0, as timm; the paper does not say.
* ``small_input=True``: both stem convs get stride 1 and padding 1 and the first entry-flow module keeps
  its resolution (no max-pool, 1x1 shortcut of stride 1), so a 32x32 image leaves the exit flow at 4x4
  (total stride 8 instead of 32). ``min_input_size`` is the total stride (32, or 8 with ``small_input``),
  the input whose last feature map is 1x1.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch.nn as nn
from torch import Tensor

from ..layers import ConvNormAct
from ..registry import Paper, register_model
from ..weights import register_converter
from ._base import ImageClassifier
from .features import FeatureLevel, chain_levels

XCEPTION_PAPER = Paper("Xception: Deep Learning with Depthwise Separable Convolutions", "1610.02357", 2017)


class SeparableConv2d(nn.Module):
    """3x3 depthwise conv -> 1x1 pointwise conv, with nothing in between (Sec. 4.7, Fig. 10)."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(in_chs, in_chs, kernel_size, 1, kernel_size // 2, groups=in_chs, bias=False)
        self.pointwise = nn.Conv2d(in_chs, out_chs, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.depthwise(x))


class SepConvBN(nn.Module):
    """``[ReLU] -> SeparableConv -> BN``: inside a module the ReLU comes *before* each separable conv."""

    def __init__(self, in_chs: int, out_chs: int, pre_act: bool, inplace: bool = True) -> None:
        super().__init__()
        # the module's first ReLU must not overwrite its input, which the shortcut still needs
        self.act = nn.ReLU(inplace=inplace) if pre_act else nn.Identity()
        self.conv = SeparableConv2d(in_chs, out_chs)
        self.bn = nn.BatchNorm2d(out_chs)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(self.act(x)))


class XceptionModule(nn.Module):
    """One residual module of Fig. 5: ``reps`` x (ReLU, SeparableConv, BN) [+ MaxPool 3x3/2] + shortcut.

    The shortcut is the identity, or a 1x1 conv (+BN) of the module's stride where the shape changes.
    ``grow_first``: the first separable conv changes the width (entry flow); otherwise the last does
    (the exit-flow module 728 -> 728 -> 1024).
    """

    def __init__(self, in_chs: int, out_chs: int, reps: int, stride: int = 1, start_with_relu: bool = True,
                 grow_first: bool = True) -> None:
        super().__init__()
        if grow_first:
            widths = [(in_chs, out_chs)] + [(out_chs, out_chs)] * (reps - 1)
        else:
            widths = [(in_chs, in_chs)] * (reps - 1) + [(in_chs, out_chs)]
        self.layers = nn.Sequential(*[
            SepConvBN(i, o, pre_act=start_with_relu or k > 0, inplace=k > 0) for k, (i, o) in enumerate(widths)
        ])
        self.pool = nn.MaxPool2d(3, stride, 1) if stride != 1 else nn.Identity()
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_chs != out_chs:
            self.shortcut = ConvNormAct(in_chs, out_chs, 1, stride, act=None)

    def forward(self, x: Tensor) -> Tensor:
        out = self.pool(self.layers(x))
        return out + (x if self.shortcut is None else self.shortcut(x))  # linear residual connection


@dataclass
class XceptionConfig:
    """Xception hyper-parameters (Fig. 5): widths of the entry flow, middle flow and exit flow."""

    stem_chs: tuple[int, int] = (32, 64)  # the two plain 3x3 convs opening the entry flow
    entry_chs: tuple[int, int, int] = (128, 256, 728)  # three downsampling modules
    middle_repeats: int = 8  # "repeated 8 times"
    exit_chs: tuple[int, int, int] = (1024, 1536, 2048)  # module to 1024, then two separable convs
    num_classes: int = 1000
    in_chans: int = 3
    small_input: bool = False
    drop_rate: float = 0.0  # dropout before the classifier (the paper used 0.5 on ImageNet)


class Xception(ImageClassifier):
    """Xception (Fig. 5 of arXiv:1610.02357)."""
    head_names, first_conv_name = ("fc",), "conv1.conv"  # what fine-tuning replaces / adapts

    def __init__(self, cfg: XceptionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.in_chans, self.num_classes, self.small_input = cfg.in_chans, cfg.num_classes, cfg.small_input
        small = cfg.small_input
        c1, c2 = cfg.stem_chs
        # Entry flow, Fig. 5: Conv 32 3x3 stride 2, ReLU; Conv 64 3x3, ReLU (unpadded, as timm)
        self.conv1 = ConvNormAct(cfg.in_chans, c1, 3, stride=1 if small else 2, padding=1 if small else 0)
        self.conv2 = ConvNormAct(c1, c2, 3, padding=1 if small else 0)
        in_chs, modules = c2, []
        for i, out_chs in enumerate(cfg.entry_chs):
            stride = 1 if (small and i == 0) else 2
            modules.append(XceptionModule(in_chs, out_chs, 2, stride, start_with_relu=i > 0))
            in_chs = out_chs
        self.entry_flow = nn.Sequential(*modules)
        # Middle flow: [ReLU, SeparableConv 728] x 3 + identity, repeated 8 times
        self.middle_flow = nn.Sequential(*[XceptionModule(in_chs, in_chs, 3) for _ in range(cfg.middle_repeats)])
        # Exit flow: [ReLU, SepConv 728, ReLU, SepConv 1024, MaxPool] + 1x1/2 conv; SepConv 1536, ReLU;
        # SepConv 2048, ReLU (post-activation here: these two are outside any residual module)
        e1, e2, e3 = cfg.exit_chs
        self.exit_flow = nn.Sequential(
            XceptionModule(in_chs, e1, 2, 2, grow_first=False),
            _sep_bn_relu(e1, e2),
            _sep_bn_relu(e2, e3),
        )
        self.num_features = e3
        self.min_input_size = (8, 8) if small else (32, 32)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(cfg.drop_rate)
        self.fc = nn.Linear(e3, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        # as timm's legacy_xception (Kaiming-normal fan-out); the Linear keeps PyTorch's default init
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.conv2(self.conv1(x))
        x = self.entry_flow(x)  # (B, 728, H/16, W/16)
        x = self.middle_flow(x)
        return self.exit_flow(x)  # (B, 2048, H/32, W/32)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.global_pool(x).flatten(1)  # (B, C)
        return x if pre_logits else self.fc(self.drop(x))

    def feature_levels(self) -> list[FeatureLevel]:
        """The two stem convs, each entry-flow module, the middle flow with the 728-wide map before it, the exit
        flow (features_only)."""
        (c1, c2), (e1, e2, e3), out = self.cfg.stem_chs, self.cfg.entry_chs, self.num_features
        return chain_levels(self, [("conv1", 2, c1), ("conv2", 1, c2), ("entry_flow.0", 2, e1),
                                   ("entry_flow.1", 2, e2), ("entry_flow.2", 2, e3), ("middle_flow", 1, e3),
                                   ("exit_flow", 2, out)])


def _sep_bn_relu(in_chs: int, out_chs: int) -> nn.Sequential:
    return nn.Sequential(SeparableConv2d(in_chs, out_chs), nn.BatchNorm2d(out_chs), nn.ReLU(inplace=True))


# ------------------------------------------------------------------------------------ weight conversion
# timm legacy_xception: conv1/bn1, conv2/bn2, block1..block12 (each `rep` is a flat Sequential of
# ReLU / SeparableConv2d(conv1 = depthwise, pointwise) / BatchNorm2d, `skip`/`skipbn` the shortcut),
# conv3/bn3, conv4/bn4, fc. Table in docs/models/cnn/xception.md.
_BN_FIELDS = r"(weight|bias|running_mean|running_var|num_batches_tracked)"


def _timm_block_path(n: int, middle_repeats: int) -> str:
    if n <= 3:
        return f"entry_flow.{n - 1}"
    if n <= 3 + middle_repeats:
        return f"middle_flow.{n - 4}"
    return "exit_flow.0"


def _timm_key_to_ours(key: str, middle_repeats: int) -> str:
    if m := re.match(r"^(conv[12])\.weight$", key):
        return f"{m[1]}.conv.weight"
    if m := re.match(rf"^bn([12])\.{_BN_FIELDS}$", key):
        return f"conv{m[1]}.bn.{m[2]}"
    if m := re.match(r"^conv([34])\.(conv1|pointwise)\.weight$", key):  # exit flow separable convs
        part = "depthwise" if m[2] == "conv1" else "pointwise"
        return f"exit_flow.{int(m[1]) - 2}.0.{part}.weight"
    if m := re.match(rf"^bn([34])\.{_BN_FIELDS}$", key):
        return f"exit_flow.{int(m[1]) - 2}.1.{m[2]}"
    if m := re.match(r"^block(\d+)\.(.+)$", key):
        n, rest = int(m[1]), m[2]
        path = _timm_block_path(n, middle_repeats)
        if r := re.match(r"^skip\.weight$", rest):
            return f"{path}.shortcut.conv.weight"
        if r := re.match(rf"^skipbn\.{_BN_FIELDS}$", rest):
            return f"{path}.shortcut.bn.{r[1]}"
        # rep indices: (ReLU, SepConv, BN) per layer; block1 has no leading ReLU, so its indices start 1 lower
        offset = 0 if n == 1 else 1
        if r := re.match(r"^rep\.(\d+)\.(conv1|pointwise)\.weight$", rest):
            part = "depthwise" if r[2] == "conv1" else "pointwise"
            return f"{path}.layers.{(int(r[1]) - offset) // 3}.conv.{part}.weight"
        if r := re.match(rf"^rep\.(\d+)\.{_BN_FIELDS}$", rest):
            return f"{path}.layers.{(int(r[1]) - offset - 1) // 3}.bn.{r[2]}"
    return key  # fc.*, and anything unknown (reported by the strict loader)


@register_converter("xception", "timm")
def _from_timm(sd: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """timm ``legacy_xception`` (formerly ``xception``) -> ours."""
    repeats = model.cfg.middle_repeats if hasattr(model, "cfg") else 8
    return {_timm_key_to_ours(k, repeats): v for k, v in sd.items()}


# ----------------------------------------------------------------------------------- registered models
@register_model(family="xception", paper=XCEPTION_PAPER, input_size=299, ref_params=22_855_952, ref_source="timm")
def xception(**kw) -> Xception:
    """Xception at 299x299 (timm ``legacy_xception``)."""
    return Xception(XceptionConfig(**kw))
