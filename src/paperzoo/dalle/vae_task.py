"""Training DALL-E's discrete VAE (stage 1) as a :class:`paperzoo.train.task.Task`: ``task: dalle_vae``.

The dVAE (:mod:`.dvae`) learns to tokenise Fashion-MNIST (or MNIST) images by minimising the beta-weighted negative
ELBO (Ramesh et al. 2021, arXiv:2102.12092, Appendix A.2): the gumbel-softmax temperature falls from
``anneal.temperature_start`` (1) to ``anneal.temperature_end`` (1/16) over ``anneal.temperature_steps``, the KL
weight rises from 0 to ``anneal.beta`` (6.6) over ``anneal.kl_warmup_steps``, both cosine; the learning rate
follows the toolkit's ``sched`` section (the paper anneals it with a cosine too). Both schedules are functions of
the optimizer step, which the task reads from its loader's position (epoch, batch): the checkpoint restores that
position, so a resumed run continues the annealing exactly where it stopped (``state_dict()["step"]`` records it).

Evaluation encodes every test image to its argmax tokens and decodes them (what the Transformer of stage 2 will
see): ``test_mse`` (primary, lower is better) on [0, 1] pixels, ``test_recon_nll`` (nats per pixel), ``test_kl``
(nats per grid cell) and ``test_code_perplexity``, exp of the entropy of the codes used over the test set (how many
codes the tokeniser effectively uses; at most the vocabulary size).

Using a run: :func:`load_dvae` (the model, eval mode) and :func:`tokenize_images` (images -> token grids).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn
from torch import Tensor

from paperzoo.data.datasets import load_image_dataset
from paperzoo.data.loader import TensorLoader
from paperzoo.train.config import ModelConfig, OptimConfig, RunConfig, SchedConfig, TrainConfig, check_fields
from paperzoo.train.distributed import DistInfo, all_reduce_sum
from paperzoo.train.task import Task, register_task

from .dvae import DiscreteVAE, create_dvae, kl_weight_at, temperature_at

__all__ = ["DVAEDataConfig", "AnnealConfig", "DVAETaskConfig", "DVAETask", "load_dvae", "tokenize_images"]


@dataclass
class DVAEDataConfig:
    dataset: Literal["fashion_mnist", "mnist"] = "fashion_mnist"
    root: str | None = None  # directory of the idx files (None: $PAPERZOO_DATA or the usual places)
    batch_size: int = 128  # images per optimizer micro-step (all DDP ranks together)
    eval_batch_size: int = 1000
    train_subset: int | None = None  # the first N training images only (quick checks)
    test_subset: int | None = None

    def __post_init__(self) -> None:
        check_fields(self, "data", batch_size="count", eval_batch_size="count", train_subset="count",
                     test_subset="count")


@dataclass
class AnnealConfig:
    """The relaxation temperature and the KL weight over the optimizer steps (Appendix A.2, cosine schedules)."""

    temperature_start: float = 1.0
    temperature_end: float = 1 / 16
    temperature_steps: int = 2000  # the paper: 150,000 of 3,000,000 updates
    beta: float = 6.6  # the KL weight reached after the warm-up
    kl_warmup_steps: int = 500  # the paper: 5,000 updates

    def __post_init__(self) -> None:
        check_fields(self, "anneal", temperature_start="positive", temperature_end="positive",
                     temperature_steps="non_negative", beta="non_negative", kl_warmup_steps="non_negative")


@dataclass
class DVAETaskConfig:
    task: Literal["dalle_vae"] = "dalle_vae"
    #: a registered dVAE (``paperzoo.dalle.dvae.dvae_names()``) and :class:`~.dvae.DVAEConfig` overrides
    model: ModelConfig = field(default_factory=lambda: ModelConfig(name="dvae_fmnist"))
    data: DVAEDataConfig = field(default_factory=DVAEDataConfig)
    anneal: AnnealConfig = field(default_factory=AnnealConfig)
    # the paper: AdamW, betas (0.9, 0.999), weight decay 1e-4, step size 1e-4 annealed with a cosine
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(name="adamw", lr=1e-3, weight_decay=1e-4))
    sched: SchedConfig = field(default_factory=SchedConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)


def _images(d: DVAEDataConfig, split: str) -> Tensor:
    """uint8 (N, 1, 28, 28) images of one split (the first ``*_subset`` only, if set)."""
    images = load_image_dataset(d.dataset, split, d.root).images
    n = d.train_subset if split == "train" else d.test_subset
    return images[:n] if n else images


@register_task
class DVAETask(Task):
    """Train a dVAE to tokenise Fashion-MNIST images, scored by the test MSE of the tokens' reconstructions."""

    name, config_type = "dalle_vae", DVAETaskConfig
    primary_metric, higher_is_better = "test_mse", False
    resume_command = "paperzoo dalle train-vae"

    def __init__(self, cfg: DVAETaskConfig, dist: DistInfo | None = None) -> None:
        self.cfg, self.dist = cfg, dist or DistInfo()
        d, world = cfg.data, self.dist.world_size
        if d.batch_size % world:
            raise ValueError(f"data.batch_size={d.batch_size} is not divisible by the {world} DDP processes")
        train = _images(d, "train")
        if len(train) < d.batch_size:
            raise ValueError(f"data.batch_size={d.batch_size} is larger than the {len(train)} training images")
        self.train_loader = TensorLoader(train, torch.zeros(len(train), dtype=torch.int64), d.batch_size // world,
                                         shuffle=True, drop_last=True, seed=cfg.train.seed, device=self.dist.device,
                                         rank=self.dist.rank, world_size=world)
        self.test_images = _images(d, "test")[self.dist.rank::world]  # this rank's share, each image once
        self.image_size = int(train.shape[-1])

    # ---- the schedules' clock
    @property
    def step(self) -> int:
        """The optimizer step being taken, from the loader's position (a partial accumulation group at an epoch's
        end is dropped by the trainer, so every epoch has ``len(loader) // grad_accum`` steps)."""
        accum = self.cfg.train.grad_accum
        cursor = self.train_loader.cursor
        return cursor.epoch * (len(self.train_loader) // accum) + max(cursor.batch - 1, 0) // accum

    def schedule(self, step: int) -> tuple[float, float]:
        """(temperature, KL weight) at optimizer step ``step``."""
        a = self.cfg.anneal
        return (temperature_at(step, a.temperature_steps, a.temperature_start, a.temperature_end),
                kl_weight_at(step, a.kl_warmup_steps, a.beta))

    def state_dict(self) -> dict[str, Any]:
        return {"train_loader": self.train_loader.state_dict(), "step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.train_loader.load_state_dict(state["train_loader"])

    # ---- model, loss, evaluation
    def model_args(self) -> dict[str, Any]:
        return {"image_size": self.image_size, "in_channels": 1, **self.cfg.model.args}

    def build_model(self) -> nn.Module:
        return _create(self.cfg.model.name, self.model_args())

    def train_step(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        x, _ = batch
        temperature, kl_weight = self.schedule(self.step)
        out = model(x, temperature=temperature, kl_weight=kl_weight)
        n = torch.tensor(x.shape[0], device=x.device)
        # the logger divides every sum by count: weight each term by the batch size so it logs the mean
        logged = {k: out[k].detach() * n for k in ("recon_nll", "kl", "mse")}
        logged.update(temperature=n * temperature, kl_weight=n * kl_weight)
        return out["loss"], {"count": n, **logged}

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Test metrics of the argmax tokens' reconstructions, summed over this rank's share and all ranks."""
        was_training = model.training
        model.eval()
        device, v = self.dist.device, model.vocab_size
        sums = torch.zeros(4, dtype=torch.float64, device=device)  # (images, mse, recon_nll, kl) sums
        counts = torch.zeros(v, dtype=torch.float64, device=device)  # how often each code is used
        for x in _batches(self.test_images, self.cfg.data.eval_batch_size, device):
            out = model(x)
            n = x.shape[0]
            sums += torch.tensor([n, n * float(out["mse"]), n * float(out["recon_nll"]), n * float(out["kl"])],
                                 dtype=torch.float64, device=device)
            counts += torch.bincount(model.tokens(x).flatten(), minlength=v).double()
        model.train(was_training)
        sums, counts = all_reduce_sum(sums, self.dist), all_reduce_sum(counts, self.dist)
        p = counts[counts > 0] / counts.sum()
        perplexity = float(torch.exp(-(p * p.log()).sum()))
        n = float(sums[0])
        return {"test_mse": float(sums[1]) / n, "test_recon_nll": float(sums[2]) / n, "test_kl": float(sums[3]) / n,
                "test_code_perplexity": perplexity}

    def metadata(self) -> dict[str, Any]:
        with torch.device("meta"):  # the grid and vocabulary of the configured model, without its weights
            model = self.build_model()
        return {"task": self.name, "model": {"name": self.cfg.model.name, "args": self.model_args()},
                "grid": list(model.grid), "vocab_size": model.vocab_size, "data": asdict(self.cfg.data),
                "anneal": asdict(self.cfg.anneal)}


def _batches(images: Tensor, batch: int, device: torch.device | str) -> Iterator[Tensor]:
    """float (b, C, H, W) batches in [0, 1] of uint8 or float images, in order."""
    for i in range(0, len(images), batch):
        x = images[i: i + batch].to(device)
        yield x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


def _create(name: str, args: dict[str, Any]) -> DiscreteVAE:
    from .dvae import UnknownDVAEError

    try:
        return create_dvae(name, **args)
    except UnknownDVAEError as e:  # a KeyError: one line, exit status 2 through the CLI
        raise ValueError(str(e)) from None
    except TypeError as e:  # an argument DVAEConfig does not take
        raise ValueError(f"model.args do not fit {name}: {e}") from None


# ------------------------------------------------------------------------------------------------ using a run
def load_dvae(path: str | Path, which: str = "best", *, device: str | torch.device = "cpu") -> DiscreteVAE:
    """The dVAE of a ``dalle_vae`` run directory, checkpoint directory or ``.safetensors`` file, in eval mode
    (``which``: "best", "final" or "last"; "best" falls back to "final")."""
    from paperzoo.train import checkpoint as ckpt
    from paperzoo.weights import load_state_dict_checked

    weights = ckpt.find_weights(path, which)
    meta = ckpt.read_meta(weights)
    if meta.get("task") != DVAETask.name:
        raise ValueError(f"{weights} is not a paperzoo dalle_vae checkpoint (task={meta.get('task')!r})")
    model = _create(meta["model"]["name"], meta["model"]["args"])
    load_state_dict_checked(model, ckpt.read_weights(weights), what=str(weights))
    model.meta = meta
    return model.to(device).eval()


@torch.no_grad()
def tokenize_images(model: DiscreteVAE, images: Tensor, batch: int = 500) -> Tensor:
    """Images (N, C, H, W), float in [0, 1] (or uint8), -> (N, h, w) int64 tokens on the CPU, ``batch`` at a time
    on the model's device."""
    c, size = model.cfg.in_channels, model.cfg.image_size
    if images.ndim != 4 or tuple(images.shape[1:]) != (c, size, size):
        raise ValueError(f"expected images (N, {c}, {size}, {size}), got {tuple(images.shape)}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    tokens = [model.tokens(x).cpu() for x in _batches(images, batch, device)]
    model.train(was_training)
    h, w = model.grid
    return torch.cat(tokens) if tokens else torch.zeros(0, h, w, dtype=torch.int64)
