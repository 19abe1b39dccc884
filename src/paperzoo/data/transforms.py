"""Batched data augmentation on tensors: every transform maps a whole batch at once.

Each transform is a callable ``t(x, y, generator) -> (x, y)`` on a float batch ``x`` (B, C, H, W) and labels
``y`` ((B,) int64 or (B, K) soft). All randomness is drawn from the ``torch.Generator`` passed in (on the CPU,
then moved to ``x.device``), so a batch's augmentation depends only on that generator's seed:
:class:`paperzoo.data.loader.TensorLoader` seeds it from (seed, epoch, batch index), which makes augmented
training reproducible and resumable mid-epoch. There is no Python loop over images or pixels: per-sample
crops are one ``gather`` with index arithmetic, per-sample flips and erasing boxes are masks.

Papers:

* Random crop with zero padding + horizontal flip: the CIFAR recipe of He et al., arXiv:1512.03385 Sec. 4.2.
* Random erasing: Zhong et al., "Random Erasing Data Augmentation", arXiv:1708.04896 (Alg. 1).
* Mixup: Zhang et al., "mixup: Beyond Empirical Risk Minimization", arXiv:1710.09412 (Eq. 1).
* CutMix: Yun et al., "CutMix: Regularization Strategy to Train Strong Classifiers with Localizable
  Features", arXiv:1905.04899 (Eq. 1-2, Appendix A).

Deviations:

* Random erasing runs after normalisation and fills with N(0, 1) noise per pixel (timm's "pixel" mode) instead
  of the paper's uniform [0, 255] values; the aspect ratio is log-uniform in ``ratio`` (the paper draws it
  uniformly in (r1, 1/r1)), which treats tall and wide boxes alike. Up to ``attempts`` boxes are drawn per image
  at once and the first that fits is used (Alg. 1 loops until one fits; an image with none is left as is).
* Mixup/CutMix pair each image with the batch reversed (one λ per batch), as timm does, rather than a second
  shuffled loader.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "Compose",
    "MixupCutmix",
    "Normalize",
    "RandomCropPad",
    "RandomErasing",
    "RandomHorizontalFlip",
    "build_eval_transform",
    "build_train_transform",
    "one_hot_smooth",
]


def _rand(shape: tuple[int, ...], g: torch.Generator, device: torch.device) -> Tensor:
    return torch.rand(shape, generator=g).to(device, non_blocking=True)


def one_hot_smooth(y: Tensor, num_classes: int, smoothing: float = 0.0) -> Tensor:
    """Hard labels (B,) -> targets (B, K) of (1 - ε)·one_hot + ε/K (Inception-v3 Sec. 7); soft (B, K) pass through
    with the same mixing."""
    if y.ndim == 2:
        q = y.float()
    else:
        q = F.one_hot(y, num_classes).float()
    return q * (1.0 - smoothing) + smoothing / num_classes if smoothing > 0 else q


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Any]) -> None:
        self.transforms = list(transforms)

    def __call__(self, x: Tensor, y: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        for t in self.transforms:
            x, y = t(x, y, generator)
        return x, y

    def __repr__(self) -> str:
        return "Compose([" + ", ".join(map(repr, self.transforms)) + "])"


class Normalize:
    """(x - mean) / std per channel; accepts uint8 input (scaled to [0, 1] first)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        if len(self.mean) != len(self.std) or min(self.std) <= 0:
            raise ValueError(f"mean {self.mean} and std {self.std} must match in length, std > 0")
        self._cache: dict[tuple, tuple[Tensor, Tensor]] = {}

    def __call__(self, x: Tensor, y: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        scale_255 = x.dtype == torch.uint8
        if scale_255:
            x = x.float()
        if x.shape[1] != len(self.mean):
            raise ValueError(f"Normalize has {len(self.mean)} channels but the batch has {x.shape[1]}")
        key = (x.device, x.dtype, scale_255)
        if key not in self._cache:
            std = torch.tensor(self.std, dtype=torch.float64) * (255.0 if scale_255 else 1.0)
            scale = (1.0 / std).to(x.device, x.dtype).view(1, -1, 1, 1)  # (1, C, 1, 1)
            shift = (-torch.tensor(self.mean, dtype=torch.float64) / torch.tensor(self.std, dtype=torch.float64))
            self._cache[key] = (scale, shift.to(x.device, x.dtype).view(1, -1, 1, 1))
        scale, shift = self._cache[key]
        return torch.addcmul(shift, x, scale), y  # x * (1/std) - mean/std in one pass

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean}, std={self.std})"


class RandomCropPad:
    """Pad by ``padding`` pixels of ``fill`` on each side, then crop back to (H, W) at a random offset per image.

    The crop is one ``gather``: output pixel (i, j) of image b reads padded pixel (i + dy_b, j + dx_b).
    """

    def __init__(self, padding: int, fill: float = 0.0) -> None:
        if padding < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        self.padding, self.fill = int(padding), float(fill)

    def __call__(self, x: Tensor, y: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        if self.padding == 0:
            return x, y
        B, C, H, W = x.shape
        p = self.padding
        padded = F.pad(x, (p, p, p, p), value=self.fill)  # (B, C, H+2p, W+2p)
        Wp = W + 2 * p
        offsets = torch.randint(0, 2 * p + 1, (2, B), generator=generator).to(x.device)  # dy, dx per image
        rows = offsets[0, :, None] + torch.arange(H, device=x.device)  # (B, H)
        cols = offsets[1, :, None] + torch.arange(W, device=x.device)  # (B, W)
        flat = (rows[:, :, None] * Wp + cols[:, None, :]).view(B, 1, H * W)  # (B, 1, H*W) flat source index
        out = padded.view(B, C, -1).gather(2, flat.expand(B, C, H * W))  # (B, C, (H+2p)*(W+2p)) -> (B, C, H*W)
        return out.view(B, C, H, W), y  # (B, C, H*W) -> (B, C, H, W)

    def __repr__(self) -> str:
        return f"RandomCropPad(padding={self.padding})"


class RandomHorizontalFlip:
    """Mirror each image left-right with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = float(p)

    def __call__(self, x: Tensor, y: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        if self.p <= 0:
            return x, y
        flip = _rand((x.shape[0],), generator, x.device) < self.p
        return torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x), y

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class RandomErasing:
    """Random Erasing (Zhong et al., Alg. 1): with probability ``p`` replace one random rectangle per image.

    Args:
        p: probability of erasing an image.
        scale: range of the erased area as a fraction of the image (s_l, s_h).
        ratio: range of the box aspect ratio h/w (sampled log-uniformly).
        value: ``"random"`` (N(0, 1) per pixel, on normalised input) or a constant fill.
        attempts: boxes drawn per image; the first that fits inside the image is used.
    """

    def __init__(self, p: float = 0.5, scale: Sequence[float] = (0.02, 0.33), ratio: Sequence[float] = (0.3, 3.3),
                 value: str | float = "random", attempts: int = 10) -> None:
        if not 0 < scale[0] <= scale[1] <= 1 or not 0 < ratio[0] <= ratio[1] or attempts < 1:
            raise ValueError(f"bad RandomErasing scale {scale} / ratio {ratio} / attempts {attempts}")
        if not (value == "random" or isinstance(value, int | float)):
            raise ValueError(f"RandomErasing value must be 'random' or a number, got {value!r}")
        self.p, self.scale, self.ratio = float(p), tuple(scale), tuple(ratio)
        self.value, self.attempts = value, int(attempts)

    def __call__(self, x: Tensor, y: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        if self.p <= 0:
            return x, y
        B, C, H, W = x.shape
        dev = x.device
        u = torch.rand((4, B, self.attempts), generator=generator, dtype=torch.float64)
        area = H * W * (self.scale[0] + (self.scale[1] - self.scale[0]) * u[0])  # s_e · S
        lo, hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        r = torch.exp(lo + (hi - lo) * u[1])  # r_e, log-uniform
        h = torch.sqrt(area * r).round().long()  # H_e = sqrt(S_e · r_e)
        w = torch.sqrt(area / r).round().long()  # W_e = sqrt(S_e / r_e)
        fits = (h < H) & (w < W) & (h > 0) & (w > 0)
        first = fits.long().argmax(1, keepdim=True)  # first attempt that fits, (B, 1)
        h, w = h.gather(1, first).squeeze(1), w.gather(1, first).squeeze(1)
        erase = fits.any(1) & (torch.rand(B, generator=generator, dtype=torch.float64) < self.p)
        top = (u[2, :, 0] * (H - h + 1)).floor().long()  # uniform over positions where the box fits
        left = (u[3, :, 0] * (W - w + 1)).floor().long()
        ar_h, ar_w = torch.arange(H), torch.arange(W)
        in_rows = (ar_h >= top[:, None]) & (ar_h < (top + h)[:, None])  # (B, H)
        in_cols = (ar_w >= left[:, None]) & (ar_w < (left + w)[:, None])  # (B, W)
        rows = erase.nonzero().flatten()  # only the erased images need noise and a new buffer row
        mask = (in_rows[rows, :, None] & in_cols[rows, None, :]).to(dev)  # (k, H, W)
        if self.value == "random":
            fill = torch.randn((len(rows), C, H, W), generator=generator, dtype=x.dtype).to(dev)
        else:
            fill = torch.tensor(float(self.value), dtype=x.dtype, device=dev)
        rows = rows.to(dev)
        out = x.clone()
        out[rows] = torch.where(mask[:, None], fill, x[rows])  # (k, 1, H, W) mask broadcast over C
        return out, y

    def __repr__(self) -> str:
        return f"RandomErasing(p={self.p}, scale={self.scale}, ratio={self.ratio}, value={self.value!r})"


class MixupCutmix:
    """Mixup and CutMix on a batch, returning soft targets (B, K).

    With probability ``prob`` the batch is mixed with its reverse: CutMix with probability ``switch_prob`` when
    both alphas are > 0, else whichever is enabled. λ ~ Beta(α, α). Mixup: x̃ = λ x_i + (1 - λ) x_j, ỹ = λ y_i +
    (1 - λ) y_j (Zhang et al. Eq. 1). CutMix: paste a box of area (1 - λ)·H·W from x_j, centred uniformly and
    clipped at the border, then set λ to the exact kept fraction (Yun et al. Eq. 1-2). Targets are label
    smoothed first (so combine it with a plain soft-target CE, not a label-smoothing loss).
    """

    def __init__(self, num_classes: int, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0, prob: float = 1.0,
                 switch_prob: float = 0.5, label_smoothing: float = 0.0) -> None:
        if mixup_alpha < 0 or cutmix_alpha < 0 or not 0 <= prob <= 1 or not 0 <= label_smoothing < 1:
            raise ValueError("MixupCutmix: alphas must be >= 0, prob in [0, 1], label_smoothing in [0, 1)")
        self.num_classes = int(num_classes)
        self.mixup_alpha, self.cutmix_alpha = float(mixup_alpha), float(cutmix_alpha)
        self.prob, self.switch_prob, self.label_smoothing = float(prob), float(switch_prob), float(label_smoothing)

    @property
    def active(self) -> bool:
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)

    @staticmethod
    def cutmix_box(lam: float, H: int, W: int, cy: float, cx: float) -> tuple[int, int, int, int]:
        """Box (y1, y2, x1, x2) of area ≈ (1 - λ)·H·W centred at (cy, cx) in units of H, W, clipped."""
        cut = math.sqrt(1.0 - lam)
        ch, cw = int(H * cut), int(W * cut)
        y, x = int(cy * H), int(cx * W)
        return max(y - ch // 2, 0), min(y + ch // 2, H), max(x - cw // 2, 0), min(x + cw // 2, W)

    def __call__(self, x: Tensor, y: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        target = one_hot_smooth(y.to(x.device), self.num_classes, self.label_smoothing)
        # Draw every random number unconditionally so the stream does not depend on the branch taken.
        u = torch.rand(3, generator=generator, dtype=torch.float64).tolist()
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        if not self.active or u[0] >= self.prob:
            return x, target
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha == 0 or u[1] < self.switch_prob)
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        rng = np.random.default_rng(seed)  # torch has no seeded Beta sampler; seed numpy from the generator
        lam = float(rng.beta(alpha, alpha))
        if use_cutmix:
            H, W = x.shape[2:]
            y1, y2, x1, x2 = self.cutmix_box(lam, H, W, float(rng.random()), float(rng.random()))
            x = x.clone()
            x[:, :, y1:y2, x1:x2] = x[:, :, y1:y2, x1:x2].flip(0)  # paste partner j = B-1-i
            lam = 1.0 - (y2 - y1) * (x2 - x1) / (H * W)  # exact kept fraction (Yun et al. Alg. A1)
        else:
            x = x.mul(lam).add_(x.flip(0), alpha=1.0 - lam)
        return x, target.mul(lam).add_(target.flip(0), alpha=1.0 - lam)

    def __repr__(self) -> str:
        return (f"MixupCutmix(mixup_alpha={self.mixup_alpha}, cutmix_alpha={self.cutmix_alpha}, prob={self.prob}, "
                f"switch_prob={self.switch_prob}, label_smoothing={self.label_smoothing})")


def _cfg_get(cfg: Any, key: str, default: Any) -> Any:
    if cfg is None:
        return default
    if isinstance(cfg, Mapping):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def build_train_transform(aug_cfg: Any, mean: Sequence[float], std: Sequence[float], num_classes: int, *,
                          label_smoothing: float = 0.0) -> Compose:
    """The training pipeline: crop-pad -> flip -> normalise -> random erasing -> mixup/cutmix.

    ``aug_cfg`` is anything with these attributes or keys (``paperzoo.train.config.AugConfig``, a dict, or
    None for no augmentation): ``crop_padding`` (0 = off), ``hflip`` (probability), ``random_erasing``
    (probability), ``erasing_scale``, ``erasing_ratio``, ``mixup_alpha``, ``cutmix_alpha``, ``mix_prob``,
    ``switch_prob``. When mixup/cutmix is active the output targets are soft (B, K); otherwise labels stay
    hard (B,).

    Label smoothing belongs in exactly one place. ``label_smoothing`` here is baked into the mixed targets
    (only when mixup/cutmix is active). paperzoo's losses smooth soft targets too, and because H(q, p) is
    linear in q, smoothing in the loss gives the same value: with a smoothing loss
    (``build_loss(smoothing=ε)``) leave ``label_smoothing=0`` here, or targets are smoothed twice.
    Cropping and flipping run before normalisation so padding is black (0), as in the CIFAR recipe.
    """
    known = {"crop_padding", "hflip", "random_erasing", "erasing_scale", "erasing_ratio", "mixup_alpha",
             "cutmix_alpha", "mix_prob", "switch_prob"}
    if isinstance(aug_cfg, Mapping) and set(aug_cfg) - known:
        raise ValueError(f"unknown augmentation keys {sorted(set(aug_cfg) - known)}; valid: {sorted(known)}")
    def get(key: str, default: Any) -> Any:
        return _cfg_get(aug_cfg, key, default)

    ts: list[Any] = []
    if get("crop_padding", 0):
        ts.append(RandomCropPad(get("crop_padding", 0)))
    if get("hflip", 0.0) > 0:
        ts.append(RandomHorizontalFlip(get("hflip", 0.0)))
    ts.append(Normalize(mean, std))
    if get("random_erasing", 0.0) > 0:
        ts.append(RandomErasing(get("random_erasing", 0.0), get("erasing_scale", (0.02, 0.33)),
                                get("erasing_ratio", (0.3, 3.3))))
    mix = MixupCutmix(num_classes, get("mixup_alpha", 0.0), get("cutmix_alpha", 0.0), get("mix_prob", 1.0),
                      get("switch_prob", 0.5), label_smoothing)
    if mix.active:
        ts.append(mix)
    return Compose(ts)


def build_eval_transform(mean: Sequence[float], std: Sequence[float]) -> Compose:
    """Evaluation pipeline: normalisation only."""
    return Compose([Normalize(mean, std)])
