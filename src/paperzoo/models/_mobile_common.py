"""Helpers shared by the MobileNet V1/V2/V3 and EfficientNet files (private: not a model family).

* BatchNorm settings: the reference implementations disagree on BatchNorm epsilon and momentum, which changes
  eval outputs (eps) and training statistics (momentum) but no parameter. The configs expose both; this
  module sets them on every ``nn.BatchNorm2d``. A state dict does not record eps, so each converter gives the
  model its source's eps (``adopt_bn_eps``): loaded weights then reproduce the source model's outputs.
* Key renaming: converters describe the source layout as a map *our module path -> source module path*; the
  tensor names (``weight``, ``running_mean``, ...) are the same in every layout, so one function does the rest.
  timm names the blocks of all four families alike (``timm_block_map``) and groups them into stages by output
  width (``timm_stage_index``); torchvision's MobileNetV3 and EfficientNet blocks are alike too
  (``torchvision_mbconv_map``).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch.nn as nn
from torch import Tensor

StateDict = dict[str, Tensor]


def set_batchnorm(model: nn.Module, eps: float, momentum: float) -> None:
    """Set ``eps`` and ``momentum`` (PyTorch convention: new = (1 - m)·old + m·batch) on every BatchNorm."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps, m.momentum = eps, momentum


def adopt_bn_eps(model: nn.Module, eps: float) -> None:
    """Give ``model`` (and its config) the BatchNorm epsilon of the model whose weights it is loading.

    eps is not in a state dict, yet it changes every eval output: timm's MobileNetV3 (1e-5) loaded with
    torchvision's 1e-3 gives visibly different logits. Converters call this so that the loaded model computes
    what its source computes.
    """
    model.cfg.bn_eps = eps
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps = eps


def rename_modules(sd: StateDict, model: nn.Module, module_map: dict[str, str],
                   conv1x1_as_linear: Iterable[str] = ()) -> StateDict:
    """Rename a source state dict to ``model``'s keys.

    Args:
        module_map: our module path (e.g. ``"blocks.3.dw.conv"``) -> the source's (``"blocks.1.1.conv_dw"``).
            It must cover every module of ``model`` that holds tensors.
        conv1x1_as_linear: our ``nn.Linear`` modules stored by the source as 1x1 convs, (out, in, 1, 1).

    Keys the map does not know are passed through unchanged, so strict loading reports them as unexpected
    (under the source's name) and our keys that received nothing as missing.
    """
    own = model.state_dict()
    source_to_ours: dict[str, str] = {}
    for key in own:
        module, _, leaf = key.rpartition(".")
        source_to_ours[f"{module_map[module]}.{leaf}"] = key
    squeeze = {f"{m}.weight" for m in conv1x1_as_linear}
    out: StateDict = {}
    for key, value in sd.items():
        ours = source_to_ours.get(key, key)
        if ours in squeeze and value.dim() == 4 and tuple(value.shape[2:]) == (1, 1):
            value = value.flatten(1)  # (out, in, 1, 1) -> (out, in)
        out[ours] = value
    return out


def timm_stage_index(out_channels: list[int]) -> list[tuple[int, int]]:
    """(stage, index in stage) of each block in timm's ``blocks.{stage}.{index}`` layout.

    timm groups consecutive blocks of the same output width into one stage (one row of its architecture
    definition); this holds for MobileNet V1/V2/V3 and EfficientNet.
    """
    pos, stage, idx = [], -1, 0
    for i, c in enumerate(out_channels):
        if i == 0 or c != out_channels[i - 1]:
            stage, idx = stage + 1, 0
        pos.append((stage, idx))
        idx += 1
    return pos


def timm_block_map(ours: str, src: str, block: nn.Module) -> dict[str, str]:
    """Module map of one InvertedResidual to timm's DepthwiseSeparableConv (no expansion) or InvertedResidual.

    Shared by MobileNet V2/V3 and EfficientNet, whose timm blocks use the same names.
    """
    se = {f"{ours}.se.fc1": f"{src}.se.conv_reduce", f"{ours}.se.fc2": f"{src}.se.conv_expand"}
    if isinstance(block.expand, nn.Identity):  # no expansion layer
        return {f"{ours}.dw.conv": f"{src}.conv_dw", f"{ours}.dw.bn": f"{src}.bn1",
                f"{ours}.project.conv": f"{src}.conv_pw", f"{ours}.project.bn": f"{src}.bn2", **se}
    return {f"{ours}.expand.conv": f"{src}.conv_pw", f"{ours}.expand.bn": f"{src}.bn1",
            f"{ours}.dw.conv": f"{src}.conv_dw", f"{ours}.dw.bn": f"{src}.bn2",
            f"{ours}.project.conv": f"{src}.conv_pwl", f"{ours}.project.bn": f"{src}.bn3", **se}


def torchvision_mbconv_map(ours: str, src: str, block: nn.Module) -> dict[str, str]:
    """Module map of one InvertedResidual to torchvision's MobileNetV3 / EfficientNet block ``src``.

    torchvision keeps the block's layers in one Sequential, ``{src}.{n}``, in the order [expand] (only when
    it widens), dw, [SE], project; each conv layer is a Sequential(conv, bn, act), so ``n`` counts only the
    layers present: a block without expansion starts with the depthwise conv at index 0.
    """
    mapping, n = {}, 0
    for name in ("expand", "dw", "se", "project"):
        layer = getattr(block, name)
        if isinstance(layer, nn.Identity):
            continue  # absent from torchvision's Sequential too
        if name == "se":
            mapping.update({f"{ours}.se.fc1": f"{src}.{n}.fc1", f"{ours}.se.fc2": f"{src}.{n}.fc2"})
        else:
            mapping.update({f"{ours}.{name}.conv": f"{src}.{n}.0", f"{ours}.{name}.bn": f"{src}.{n}.1"})
        n += 1
    return mapping


def init_mobile_weights(model: nn.Module, fc_init: str = "normal") -> None:
    """The reference init of the mobile families (torchvision's MobileNetV2/V3 and EfficientNet, after the TF
    originals): He-normal fan-out convs with zero bias, BatchNorm to identity, and the classifier either
    N(0, 0.01) (``fc_init="normal"``, MobileNetV2/V3) or uniform(±1/sqrt(out_features)) (``"uniform"``,
    EfficientNet)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            if fc_init == "normal":
                nn.init.normal_(m.weight, 0.0, 0.01)
            else:
                bound = 1.0 / m.out_features**0.5
                nn.init.uniform_(m.weight, -bound, bound)
            nn.init.zeros_(m.bias)


def timm_mbconv_mapping(model: nn.Module) -> dict[str, str]:
    """Our module names -> timm's for MobileNetV2 / EfficientNet: conv_stem/bn1, blocks.{i}.{j} (one stage per
    paper table row), conv_head/bn2, classifier."""
    mapping = {"stem.conv": "conv_stem", "stem.bn": "bn1", "head.conv": "conv_head", "head.bn": "bn2",
               "classifier": "classifier"}
    for i, stage in enumerate(model.stages):
        for j, block in enumerate(stage):
            mapping.update(timm_block_map(f"stages.{i}.{j}", f"blocks.{i}.{j}", block))
    return mapping
