"""Training DALL-E's Transformer (stage 2) as a :class:`paperzoo.train.task.Task`: ``task: dalle``.

Ramesh et al., "Zero-Shot Text-to-Image Generation", arXiv:2102.12092, Sec. 2.2: the dVAE of stage 1 is frozen
and turns every image into its grid of codes once; the Transformer (:mod:`.transformer`) then learns the joint
distribution of [caption tokens ; image codes] by maximum likelihood.

* Data: :class:`~.captions.CaptionedFashionMNIST` (English / Korean captions of each image's class and measured
  properties), its images tokenised with ``data.vae_run``'s dVAE (:func:`~.vae_task.tokenize_images`; argmax
  codes, as the paper encodes its training images) once when the task is built, optionally cached on disk
  (``data.token_cache``: a file keyed by the dVAE's weights and the images). Captions are encoded with the
  SentencePiece BPE of :func:`~.captions.build_caption_tokenizer`, truncated / padded to ``data.text_len``.
* ``data.both_directions``: each epoch about half of the items (drawn per epoch and item) are trained image
  first, so the model also captions.
* The loader's order and directions are functions of (seed, epoch), its position is checkpointed: a run resumes
  exactly. The tokenizer is saved in every checkpoint's metadata and a resumed run reuses it.
* Evaluation on the first ``data.test_subset`` test items: ``test_loss`` (primary: the text-first loss, 1/8 text
  + 7/8 image), ``test_loss_text``, ``test_loss_image`` (per-token cross-entropy of each kind, text first),
  ``test_caption_loss`` (the text's cross-entropy image first), and ``test_caption_acc``: the share of the first
  ``data.caption_eval`` test images whose greedy caption names their class (:func:`~.captions.caption_class`).

Using a run: :func:`load_dalle`, :func:`generate` (prompt -> images) and :func:`caption_images` (images -> text).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn
from torch import Tensor

from paperzoo.data.cursor import ResumableLoader
from paperzoo.data.loader import derive_seed
from paperzoo.train.config import (
    ConfigError,
    ModelConfig,
    OptimConfig,
    RunConfig,
    SchedConfig,
    TrainConfig,
    check_fields,
)
from paperzoo.train.distributed import DistInfo, all_reduce_sum
from paperzoo.train.task import Task, register_task

from .transformer import DALLE, DALLEConfig

__all__ = ["DALLEDataConfig", "DALLETaskConfig", "PairLoader", "DALLETask", "encode_captions", "load_dalle",
           "generate", "caption_images"]


@dataclass
class DALLEDataConfig:
    vae_run: str | None = None  # the dalle_vae run (or checkpoint / .safetensors) whose dVAE tokenises the images
    vae_which: Literal["best", "final", "last"] = "best"
    root: str | None = None  # Fashion-MNIST directory (None: paperzoo's search path)
    lang: Literal["en", "ko", "both"] = "both"  # caption language(s)
    caption_seed: int = 0  # seeds each item's caption (and the mirroring of shoes)
    plain: float = 0.15  # share of captions naming the class only
    partial: float = 0.15  # share dropping one attribute
    tokenizer_vocab: int = 512
    text_len: int = 16  # text positions (the longest template caption is 13 BPE tokens at vocabulary 512)
    both_directions: bool = True  # train about half of the items image first (captioning)
    batch_size: int = 64
    eval_batch_size: int = 500
    train_subset: int | None = None  # the first N training / test items only
    test_subset: int | None = 2000
    caption_eval: int = 500  # test images captioned greedily per evaluation for test_caption_acc (0: off)
    token_cache: str | None = None  # a file caching the image codes across runs and resumes (None: recompute)

    def __post_init__(self) -> None:
        check_fields(self, "data", tokenizer_vocab="count", text_len="count", batch_size="count",
                     eval_batch_size="count", train_subset="count", test_subset="count",
                     caption_eval="non_negative", plain="probability", partial="probability")


@dataclass
class DALLETaskConfig:
    task: Literal["dalle"] = "dalle"
    #: ``name: dalle``; ``args``: :class:`~.transformer.DALLEConfig` fields (n_layer, n_embd, mask_pattern, ...)
    model: ModelConfig = field(default_factory=lambda: ModelConfig(name="dalle"))
    data: DALLEDataConfig = field(default_factory=DALLEDataConfig)
    # the paper (App. B.2): AdamW, betas (0.9, 0.96), weight decay 4.5e-2, lr 4.5e-4 with a cosine decay
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(name="adamw", lr=4.5e-4, weight_decay=4.5e-2))
    sched: SchedConfig = field(default_factory=SchedConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)


# ------------------------------------------------------------------------------------------------ data
def encode_captions(tokenizer: Any, captions: Sequence[str], text_len: int, *, strict: bool = False) -> Tensor:
    """Captions -> (N, text_len) int64 BPE ids, padded with the tokenizer's pad id (the model's per-position pad
    tokens); longer captions are cut to ``text_len`` tokens, or refused with ``strict`` (a user's prompt)."""
    out = torch.full((len(captions), text_len), tokenizer.pad_id, dtype=torch.long)
    for i, caption in enumerate(captions):
        ids = tokenizer.encode(caption)
        if strict and len(ids) > text_len:
            raise ValueError(f"{caption!r} is {len(ids)} tokens long; the model reads at most {text_len}")
        ids = ids[:text_len]
        out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def image_codes(vae: nn.Module, vae_file: Path, images: Tensor, cache: str | None) -> Tensor:
    """The dVAE's codes (N, h, w) of uint8 images (N, 1, 28, 28), read from / written to ``cache`` (a dict keyed
    by the digests of the weights file and the images) when it is set."""
    from .vae_task import tokenize_images

    key = f"{_sha256(vae_file.read_bytes())}-{_sha256(images.numpy().tobytes())}"
    stored: dict[str, Tensor] = {}
    if cache and Path(cache).is_file():
        stored = torch.load(cache, weights_only=True)
        if key in stored:
            return stored[key]
    codes = tokenize_images(vae, images)
    if cache:
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        torch.save({**stored, key: codes}, cache)
    return codes


class PairLoader(ResumableLoader):
    """Batches ``(text (B, L), codes (B, h, w), image_first (B,) bool)`` of in-memory pairs, resumable.

    Epoch e's order and directions come from a generator seeded by (seed, e): rank r of ``world_size`` takes every
    ``world_size``-th item of each global batch of ``batch_size * world_size``; the incomplete tail is dropped.
    """

    def __init__(self, text: Tensor, codes: Tensor, batch_size: int, *, seed: int, both_directions: bool,
                 device: torch.device | str = "cpu", rank: int = 0, world_size: int = 1) -> None:
        super().__init__(seed)
        if len(text) != len(codes) or len(text) < batch_size * world_size:
            raise ValueError(f"need as many captions as images, at least one batch of {batch_size * world_size}; "
                             f"got {len(text)} and {len(codes)}")
        self.text, self.codes, self.batch_size, self.both = text, codes, batch_size, both_directions
        self.device, self.rank, self.world = torch.device(device), rank, world_size

    def __len__(self) -> int:
        return len(self.text) // (self.batch_size * self.world)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        n, per = len(self.text), self.batch_size * self.world
        g = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch))
        order = torch.randperm(n, generator=g)
        first = torch.rand(n, generator=g) < 0.5 if self.both else torch.zeros(n, dtype=torch.bool)
        for i in self.cursor.positions(len(self)):
            idx = order[i * per: (i + 1) * per][self.rank:: self.world]
            yield self.text[idx].to(self.device), self.codes[idx].to(self.device), first[idx].to(self.device)


# ------------------------------------------------------------------------------------------------ the task
@register_task
class DALLETask(Task):
    """Train the DALL-E Transformer on dVAE codes of captioned Fashion-MNIST (see the module docstring)."""

    name, config_type = "dalle", DALLETaskConfig
    primary_metric, higher_is_better = "test_loss", False
    resume_command = "paperzoo dalle train"

    def __init__(self, cfg: DALLETaskConfig, dist: DistInfo | None = None, *, tokenizer: Any = None) -> None:
        from paperzoo.train.checkpoint import find_weights

        from .captions import CaptionedFashionMNIST, build_caption_tokenizer
        from .vae_task import load_dvae

        self.cfg, self.dist = cfg, dist or DistInfo()
        d, world = cfg.data, self.dist.world_size
        if not d.vae_run:
            raise ConfigError("data.vae_run: give the dalle_vae run whose dVAE tokenises the images "
                              "(data.vae_run=RUN_DIR)")
        if cfg.model.name != "dalle":
            raise ValueError(f"model.name must be 'dalle' for task dalle, got {cfg.model.name!r}")
        if d.batch_size % world:
            raise ValueError(f"data.batch_size={d.batch_size} is not divisible by the {world} DDP processes")
        self.tokenizer = tokenizer if tokenizer is not None else build_caption_tokenizer(d.tokenizer_vocab)
        self.vae_file = find_weights(d.vae_run, d.vae_which)
        vae = load_dvae(self.vae_file)
        self.grid, self.image_vocab = tuple(vae.grid), int(vae.vocab_size)
        kw = dict(lang=d.lang, seed=d.caption_seed, plain=d.plain, partial=d.partial, root=d.root)
        train = CaptionedFashionMNIST("train", n=d.train_subset, **kw)
        test = CaptionedFashionMNIST("test", n=d.test_subset, **kw)
        self.test_text = self._encode(test.captions)[self.dist.rank:: world]
        self.test_codes = image_codes(vae, self.vae_file, test.images, d.token_cache)[self.dist.rank:: world]
        self.test_labels = test.labels[self.dist.rank:: world]
        self.train_loader = PairLoader(self._encode(train.captions),
                                       image_codes(vae, self.vae_file, train.images, d.token_cache),
                                       d.batch_size // world, seed=cfg.train.seed, both_directions=d.both_directions,
                                       device=self.dist.device, rank=self.dist.rank, world_size=world)

    def _encode(self, captions: Sequence[str]) -> Tensor:
        """(N, text_len) ids; a caption longer than text_len is a config error (cut, it could lose its class)."""
        d = self.cfg.data
        try:
            return encode_captions(self.tokenizer, captions, d.text_len, strict=True)
        except ValueError as e:
            raise ConfigError(f"data.text_len={d.text_len} is too short at data.tokenizer_vocab="
                              f"{d.tokenizer_vocab}: {e}") from None

    @classmethod
    def from_config(cls, cfg: DALLETaskConfig, dist: Any = None, *,
                    resume_meta: dict[str, Any] | None = None) -> DALLETask:
        """The task of ``cfg``; resuming, with the run's own tokenizer (saved in its checkpoint's metadata)."""
        from paperzoo.text.tokenizers import tokenizer_from_dict

        tok = resume_meta.get("tokenizer") if resume_meta is not None else None
        return cls(cfg, dist, tokenizer=tokenizer_from_dict(tok) if tok else None)

    # ---- the Task interface
    def model_args(self) -> dict[str, Any]:
        args = {"text_len": self.cfg.data.text_len, "text_vocab": self.tokenizer.vocab_size,
                "text_pad_id": self.tokenizer.pad_id, "image_vocab": self.image_vocab, "grid": list(self.grid),
                **self.cfg.model.args}
        return asdict(_dalle_config(args))

    def build_model(self) -> nn.Module:
        return DALLE(_dalle_config(self.model_args()))

    def train_step(self, model: nn.Module, batch: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        text, codes, first = batch
        out = model(text, codes, first)
        n = torch.tensor(text.shape[0], device=text.device)
        # the logger divides every sum by count: weight each loss by the batch size so it logs the mean
        return out["loss"], {"count": n, "loss_text": out["loss_text"].detach() * n,
                             "loss_image": out["loss_image"].detach() * n}

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        model = getattr(model, "module", model)
        was_training = model.training
        model.eval()
        sums = torch.cat([self._loss_sums(model), self._caption_hits(model)])
        model.train(was_training)
        sums = all_reduce_sum(sums.to(self.dist.device), self.dist).cpu()  # over DDP ranks
        out = {f"test_{k}": float(sums[j] / sums[4]) for j, k in enumerate(("loss", "loss_text", "loss_image",
                                                                             "caption_loss"))}
        if sums[6] > 0:
            out["test_caption_acc"] = float(sums[5] / sums[6])
        return out

    def _loss_sums(self, model: DALLE) -> Tensor:
        """Sums over this rank's test items of (loss, loss_text, loss_image) text first, loss_text image first;
        and the item count."""
        sums, b, dev = torch.zeros(5, dtype=torch.float64), self.cfg.data.eval_batch_size, self.dist.device
        for i in range(0, len(self.test_text), b):
            text, codes = self.test_text[i: i + b].to(dev), self.test_codes[i: i + b].to(dev)
            fwd, back = model(text, codes, "text"), model(text, codes, "image")
            losses = torch.stack([fwd["loss"], fwd["loss_text"], fwd["loss_image"], back["loss_text"]])
            sums[:4] += losses.double().cpu() * len(text)
            sums[4] += len(text)
        return sums

    def _caption_hits(self, model: DALLE) -> Tensor:
        """(greedy captions naming the item's class, captions made) over the first ``data.caption_eval`` items."""
        from .captions import caption_class

        k, b, hits = min(self.cfg.data.caption_eval, len(self.test_codes)), self.cfg.data.eval_batch_size, 0
        for i in range(0, k, b):
            ids = model.caption(self.test_codes[i: min(i + b, k)].to(self.dist.device)).cpu()
            named = [caption_class(self.tokenizer.decode(row)) for row in ids.tolist()]
            hits += sum(int(c == int(y)) for c, y in zip(named, self.test_labels[i: i + len(named)]))
        return torch.tensor([hits, k], dtype=torch.float64)

    def metadata(self) -> dict[str, Any]:
        return {"task": self.name, "model": {"name": "dalle", "args": self.model_args()},
                "tokenizer": self.tokenizer.to_dict(), "vae": {"weights": str(self.vae_file.resolve())},
                "data": asdict(self.cfg.data)}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "tokenizer": self.tokenizer.fingerprint()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from paperzoo.text.tokenizers import TokenizerMismatchError

        if state.get("tokenizer", self.tokenizer.fingerprint()) != self.tokenizer.fingerprint():
            raise TokenizerMismatchError(f"cannot resume: the run was trained with tokenizer {state['tokenizer']} "
                                         f"but this task built {self.tokenizer.fingerprint()}")
        super().load_state_dict(state)


def _dalle_config(args: dict[str, Any]) -> DALLEConfig:
    try:
        return DALLEConfig(**args)
    except TypeError as e:  # a field DALLEConfig does not have
        raise ValueError(f"model.args do not fit DALLEConfig: {e}") from None


# ------------------------------------------------------------------------------------------------ using a run
def load_dalle(path: str | Path, which: str = "best", *, device: str | torch.device = "cpu"
               ) -> tuple[DALLE, Any, dict[str, Any]]:
    """(model in eval mode, caption tokenizer, metadata) of a ``dalle`` run directory, checkpoint directory or
    ``.safetensors`` file (``which``: "best", "final" or "last"; "best" falls back to "final")."""
    from paperzoo.text.tokenizers import tokenizer_from_dict
    from paperzoo.train import checkpoint as ckpt
    from paperzoo.weights import load_state_dict_checked

    weights = ckpt.find_weights(path, which)
    meta = ckpt.read_meta(weights)
    if meta.get("task") != DALLETask.name:
        raise ValueError(f"{weights} is not a paperzoo dalle checkpoint (task={meta.get('task')!r})")
    model = DALLE(_dalle_config(meta["model"]["args"]))
    load_state_dict_checked(model, ckpt.read_weights(weights), what=str(weights))
    return model.to(device).eval(), tokenizer_from_dict(meta["tokenizer"]), meta


def _load_vae(meta: dict[str, Any], device: str | torch.device) -> nn.Module:
    from .vae_task import load_dvae

    path = Path(meta["vae"]["weights"])
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the dVAE this dalle run was trained with is gone (moved or deleted)")
    return load_dvae(path, device=device)


def generate(run: str | Path, prompt: str, n: int, *, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, seed: int = 0, which: str = "best", device: str | torch.device = "cpu",
             batch: int = 256) -> Tensor:
    """``n`` images (n, 1, 28, 28) in [0, 1] for ``prompt``: codes sampled by the run's Transformer (KV-cached,
    ``batch`` sequences at a time, seeded by ``seed``), decoded by its dVAE."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    model, tok, meta = load_dalle(run, which, device=device)
    vae = _load_vae(meta, device)
    text = encode_captions(tok, [prompt], model.cfg.text_len, strict=True).to(device)  # (1, L)
    g = torch.Generator(device).manual_seed(seed)
    out = []
    with torch.no_grad():
        for i in range(0, n, batch):
            rows = text.expand(min(batch, n - i), -1)
            codes = model.generate_images(rows, temperature=temperature, top_k=top_k, top_p=top_p, generator=g)
            out.append(vae.decode(codes).cpu())  # (b, 1, 28, 28) in [0, 1]
    return torch.cat(out)


def caption_images(run: str | Path, images: Tensor, *, which: str = "best", device: str | torch.device = "cpu",
                   batch: int = 256) -> list[str]:
    """Greedy captions of images (N, 1, 28, 28) in [0, 1]: the run's dVAE codes, then the Transformer image first."""
    from .vae_task import tokenize_images

    model, tok, meta = load_dalle(run, which, device=device)
    codes = tokenize_images(_load_vae(meta, device), images)  # (N, h, w)
    texts: list[str] = []
    for i in range(0, len(codes), batch):
        ids = model.caption(codes[i: i + batch].to(device)).cpu()
        texts += [tok.decode(row) for row in ids.tolist()]
    return texts
