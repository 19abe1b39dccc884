"""Training the small CLIP on captioned Fashion-MNIST: the task ``dalle_clip`` of the shared trainer.

A config with ``task: dalle_clip`` trains :class:`~paperzoo.dalle.clip.CLIP` (Radford et al. 2021,
arXiv:2103.00020) on :class:`~paperzoo.dalle.captions.CaptionedFashionMNIST` (English, Korean or both) with the
symmetric InfoNCE of :func:`~paperzoo.dalle.clip.clip_loss`. The caption tokenizer
(:func:`~paperzoo.dalle.captions.build_caption_tokenizer`) is stored in every checkpoint's metadata, and a
resumed run rebuilds its tokens from there (the text tasks' ``resume_meta`` pattern). Batches come from a
:class:`~paperzoo.data.loader.TensorLoader` over (images, caption tokens): the order is a function of
(seed, epoch), so a run resumes exactly. No augmentation: a flip or a crop would change the measured direction
or size that the captions state.

Evaluation on the test split (10,000 images, or ``data.n_test``):

* ``test_zeroshot_acc`` (primary): the class whose plain prompt (:func:`~paperzoo.dalle.captions.class_prompts`,
  "a sneaker" / "운동화") is nearest to the image — CLIP's zero-shot classifier (Sec. 3.1.2) — averaged over the
  run's languages (``test_zeroshot_acc_en`` / ``_ko`` logged too);
* ``test_retrieval_acc``: image -> text within each evaluation batch of 500: the best-scoring caption describes
  the image (:func:`~paperzoo.dalle.captions.describes`: its own, or one whose class and stated attributes fit);
* ``test_attr_acc``: among the full-attribute captions of the image's own class (template 0), the best is the
  one that states its measured size, brightness (and direction); ``test_heldout_attr_acc`` the same on the
  :data:`~paperzoo.dalle.captions.HELD_OUT` images only, whose combinations training never captioned;
* ``test_loss``.

Using a run: :func:`load_clip` -> ``(CLIP, tokenizer)``, :func:`rerank_prompt`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from itertools import product
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn
from torch import Tensor

from paperzoo.data.loader import TensorLoader
from paperzoo.text.tokenizers import Tokenizer, TokenizerMismatchError, tokenizer_from_dict
from paperzoo.train.config import (
    ModelConfig,
    OptimConfig,
    RunConfig,
    SchedConfig,
    TrainConfig,
    check_fields,
)
from paperzoo.train.distributed import DistInfo
from paperzoo.train.task import Task, register_task

from .captions import (
    BRIGHTNESS,
    DIRECTIONS,
    SHOE_CLASSES,
    SIZES,
    CaptionedFashionMNIST,
    build_caption_tokenizer,
    class_prompts,
    describes,
    make_caption,
)
from .clip import CLIP, clip_loss, create_clip, rerank, tokenize_captions

__all__ = ["ClipDataConfig", "ClipTaskConfig", "ClipTask", "load_clip", "rerank_prompt"]


@dataclass
class ClipDataConfig:
    lang: Literal["en", "ko", "both"] = "both"  # caption language(s); "both": each item's drawn at random
    caption_seed: int = 0  # seed of the captions' draws (the same captions as the dalle task's with the same seed)
    n_train: int | None = None  # the first n training images only (quick runs)
    n_test: int | None = None
    plain: float = 0.15  # probability that a caption names the class only
    partial: float = 0.15  # ... that it drops one attribute
    vocab_size: int = 512  # the caption BPE tokenizer
    context_length: int = 16  # tokens per caption, BOS and EOS included
    batch_size: int = 256  # pairs per step: the N of the N x N logits
    eval_batch_size: int = 500
    multi_positive: bool = True  # every text of the batch that describes an image is its match (clip.py); False:
    # the paper's one-hot targets
    root: str | None = None  # Fashion-MNIST's directory (default: paperzoo's search path)

    def __post_init__(self) -> None:
        check_fields(self, "data", n_train="count", n_test="count", plain="probability", partial="probability",
                     vocab_size="count", context_length="count", batch_size="count", eval_batch_size="count")

    @property
    def dataset(self) -> str:  # the run directory's default name: clip_fmnist-captioned_fmnist-<time>
        return "captioned_fmnist"


@dataclass
class ClipTaskConfig:
    task: Literal["dalle_clip"] = "dalle_clip"
    #: ``clip_fmnist`` or ``clip_tiny`` (:func:`~paperzoo.dalle.clip.create_clip`), args = CLIPConfig fields
    model: ModelConfig = field(default_factory=lambda: ModelConfig(name="clip_fmnist"))
    data: ClipDataConfig = field(default_factory=ClipDataConfig)
    # the paper's optimiser is Adam with decoupled weight decay (AdamW) and a cosine schedule (Sec. 2.5)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(name="adamw", lr=1e-3, weight_decay=0.1))
    sched: SchedConfig = field(default_factory=lambda: SchedConfig(name="cosine", warmup_epochs=0.2))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=4))
    run: RunConfig = field(default_factory=RunConfig)


def _pack(tokens: Tensor, keys: Tensor, stated: Tensor) -> Tensor:
    """One (N, L + 8) int64 table for the loader: caption tokens, the image's keys, what the caption states."""
    return torch.cat([tokens, keys, stated], 1)


def _unpack(batch: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return batch[:, :-8], batch[:, -8:-4], batch[:, -4:]  # (B, L), (B, 4), (B, 4)


def _unwrap(model: nn.Module) -> CLIP:
    return getattr(model, "module", model)  # DDP / compiled wrappers keep the CLIP in .module / ._orig_mod


@register_task
class ClipTask(Task):
    """Contrastive image-text pre-training on captioned Fashion-MNIST (see the module docstring)."""

    name, config_type = "dalle_clip", ClipTaskConfig
    primary_metric, higher_is_better = "test_zeroshot_acc", True
    resume_command = "paperzoo dalle train-clip"

    def __init__(self, cfg: ClipTaskConfig, dist: DistInfo | None = None, *, tokenizer: Tokenizer | None = None
                 ) -> None:
        self.cfg, self.dist = cfg, dist or DistInfo()
        d, world = cfg.data, self.dist.world_size
        if d.batch_size % world:
            raise ValueError(f"data.batch_size={d.batch_size} is not divisible by the {world} DDP processes")
        self.tok = tokenizer if tokenizer is not None else build_caption_tokenizer(d.vocab_size)
        kw = dict(lang=d.lang, seed=d.caption_seed, plain=d.plain, partial=d.partial, root=d.root)
        self.train_set = CaptionedFashionMNIST("train", n=d.n_train, **kw)
        self.test_set = CaptionedFashionMNIST("test", n=d.n_test, **kw)
        self.langs = ["en", "ko"] if d.lang == "both" else [d.lang]
        self.test_table = _pack(tokenize_captions(self.tok, self.test_set.captions, d.context_length),
                                self.test_set.keys, self.test_set.stated)
        table = _pack(tokenize_captions(self.tok, self.train_set.captions, d.context_length),  # (N, L + 8)
                      self.train_set.keys, self.train_set.stated)
        self.train_loader = TensorLoader(self.train_set.images, table, d.batch_size // world, shuffle=True,
                                         drop_last=True, seed=cfg.train.seed, device=self.dist.device,
                                         rank=self.dist.rank, world_size=world)

    @classmethod
    def from_config(cls, cfg: ClipTaskConfig, dist: Any = None, *,
                    resume_meta: dict[str, Any] | None = None) -> ClipTask:
        """The task of ``cfg``; resuming, with the run's own tokenizer (saved in its checkpoint's metadata)."""
        tok = resume_meta.get("tokenizer") if resume_meta is not None else None
        return cls(cfg, dist, tokenizer=tokenizer_from_dict(tok) if tok else None)

    # ---- the Task interface
    def model_args(self) -> dict[str, Any]:
        return {"vocab_size": self.tok.vocab_size, "context_length": self.cfg.data.context_length,
                "pad_id": self.tok.pad_id, **self.cfg.model.args}

    def build_model(self) -> nn.Module:
        return create_clip(self.cfg.model.name, **self.model_args())

    def _loss(self, model: nn.Module, images: Tensor, table: Tensor) -> tuple[Tensor, Tensor]:
        """The batch's loss and how many images' best text describes them."""
        tokens, keys, stated = _unpack(table)
        tokens = tokens[:, : int((tokens != self.tok.pad_id).sum(1).max())]  # (B, L') drop all-padding columns
        logits = model(images, tokens)  # (B, B)
        positives = describes(keys, stated)  # (B, B): text j describes image i
        loss = clip_loss(logits, positives if self.cfg.data.multi_positive else None)
        return loss, positives.gather(1, logits.argmax(1, keepdim=True)).sum()

    def train_step(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        images, table = batch
        loss, correct = self._loss(model, images, table)
        n = torch.tensor(images.shape[0], device=images.device)
        # logged as train_acc (in-batch retrieval) and train_logit_scale (the learned exp(t))
        return loss, {"count": n, "correct": correct, "logit_scale": _unwrap(model).scale().detach() * n}

    @torch.no_grad()
    def _prompt_embeddings(self, clip: CLIP, texts: list[str]) -> Tensor:
        tokens = tokenize_captions(self.tok, texts, self.cfg.data.context_length).to(self.dist.device)
        return clip.encode_text(tokens)  # (M, D)

    @torch.no_grad()
    def _attribute_captions(self, clip: CLIP, lang: str) -> tuple[Tensor, Tensor]:
        """Embeddings (M, D) of every full-attribute caption (template 0) and their (class, size, brightness,
        direction) rows (M, 4), direction -1 for non-shoes."""
        rows, texts = [], []
        for c, s, b in product(range(10), range(len(SIZES)), range(len(BRIGHTNESS))):
            for d in (range(len(DIRECTIONS)) if c in SHOE_CLASSES else (-1,)):
                words = {"size": SIZES[s], "brightness": BRIGHTNESS[b], "direction": DIRECTIONS[d] if d >= 0 else None}
                rows.append((c, s, b, d))
                texts.append(make_caption(c, words, lang, 0))
        return self._prompt_embeddings(clip, texts), torch.tensor(rows, device=self.dist.device)

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        clip = _unwrap(model)
        was_training = clip.training
        clip.eval()
        ts, dev, bs = self.test_set, self.dist.device, self.cfg.data.eval_batch_size
        loss_sum, correct, image_emb = 0.0, 0, []
        for i in range(0, len(ts), bs):
            images = ts.images[i: i + bs].to(dev).float() / 255.0
            loss, c = self._loss(clip, images, self.test_table[i: i + bs].to(dev))
            loss_sum, correct = loss_sum + float(loss) * len(images), correct + int(c)
            image_emb.append(clip.encode_image(images))
        emb = torch.cat(image_emb)  # (N, D)
        labels = ts.labels.to(dev)
        truth = ts.keys.to(dev)  # (N, 4): class, size, brightness, direction of each image
        held = ts.held_out.to(dev)
        out = {"test_loss": loss_sum / len(ts), "test_retrieval_acc": correct / len(ts)}
        for lang in self.langs:
            pred = (emb @ self._prompt_embeddings(clip, class_prompts(lang)).t()).argmax(1)  # (N,) zero-shot
            out[f"test_zeroshot_acc_{lang}"] = float((pred == labels).float().mean())
            caps, rows = self._attribute_captions(clip, lang)
            sim = (emb @ caps.t()).masked_fill(rows[None, :, 0] != labels[:, None], float("-inf"))  # own class only
            hit = (rows[sim.argmax(1)] == truth).all(1)  # (N,) the best caption states the measured attributes
            out[f"test_attr_acc_{lang}"] = float(hit.float().mean())
            out[f"test_heldout_attr_acc_{lang}"] = float(hit[held].float().mean()) if held.any() else float("nan")
        for k in ("zeroshot_acc", "attr_acc", "heldout_attr_acc"):
            out[f"test_{k}"] = sum(out[f"test_{k}_{lg}"] for lg in self.langs) / len(self.langs)
        clip.train(was_training)
        return out

    def metadata(self) -> dict[str, Any]:
        return {"task": self.name, "model": {"name": self.cfg.model.name, "args": self.model_args()},
                "tokenizer": self.tok.to_dict(), "data": asdict(self.cfg.data)}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "tokenizer": self.tok.fingerprint()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        want = state.get("tokenizer")
        if want and want != self.tok.fingerprint():
            raise TokenizerMismatchError(f"cannot resume: the run was trained with tokenizer {want} but this task "
                                         f"built {self.tok.fingerprint()}; resume with the run's own tokenizer")
        super().load_state_dict(state)


# ------------------------------------------------------------------------------------------ using a run
def load_clip(run: str | Path, which: str = "best", *, device: str | torch.device = "cpu"
              ) -> tuple[CLIP, Tokenizer]:
    """The CLIP of a ``dalle_clip`` run directory, checkpoint directory or ``.safetensors`` file (``which``:
    "best", "final" or "last"; "best" falls back to "final"), in eval mode, and its caption tokenizer."""
    from paperzoo.train import checkpoint as ckpt
    from paperzoo.weights import load_state_dict_checked

    weights = ckpt.find_weights(run, which)
    meta = ckpt.read_meta(weights)
    if meta.get("task") != "dalle_clip" or "tokenizer" not in meta:
        raise ValueError(f"{weights} is not a paperzoo dalle_clip checkpoint (task={meta.get('task')!r})")
    model = create_clip(meta["model"]["name"], **meta["model"]["args"])
    load_state_dict_checked(model, ckpt.read_weights(weights), what=str(weights))
    return model.to(device).eval(), tokenizer_from_dict(meta["tokenizer"])


def rerank_prompt(clip: CLIP, tokenizer: Tokenizer, images: Tensor, prompt: str) -> Tensor:
    """Indices (N,) of ``images`` (N, 1, 28, 28) in [0, 1], best match of ``prompt`` first (DALL-E Sec. 2.5)."""
    device = next(clip.parameters()).device
    tokens = tokenize_captions(tokenizer, [prompt], clip.cfg.context_length).to(device)  # (1, L)
    return rerank(clip, images.to(device), tokens)
