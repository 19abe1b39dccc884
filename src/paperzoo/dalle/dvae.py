"""The discrete VAE of DALL-E: images <-> a grid of tokens (Ramesh et al. 2021, "Zero-Shot Text-to-Image
Generation", arXiv:2102.12092, Sec. 2.1 and Appendix A).

The encoder maps an image to logits over a vocabulary of K codes at every cell of an h x w grid; the decoder maps
a (relaxed) one-hot grid back to the parameters of a **logit-Laplace** distribution per pixel. Training maximises
the evidence lower bound with the KL term weighted by beta (Eq. 1 with the prior fixed to uniform in stage 1):

    -ELBO_beta = E_q[-ln p(x | z)] + beta * KL(q(z | x) || uniform(K))

with z drawn from the gumbel-softmax relaxation of q (temperature annealed 1 -> 1/16) so the loss can be
backpropagated (Appendix A.2). Layout and initialisation follow OpenAI's released dVAE (github.com/openai/DALL-E,
``dall_e/encoder.py``, ``decoder.py``, ``utils.py``): resnet blocks whose residual path is scaled by the post-gain
1/L^2 (L = blocks in total), groups joined by 2x max-pool (encoder) / nearest upsampling (decoder), 1x1 convs
at the encoder's output and the decoder's input. The module names are the released ones, so the released state
dict maps to ours by renaming ``.w``/``.b`` to ``.weight``/``.bias`` (the ``"openai"`` weights source).

Deviations from the paper and the release:
- the release fixes 4 groups (widths 1, 2, 4, 8 x n_hid); ``group_count`` generalises it (widths 2^(g-1) x n_hid,
  a pool after every group but the last), so the 28x28 configuration uses 3 groups for a 7x7 grid;
- the release runs its convolutions in fp16 on GPUs; ours follow the trainer's precision setting;
- the schedules (cosine, Appendix A.2) take their lengths in optimizer steps from the config: the paper's
  150,000 (temperature) and 5,000 (KL weight) updates of 3,000,000 are far longer than a run here.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from paperzoo.named_registry import NamedRegistry, UnknownNameError
from paperzoo.weights import WeightLoadError, register_converter

__all__ = ["DVAEConfig", "DiscreteVAE", "Encoder", "Decoder", "LOGIT_LAPLACE_EPS", "map_pixels", "unmap_pixels",
           "logit_laplace_nll", "gumbel_softmax_relaxation", "kl_to_uniform", "temperature_at", "kl_weight_at",
           "create_dvae", "dvae_names", "UnknownDVAEError"]

#: epsilon of the pixel map x -> (1 - 2 eps) x + eps (Sec. A.3): keeps pixels inside the open interval (0, 1)
LOGIT_LAPLACE_EPS = 0.1


# ------------------------------------------------------------------------------------------------ the formulas
def map_pixels(x: Tensor, eps: float = LOGIT_LAPLACE_EPS) -> Tensor:
    """[0, 1] -> [eps, 1 - eps] (Sec. A.3), so the logit in the logit-Laplace density stays finite."""
    return (1 - 2 * eps) * x + eps


def unmap_pixels(x: Tensor, eps: float = LOGIT_LAPLACE_EPS) -> Tensor:
    """The inverse of :func:`map_pixels`, clamped to [0, 1]."""
    return ((x - eps) / (1 - 2 * eps)).clamp(0, 1)


def logit_laplace_nll(x: Tensor, mu: Tensor, log_b: Tensor) -> Tensor:
    """Per-pixel negative log-density of the logit-Laplace distribution (Sec. A.3):

        f(x | mu, b) = 1 / (2 b x (1 - x)) * exp(-|logit(x) - mu| / b),   x in (0, 1)

    Args:
        x: mapped pixels in (0, 1) (:func:`map_pixels`), any shape.
        mu, log_b: the decoder's location and log-scale, broadcastable to ``x``.
    """
    logit_x = torch.log(x) - torch.log1p(-x)
    return math.log(2.0) + log_b + torch.log(x) + torch.log1p(-x) + (logit_x - mu).abs() * torch.exp(-log_b)


def gumbel_softmax_relaxation(logits: Tensor, temperature: float, *, dim: int = 1,
                              generator: torch.Generator | None = None) -> Tensor:
    """A relaxed one-hot sample of the categorical softmax(logits) (Jang et al. 2016; Maddison et al. 2016):
    softmax((logits + g) / tau) with g = -ln(-ln u), u ~ U(0, 1) i.i.d. As tau -> 0 it becomes the one-hot of
    argmax(logits + g), which is an exact sample (the Gumbel-max trick)."""
    u = torch.rand(logits.shape, generator=generator, dtype=torch.float32, device="cpu").to(logits.device)
    tiny = torch.finfo(torch.float32).tiny
    g = -torch.log(-torch.log(u.clamp(tiny, 1.0 - 1e-7)))  # u in (0, 1): g finite
    return F.softmax((logits.float() + g) / temperature, dim=dim).to(logits.dtype)


def kl_to_uniform(logits: Tensor, dim: int = 1) -> Tensor:
    """KL(q || uniform(K)) = sum_k q_k ln q_k + ln K for q = softmax(logits) along ``dim`` (the prior of stage 1 is
    uniform over the K codes, Sec. 2.1); one value per grid cell (``dim`` removed)."""
    log_q = F.log_softmax(logits.float(), dim=dim)
    return (log_q.exp() * log_q).sum(dim) + math.log(logits.shape[dim])


def _cosine_ramp(step: int, steps: int) -> float:
    """0 at step 0 -> 1 at ``steps`` (and after), along half a cosine."""
    t = min(max(step, 0) / steps, 1.0) if steps > 0 else 1.0
    return 0.5 * (1 - math.cos(math.pi * t))


def temperature_at(step: int, anneal_steps: int, start: float = 1.0, end: float = 1 / 16) -> float:
    """The relaxation temperature tau: ``start`` -> ``end`` over ``anneal_steps`` with a cosine schedule
    (Appendix A.2: 1 -> 1/16 over the first 150,000 of 3,000,000 updates), then constant."""
    return start + (end - start) * _cosine_ramp(step, anneal_steps)


def kl_weight_at(step: int, warmup_steps: int, beta: float = 6.6) -> float:
    """The KL weight: 0 -> ``beta`` over ``warmup_steps`` with a cosine schedule (Appendix A.2: beta = 6.6 reached
    after 5,000 updates), then constant."""
    return beta * _cosine_ramp(step, warmup_steps)


# ------------------------------------------------------------------------------------------------ the networks
@dataclass
class DVAEConfig:
    """The released hyper-parameters (``dall_e`` Encoder/Decoder arguments) plus the image size it is used at."""

    in_channels: int = 3  # image channels (the released ``input_channels`` / ``output_channels``)
    n_hid: int = 256  # width of the first encoder group (and the last decoder group)
    group_count: int = 4  # groups; a 2x pool (encoder) / upsample (decoder) between consecutive groups
    n_blk_per_group: int = 2
    vocab_size: int = 8192  # K codes
    n_init: int = 128  # decoder: channels after its input 1x1 conv
    image_size: int = 256  # side of the (square) images: the grid is image_size / 2^(group_count - 1)

    def __post_init__(self) -> None:
        for name in ("in_channels", "n_hid", "group_count", "n_blk_per_group", "vocab_size", "n_init", "image_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"DVAEConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.n_hid % 4:  # a block's bottleneck is n_out / 4 channels
            raise ValueError(f"DVAEConfig.n_hid must be a multiple of 4, got {self.n_hid}")
        if self.image_size % 2 ** (self.group_count - 1):
            raise ValueError(f"image_size {self.image_size} is not divisible by 2^(group_count - 1) = "
                             f"{2 ** (self.group_count - 1)}")


def _conv(n_in: int, n_out: int, kw: int) -> nn.Conv2d:
    """A 'same' convolution initialised as the release's: w ~ N(0, 1 / (n_in kw^2)), b = 0 (dall_e/utils.py)."""
    conv = nn.Conv2d(n_in, n_out, kw, padding=(kw - 1) // 2)
    nn.init.normal_(conv.weight, std=1 / math.sqrt(n_in * kw ** 2))
    nn.init.zeros_(conv.bias)
    return conv


class ResBlock(nn.Module):
    """id_path(x) + (1 / L^2) * res_path(x): four ReLU-conv pairs with an n_out/4 bottleneck (Appendix A.1). The
    post-gain keeps the sum of L residual paths near the identity at initialisation (Sec. A.2 names it among the
    three things that made training stable). Encoder kernels are 3, 3, 3, 1; decoder kernels 1, 3, 3, 3."""

    def __init__(self, n_in: int, n_out: int, n_layers: int, kernels: tuple[int, int, int, int]) -> None:
        super().__init__()
        n_hid = n_out // 4
        self.post_gain = 1 / n_layers ** 2
        self.id_path = _conv(n_in, n_out, 1) if n_in != n_out else nn.Identity()
        widths = [(n_in, n_hid), (n_hid, n_hid), (n_hid, n_hid), (n_hid, n_out)]
        layers: list[tuple[str, nn.Module]] = []
        for i, ((a, b), k) in enumerate(zip(widths, kernels), start=1):
            layers += [(f"relu_{i}", nn.ReLU()), (f"conv_{i}", _conv(a, b, k))]
        self.res_path = nn.Sequential(OrderedDict(layers))

    def forward(self, x: Tensor) -> Tensor:
        return self.id_path(x) + self.post_gain * self.res_path(x)


def _group(widths: list[tuple[int, int]], n_layers: int, kernels: tuple[int, int, int, int],
           resize: tuple[str, nn.Module] | None) -> nn.Sequential:
    """``block_1 .. block_n`` (one per (n_in, n_out) row), then the pool / upsample if any."""
    layers: list[tuple[str, nn.Module]] = [(f"block_{i}", ResBlock(a, b, n_layers, kernels))
                                           for i, (a, b) in enumerate(widths, start=1)]
    return nn.Sequential(OrderedDict(layers + ([resize] if resize else [])))


class Encoder(nn.Module):
    """(B, C, H, W) mapped pixels -> (B, K, H / 2^(G-1), W / 2^(G-1)) logits over the codes (dall_e/encoder.py)."""

    model_family = "dvae"

    def __init__(self, cfg: DVAEConfig) -> None:
        super().__init__()
        g_count, n_blk, n = cfg.group_count, cfg.n_blk_per_group, cfg.n_hid
        n_layers = g_count * n_blk
        layers: list[tuple[str, nn.Module]] = [("input", _conv(cfg.in_channels, n, 7))]
        prev = n
        for g in range(1, g_count + 1):  # widths n, 2n, 4n, 8n at the released 4 groups
            width = 2 ** (g - 1) * n
            rows = [(prev if i == 0 else width, width) for i in range(n_blk)]
            pool = ("pool", nn.MaxPool2d(kernel_size=2)) if g < g_count else None
            layers.append((f"group_{g}", _group(rows, n_layers, (3, 3, 3, 1), pool)))
            prev = width
        layers.append(("output", nn.Sequential(OrderedDict([("relu", nn.ReLU()),
                                                            ("conv", _conv(prev, cfg.vocab_size, 1))]))))
        self.blocks = nn.Sequential(OrderedDict(layers))

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(x)


class Decoder(nn.Module):
    """(B, K, h, w) (relaxed) one-hot codes -> (B, 2C, h 2^(G-1), w 2^(G-1)): the logit-Laplace location mu
    (channels :C) and log-scale ln b (channels C:) of every pixel (dall_e/decoder.py)."""

    model_family = "dvae"

    def __init__(self, cfg: DVAEConfig) -> None:
        super().__init__()
        g_count, n_blk, n = cfg.group_count, cfg.n_blk_per_group, cfg.n_hid
        n_layers = g_count * n_blk
        layers: list[tuple[str, nn.Module]] = [("input", _conv(cfg.vocab_size, cfg.n_init, 1))]
        prev = cfg.n_init
        for g in range(1, g_count + 1):  # widths 8n, 4n, 2n, n at the released 4 groups
            width = 2 ** (g_count - g) * n
            rows = [(prev if i == 0 else width, width) for i in range(n_blk)]
            up = ("upsample", nn.Upsample(scale_factor=2, mode="nearest")) if g < g_count else None
            layers.append((f"group_{g}", _group(rows, n_layers, (1, 3, 3, 3), up)))
            prev = width
        layers.append(("output", nn.Sequential(OrderedDict([("relu", nn.ReLU()),
                                                            ("conv", _conv(prev, 2 * cfg.in_channels, 1))]))))
        self.blocks = nn.Sequential(OrderedDict(layers))

    def forward(self, z: Tensor) -> Tensor:
        return self.blocks(z)


class DiscreteVAE(nn.Module):
    """The dVAE: ``encode_logits`` / ``tokens`` (image -> codes), ``decode`` (codes -> image), and ``forward``,
    the training loss.

    Images are float (B, C, H, W) in [0, 1]; the model maps pixels itself (:func:`map_pixels`).
    """

    model_family = "dvae"

    def __init__(self, cfg: DVAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder, self.decoder = Encoder(cfg), Decoder(cfg)

    @property
    def vocab_size(self) -> int:
        return self.cfg.vocab_size

    @property
    def grid(self) -> tuple[int, int]:
        """(h, w) of the token grid of a ``cfg.image_size`` image."""
        side = self.cfg.image_size // 2 ** (self.cfg.group_count - 1)
        return side, side

    def _check(self, x: Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.cfg.in_channels:
            raise ValueError(f"expected images (B, {self.cfg.in_channels}, H, W), got {tuple(x.shape)}")

    def encode_logits(self, x: Tensor) -> Tensor:
        """(B, C, H, W) in [0, 1] -> (B, K, h, w) logits of q(z | x)."""
        self._check(x)
        return self.encoder(map_pixels(x))

    @torch.no_grad()
    def tokens(self, x: Tensor) -> Tensor:
        """(B, C, H, W) in [0, 1] -> (B, h, w) int64: the most likely code of each cell (what the Transformer
        is trained on, per the release's notebook and the authors' note)."""
        return self.encode_logits(x).argmax(1)

    def one_hot(self, tokens: Tensor) -> Tensor:
        """(B, h, w) int64 -> (B, K, h, w) float one-hot codes, the decoder's input."""
        if tokens.dtype != torch.int64 or tokens.ndim != 3:
            raise ValueError(f"expected tokens int64 (B, h, w), got {tokens.dtype} {tuple(tokens.shape)}")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.vocab_size):
            raise ValueError(f"tokens must be in [0, {self.vocab_size}), got [{int(tokens.min())}, "
                             f"{int(tokens.max())}]")
        return F.one_hot(tokens, self.vocab_size).permute(0, 3, 1, 2).float()  # (B, h, w, K) -> (B, K, h, w)

    def reconstruct(self, stats: Tensor) -> Tensor:
        """Decoder output (B, 2C, H, W) -> the image in [0, 1]: unmap(sigmoid(mu)), the distribution's median
        (the release's notebook does the same)."""
        return unmap_pixels(torch.sigmoid(stats[:, : self.cfg.in_channels].float()))

    @torch.no_grad()
    def decode(self, tokens: Tensor) -> Tensor:
        """(B, h, w) int64 codes -> (B, C, H, W) images in [0, 1]."""
        return self.reconstruct(self.decoder(self.one_hot(tokens)))

    def forward(self, x: Tensor, temperature: float = 1.0, kl_weight: float = 0.0,
                generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """The beta-weighted negative ELBO of a batch (Eq. 1, Appendix A.2) and its parts.

        In training mode z is the gumbel-softmax relaxation at ``temperature``; in eval mode the one-hot argmax
        codes (what the Transformer sees), so evaluation scores the tokens' reconstructions.

        Returns:
            ``recon_nll``: -ln p(x | z) in nats per pixel and channel (mean over the batch);
            ``kl``: KL(q(z | x) || uniform) in nats per grid cell; ``loss``: the -ELBO with the KL weighted by
            ``kl_weight``, both sums over the image divided by its C H W values (so that ``kl`` counts
            h w / (C H W) per pixel, as in the ELBO's sum); ``mse``: the squared error of the reconstruction
            against ``x`` on [0, 1].
        """
        logits = self.encode_logits(x)  # (B, K, h, w)
        if self.training:
            z = gumbel_softmax_relaxation(logits, temperature, generator=generator)
        else:
            z = self.one_hot(logits.argmax(1)).to(logits.dtype)
        stats = self.decoder(z).float()  # (B, 2C, H, W)
        c = self.cfg.in_channels
        recon_nll = logit_laplace_nll(map_pixels(x.float()), stats[:, :c], stats[:, c:]).mean()
        kl = kl_to_uniform(logits).mean()
        cells_per_value = logits[0, 0].numel() / x[0].numel()  # h w / (C H W)
        loss = recon_nll + kl_weight * cells_per_value * kl
        mse = F.mse_loss(self.reconstruct(stats), x.float())
        return {"loss": loss, "recon_nll": recon_nll, "kl": kl, "mse": mse}


# ------------------------------------------------------------------------------------------------ released weights
@register_converter("dvae", "openai")
def _from_openai(sd: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """The released ``Encoder`` / ``Decoder`` state dict (``blocks.group_1.block_1.res_path.conv_1.w``) -> ours:
    the module paths are the same, the parameters are named ``w`` / ``b`` instead of ``weight`` / ``bias``."""
    if isinstance(model, DiscreteVAE) and any(k.startswith("blocks.") for k in sd):
        raise WeightLoadError("the released encoder.pkl and decoder.pkl are separate: load them into "
                              "model.encoder and model.decoder")
    leaves = {"w": "weight", "b": "bias"}
    renamed = {}
    for key, value in sd.items():
        stem, _, leaf = key.rpartition(".")
        renamed[f"{stem}.{leaves.get(leaf, leaf)}" if stem else key] = value
    return renamed


# ------------------------------------------------------------------------------------------------ registry
class UnknownDVAEError(UnknownNameError):
    """No dVAE builder has that name."""


_REGISTRY = NamedRegistry("dVAE", ("paperzoo.dalle.dvae",), UnknownDVAEError)
register_dvae = _REGISTRY.register


def create_dvae(name: str, **kwargs: Any) -> DiscreteVAE:
    """Build the registered dVAE ``name``; keyword arguments override its :class:`DVAEConfig` fields."""
    return _REGISTRY.create(name, **kwargs)  # type: ignore[return-value]


def dvae_names() -> list[str]:
    return _REGISTRY.names()


@register_dvae
def dvae_openai(**kw: Any) -> DiscreteVAE:
    """The released dVAE: 256x256 RGB -> 32x32 tokens of 8,192 codes (53,786,240 + 43,829,766 parameters)."""
    return DiscreteVAE(DVAEConfig(**{**dict(in_channels=3, n_hid=256, group_count=4, n_blk_per_group=2,
                                            vocab_size=8192, n_init=128, image_size=256), **kw}))


@register_dvae
def dvae_fmnist(**kw: Any) -> DiscreteVAE:
    """28x28 grayscale -> 7x7 tokens of 512 codes (3 groups of 1 block, widths 64/128/256)."""
    return DiscreteVAE(DVAEConfig(**{**dict(in_channels=1, n_hid=64, group_count=3, n_blk_per_group=1,
                                            vocab_size=512, n_init=128, image_size=28), **kw}))
