"""The one interface every image classifier shares: ``forward_features`` / ``forward_head`` plus input checks.

Subclasses set ``self.in_chans``, ``self.num_classes``, ``self.num_features`` and ``self.min_input_size``
and implement the two halves; ``forward`` checks the input first so that a wrong channel count or an
image too small for the network raises a clear ``ValueError`` instead of a shape error from deep inside.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch.nn as nn
from torch import Tensor

if TYPE_CHECKING:
    from .features import FeatureLevel


class ImageClassifier(nn.Module):
    """Base class of the vision models: ``forward(x) = forward_head(forward_features(x))``."""

    in_chans: int = 3
    num_classes: int = 1000
    num_features: int = 0
    #: smallest (H, W) the network accepts; checked in ``forward``.
    min_input_size: tuple[int, int] = (1, 1)
    #: set by ``create_model``; used in error messages and by ``load_weights``.
    model_name: str = ""
    #: module names of the classifier head and of the first convolution (timm's ``pretrained_cfg`` names the
    #: same two, as ``classifier`` and ``first_conv``): fine-tuning (:func:`paperzoo.weights.load_pretrained`)
    #: re-initialises the head when the number of classes differs and adapts the first convolution's filters
    #: when ``in_chans`` does. Each family sets them.
    head_names: tuple[str, ...] = ()
    first_conv_name: str = ""

    def head_keys(self) -> list[str]:
        """The state-dict keys of the classifier head (empty when ``num_classes=0`` made it an identity)."""
        return [k for k in self.state_dict() if any(k.startswith(m + ".") for m in self.head_names)]

    def forward_features(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def feature_levels(self) -> list[FeatureLevel]:
        """The multi-scale maps ``features_only`` can return (:mod:`paperzoo.models.features`); each CNN and
        Swin family lists them. A model with a single scale raises ``ValueError``."""
        name = self.model_name or type(self).__name__
        raise ValueError(f"{name} has no multi-scale feature maps: features_only is for the CNN and Swin "
                         "families; use forward_features for its one map")

    def check_input(self, x: Tensor) -> None:
        """Raise ``ValueError`` naming the model if ``x`` is not ``(B, in_chans, H >= min_h, W >= min_w)``."""
        name = self.model_name or type(self).__name__
        if x.dim() != 4:
            raise ValueError(f"{name}: expected a 4-D input (B, C, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_chans:
            raise ValueError(
                f"{name}: expected {self.in_chans} input channel(s), got {x.shape[1]} "
                f"(input shape {tuple(x.shape)}); build the model with in_chans={x.shape[1]}"
            )
        min_h, min_w = self.min_input_size
        if x.shape[2] < min_h or x.shape[3] < min_w:
            raise ValueError(
                f"{name}: input {x.shape[2]}x{x.shape[3]} is too small; the minimum size is {min_h}x{min_w}"
                + ("" if getattr(self, "small_input", True) else " (small_input=True lowers it)")
            )

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return self.forward_head(self.forward_features(x))
