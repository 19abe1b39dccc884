"""Test-side tools for holding each weight converter to a functional re-statement of its source's forward.

The ``test_weights_*`` modules restate every source model (torchvision / timm) as a short function of the
source's *own* state dict: ``F.conv2d`` / ``F.batch_norm`` / ``F.layer_norm`` with the source's padding,
activations and norm eps. A converted model must give that function's outputs. These helpers make the
comparison sensitive to what a state dict does not record, the norm eps above all:

* ``bn``: eval-mode BatchNorm with the source's eps. Inside ``calibrating()`` it first sets the running
  statistics to the statistics of its input (momentum 1), so one pass of a reference calibrates a network.
* ``make_eps_visible``: shrinks every conv that feeds a BatchNorm, so that BatchNorm inputs have a variance
  near 1e-4, then calibrates through the reference. Outputs stay O(1), but an eps of 1e-3 instead of 1e-5
  changes them several-fold (with running variances near 1, it would change them by about 1e-3).
* ``assert_matches_source``: tight comparison, plus the proof that it would catch an eps mix-up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

StateDict = dict[str, torch.Tensor]
_calibrating = False
RTOL, ATOL_REL = 1e-4, 1e-5  # float32 through ~50 layers agrees to ~1e-6 relative


def bn(sd: StateDict, prefix: str, x: torch.Tensor, eps: float) -> torch.Tensor:
    """BatchNorm2d in eval mode from ``{prefix}.weight/bias/running_mean/running_var``, with eps ``eps``."""
    mean, var = sd[f"{prefix}.running_mean"], sd[f"{prefix}.running_var"]
    if _calibrating:  # training-mode call with momentum 1: running stats := the batch's (in place)
        F.batch_norm(x, mean, var, None, None, True, 1.0, eps)
    return F.batch_norm(x, mean, var, sd[f"{prefix}.weight"], sd[f"{prefix}.bias"], False, 0.0, eps)


@contextmanager
def calibrating() -> Iterator[None]:
    global _calibrating
    _calibrating = True
    try:
        yield
    finally:
        _calibrating = False


def make_eps_visible(sd: StateDict, reference: Callable[[StateDict, torch.Tensor], object], x: torch.Tensor,
                     conv_scale: float = 0.01) -> StateDict:
    """Scale the bias-free convs (those feeding a BatchNorm) by ``conv_scale``, then set every running
    statistic from one reference pass on ``x``. Modifies and returns ``sd``."""
    for key, value in sd.items():
        if key.endswith(".weight") and value.dim() == 4 and key[: -len("weight")] + "bias" not in sd:
            value.mul_(conv_scale)
    with torch.no_grad(), calibrating():
        reference(sd, x)
    return sd


def save(sd: StateDict, path) -> None:
    """``.safetensors`` or a torch file, by the path's suffix."""
    if str(path).endswith(".safetensors"):
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        torch.save(sd, path)


def assert_close(ours: torch.Tensor, ref: torch.Tensor) -> None:
    torch.testing.assert_close(ours, ref, rtol=RTOL, atol=ATOL_REL * float(ref.abs().max()))


def assert_matches_source(model: nn.Module, x: torch.Tensor, ref: torch.Tensor, wrong_eps: float) -> None:
    """``model(x)`` equals the source's output ``ref``; and with every norm layer at ``wrong_eps`` (the other
    library's value) it would differ by far more than the tolerance, so the check above sees the eps."""
    model.eval()
    with torch.no_grad():
        assert_close(model(x), ref)
        norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d | nn.LayerNorm)]
        kept = [m.eps for m in norms]
        assert norms and all(e != wrong_eps for e in kept)
        for m in norms:
            m.eps = wrong_eps
        try:
            moved = (model(x) - ref).abs().max().item()
        finally:
            for m, e in zip(norms, kept):
                m.eps = e
    assert moved > 1e3 * ATOL_REL * ref.abs().max().item(), f"eps {wrong_eps:g} moves the output only {moved:.2e}"
