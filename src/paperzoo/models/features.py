"""Multi-scale feature maps from any CNN or Swin classifier (``create_model(name, features_only=True)``).

A detector or a segmentation head needs the backbone's maps at several strides, not its logits (FPN, Lin et al.
2017, arXiv:1612.03144, Sec. 3 takes "the output of the last layer of each stage"). Each family lists its
levels in ``feature_levels()``: which modules lead from one level's map to the next, and the map's channels
and reduction (input size / map size). :class:`FeatureExtractor` keeps only the modules that the requested
levels run — under their own names, so a classifier's state dict (minus head and unused stages) fits it —
runs them in order and returns the requested maps, as timm's ``features_only`` does:

    >>> model = paperzoo.create_model("resnet50", features_only=True, out_indices=(1, 2, 3, 4))
    >>> [f.shape for f in model(torch.randn(1, 3, 224, 224))]   # (1, 256, 56, 56) ... (1, 2048, 7, 7)
    >>> model.feature_info.channels(), model.feature_info.reduction()   # [256, 512, 1024, 2048], [4, 8, 16, 32]

Level 0 of the CNNs is the stride-2 stem map, levels 1-4 end the stride-4 ... 32 stages (five levels; the CIFAR
ResNets have four); Swin's four levels are its stages at strides 4 ... 32, returned as (B, C, H, W). With
``small_input=True`` the levels stay the same modules, at smaller reductions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch.nn as nn
from torch import Tensor

from ._base import ImageClassifier

__all__ = ["FeatureLevel", "FeatureInfo", "FeatureExtractor", "stride_of", "chain_levels"]

Step = str | Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class FeatureLevel:
    """One feature map of a backbone.

    Attributes:
        steps: what leads from the previous level's map (or the image) to this one, run in order: submodule
            names of the classifier (``"layer2"``, ``"stages.3"``) or stateless functions (``F.relu``).
        channels: C of the map.
        reduction: total stride, input size / map size (sides that are not multiples round as the layers do).
        channels_last: the map is computed as (B, H, W, C) (Swin) and returned permuted to (B, C, H, W).
    """

    steps: tuple[Step, ...]
    channels: int
    reduction: int
    channels_last: bool = False

    @property
    def module(self) -> str:
        """Name of the last module of the level (timm's ``feature_info`` ``module``)."""
        return next((s for s in reversed(self.steps) if isinstance(s, str)), "")


def stride_of(module: nn.Module) -> int:
    """A block's stride: the largest stride among its convolutions and pools.

    Every block of our families strides at most once along a path (parallel branches stride together), so the
    largest stride is the block's. Used only to declare levels; the registry-wide test checks every map's size.
    """
    strides = [m.stride for m in module.modules() if isinstance(m, nn.Conv2d | nn.MaxPool2d | nn.AvgPool2d)]
    return max((s if isinstance(s, int) else s[0] for s in strides), default=1)


def chain_levels(model: nn.Module, chain: Sequence[tuple[Step, int, int]]) -> list[FeatureLevel]:
    """The levels of a backbone written as a chain of ``(step, stride, channels after it)``.

    ``stride`` is the step's stride in the reference network (its paper table's, whatever ``small_input``
    changed): each step with stride > 1 opens a new level, so a level is one resolution and ends with the last
    layer at it (FPN's "last layer of each stage"). A level's channels are its last step's; its reduction
    multiplies the strides the modules really have (:func:`stride_of`; a function step has stride 1).
    """
    groups: list[tuple[list[Step], int]] = []
    for step, stride, channels in chain:
        if stride > 1 or not groups:
            groups.append(([step], channels))
        else:
            groups[-1] = (groups[-1][0] + [step], channels)
    levels, reduction = [], 1
    for steps, channels in groups:
        for step in steps:
            reduction *= stride_of(model.get_submodule(step)) if isinstance(step, str) else 1
        levels.append(FeatureLevel(tuple(steps), channels, reduction))
    return levels


class FeatureInfo:
    """Channels, reductions and module names of the returned levels, in timm's ``feature_info`` interface."""

    def __init__(self, levels: Sequence[FeatureLevel], out_indices: Sequence[int]) -> None:
        self.out_indices = tuple(out_indices)
        self.levels = [levels[i] for i in self.out_indices]

    def channels(self) -> list[int]:
        return [lvl.channels for lvl in self.levels]

    def reduction(self) -> list[int]:
        return [lvl.reduction for lvl in self.levels]

    def module_name(self) -> list[str]:
        return [lvl.module for lvl in self.levels]

    def __len__(self) -> int:
        return len(self.levels)

    def __getitem__(self, i: int) -> dict:
        lvl = self.levels[i]
        return {"num_chs": lvl.channels, "reduction": lvl.reduction, "module": lvl.module,
                "index": self.out_indices[i]}

    def __iter__(self) -> Iterator[dict]:
        return (self[i] for i in range(len(self)))

    def __repr__(self) -> str:
        return f"FeatureInfo(channels={self.channels()}, reduction={self.reduction()})"


def _resolve_out_indices(out_indices: Sequence[int] | None, n: int, name: str) -> tuple[int, ...]:
    if out_indices is None:
        return tuple(range(n))
    idx = tuple(int(i) + n if int(i) < 0 else int(i) for i in out_indices)
    if not idx or any(not 0 <= i < n for i in idx) or len(set(idx)) != len(idx):
        raise ValueError(f"{name}: out_indices {tuple(out_indices)} must be distinct levels in 0..{n - 1} "
                         f"(or -{n}..-1); it has {n} levels")
    return tuple(sorted(idx))


def _needed(path: str, used: set[str]) -> bool:
    """``path`` is a used module, holds one, or lies inside one."""
    return any(u == path or u.startswith(path + ".") or path.startswith(u + ".") for u in used)


class FeatureExtractor(nn.Module):
    """The levels ``out_indices`` of ``model``'s :meth:`feature_levels`, as a list of (B, C_i, H_i, W_i) maps.

    Takes over ``model``'s modules that these levels run, under the same names (the classifier head and the
    stages after the last requested level are left out), and its input checks. ``feature_info`` describes the
    returned maps (``.channels()``, ``.reduction()``, ``.module_name()``).
    """

    def __init__(self, model: ImageClassifier, out_indices: Sequence[int] | None = None) -> None:
        super().__init__()
        name = getattr(model, "model_name", "") or type(model).__name__
        if not hasattr(model, "feature_levels"):
            raise ValueError(f"{name} is not an image classifier: features_only is for the CNN and Swin families")
        levels = model.feature_levels()
        self.out_indices = _resolve_out_indices(out_indices, len(levels), name)
        self.levels = levels[: self.out_indices[-1] + 1]
        self.feature_info = FeatureInfo(levels, self.out_indices)
        used = {s for lvl in self.levels for s in lvl.steps if isinstance(s, str)}
        for child_name, child in model.named_children():
            if _needed(child_name, used):
                self.add_module(child_name, child)
        for path, module in list(self.named_modules()):  # inside kept containers: drop what no level runs
            for child_name in list(module._modules):
                if path and _needed(path, used) and not _needed(f"{path}.{child_name}", used):
                    del module._modules[child_name]  # keeps the other children's names (no renumbering)
        was_training = model.training
        model.eval()  # Inception's training-mode minimum is for its aux head, which features never run
        self.min_input_size = tuple(model.min_input_size)
        model.train(was_training)
        self.in_chans = model.in_chans
        self.small_input = getattr(model, "small_input", True)
        self.model_name, self.model_family = name, getattr(model, "model_family", "")

    def forward(self, x: Tensor) -> list[Tensor]:
        ImageClassifier.check_input(self, x)  # the same checks and messages as the classifier (duck-typed)
        maps = []
        for i, level in enumerate(self.levels):
            for step in level.steps:
                x = self.get_submodule(step)(x) if isinstance(step, str) else step(x)
            if i in self.out_indices:
                maps.append(x.permute(0, 3, 1, 2) if level.channels_last else x)  # (B, H, W, C) -> (B, C, H, W)
        return maps
