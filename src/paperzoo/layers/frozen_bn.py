"""Frozen BatchNorm: BatchNorm2d's eval-mode affine map with its statistics and affine terms as constants.

Detectors fine-tune an ImageNet backbone on batches of one or two large images, far too few for batch
statistics; Detectron and torchvision (``ops.misc.FrozenBatchNorm2d``) therefore freeze every BatchNorm of the
backbone: ``y = (x - running_mean) / sqrt(running_var + eps) * weight + bias`` with all four tensors buffers,
so they are saved and loaded but neither trained nor updated, in training mode as in eval.

State-dict keys are BatchNorm2d's (``weight``, ``bias``, ``running_mean``, ``running_var``), without the
``num_batches_tracked`` counter, which is ignored when a BatchNorm2d's state dict is loaded.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["FrozenBatchNorm2d", "freeze_batch_norm", "set_frozen_bn_eps"]


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine terms (all buffers).

    Args:
        num_features: C of the ``(B, C, H, W)`` input.
        eps: added to the variance; 1e-5 as ``nn.BatchNorm2d`` and torchvision's FrozenBatchNorm2d.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features, self.eps = num_features, eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: Tensor) -> Tensor:
        # Folded into one scale and shift per channel: the same affine map as BatchNorm2d in eval mode.
        scale = self.weight * (self.running_var + self.eps).rsqrt()  # (C,)
        shift = self.bias - self.running_mean * scale  # (C,)
        return x * scale[None, :, None, None] + shift[None, :, None, None]  # (B, C, H, W)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:
        state_dict.pop(prefix + "num_batches_tracked", None)  # a BatchNorm2d's counter: meaningless here
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def freeze_batch_norm(module: nn.Module) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` inside ``module`` by a :class:`FrozenBatchNorm2d` holding its current
    statistics, affine terms and eps; in place (a bare BatchNorm2d is returned converted). Returns ``module``."""
    if isinstance(module, nn.BatchNorm2d):
        return _frozen_copy(module)
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, _frozen_copy(child))
        else:
            freeze_batch_norm(child)
    return module


def _frozen_copy(bn: nn.BatchNorm2d) -> FrozenBatchNorm2d:
    """A FrozenBatchNorm2d computing what ``bn`` computes in eval mode (absent terms keep their identity values)."""
    frozen = FrozenBatchNorm2d(bn.num_features, bn.eps)
    source = {"weight": bn.weight, "bias": bn.bias, "running_mean": bn.running_mean, "running_var": bn.running_var}
    for name, value in source.items():
        if value is not None:  # affine=False has no weight / bias; track_running_stats=False no statistics
            setattr(frozen, name, value.detach().clone())
    return frozen


def set_frozen_bn_eps(module: nn.Module, eps: float) -> None:
    """Set the eps of every FrozenBatchNorm2d in ``module`` (no tensor records it; it changes every output).

    torchvision's v1 COCO detection checkpoints were trained when its FrozenBatchNorm2d had no eps (0): its
    builders call ``overwrite_eps(model, 0.0)`` after loading them, and so must anyone reproducing their boxes.
    """
    for m in module.modules():
        if isinstance(m, FrozenBatchNorm2d):
            m.eps = eps
