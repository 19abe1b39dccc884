"""Translation and language modelling as tasks of the shared trainer (:func:`paperzoo.train.trainer.fit`).

The trainer owns the loop, run directories, checkpoints, resume, logging and progress bars; these classes only
supply data, the loss of a batch and an evaluation (the :class:`~paperzoo.train.task.Task` interface). A text
config says which in its ``task`` field (``translation`` / ``language_model``), and trains through the same
``paperzoo.train`` / ``resolve_config`` path as the image recipes.

* :class:`TranslationTask`: teacher-forced cross-entropy (padding ignored, optional label smoothing); after each
  epoch the validation loss, token accuracy, and, by decoding the validation sentences, exact match, sacreBLEU
  and chrF. The best checkpoint is chosen on ``val_exact_match``.
* :class:`LanguageModelTask`: next-token cross-entropy over windows; validation loss and perplexity (best =
  lowest ``val_loss``).

Both tasks log "train_acc" as the token accuracy and, through ``throughput_unit = "tok"``, "tok_per_s" as the
(target) tokens per second; ``resume_command`` makes the trainer's hints and ``status.json`` name
``paperzoo translate train --resume RUN`` / ``paperzoo lm train --resume RUN``. The tokenizers are
stored in every checkpoint's metadata: a resumed run reuses them (:meth:`TranslationTask.from_config`), and a
loaded checkpoint is checked against them (:class:`~paperzoo.text.tokenizers.TokenizerMismatchError`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from paperzoo.train.task import Task, register_task

from .config import DecodeConfig, TextConfig, text_config_from_dict
from .data import LengthBatchLoader, LMCorpus, LMLoader, ParallelDataset, pad_sequences, read_parallel
from .metrics import perplexity, translation_metrics
from .tokenizers import (
    Tokenizer,
    TokenizerMismatchError,
    build_tokenizer,
    check_same_tokenizer,
    load_tokenizer,
    tokenizer_from_dict,
)

__all__ = ["TranslationTask", "LanguageModelTask", "load_text_checkpoint", "translate", "TextCheckpoint",
           "train_translation", "train_lm", "load_translation_pairs"]


def _dist(dist: Any) -> Any:
    from paperzoo.train.distributed import DistInfo

    return dist or DistInfo()


def _split_val(pairs: list[tuple[str, str]], fraction: float, seed: int) -> tuple[list, list]:
    idx = list(range(len(pairs)))
    random.Random(seed).shuffle(idx)
    n_val = max(1, int(len(pairs) * fraction))
    val = set(idx[:n_val])
    return [p for i, p in enumerate(pairs) if i not in val], [pairs[i] for i in sorted(val)]


def load_translation_pairs(cfg: TextConfig) -> dict[str, list[tuple[str, str]]]:
    """The train / val (/ test) pairs a config describes."""
    d = cfg.data
    if d.dataset == "builtin":
        from .tasks_builtin import make_builtin_pairs

        s = make_builtin_pairs(d.lang, n_train=d.n_train, n_val=d.n_val, n_test=d.n_test, max_number=d.max_number,
                               p_date=d.p_date, seed=d.task_seed)
        return {"train": s.train, "val": s.val, "test": s.test}
    if d.dataset == "text":
        raise ValueError("data.dataset='text' is a language-model corpus; translation needs builtin, tsv or files")

    def read(a: str | None, b: str | None) -> list[tuple[str, str]] | None:
        if a is None:
            return None
        if d.dataset == "tsv":
            return read_parallel(a, on_empty=d.on_empty)
        if b is None:
            raise ValueError(f"dataset 'files' needs the target file aligned with {a}")
        return read_parallel(src=a, tgt=b, on_empty=d.on_empty)

    out = {"train": read(d.train, d.train_tgt)}
    val = read(d.val, d.val_tgt)
    if val is None:
        out["train"], val = _split_val(out["train"], d.val_fraction, d.task_seed)
    out["val"] = val
    test = read(d.test, d.test_tgt)
    if test is not None:
        out["test"] = test
    return out


def _tokenizers(cfg: TextConfig, train: list[tuple[str, str]]) -> tuple[Tokenizer, Tokenizer]:
    t = cfg.tokenizer
    if t.path:
        tok = load_tokenizer(t.path)
        return tok, tok
    srcs, tgts = [s for s, _ in train], [x for _, x in train]
    if t.shared:
        if t.tgt_kind not in (None, t.kind):
            raise ValueError("tokenizer.shared uses one tokenizer: leave tokenizer.tgt_kind unset")
        tok = build_tokenizer(t.kind, srcs + tgts, vocab_size=t.vocab_size)
        return tok, tok
    return (build_tokenizer(t.kind, srcs, vocab_size=t.vocab_size),
            build_tokenizer(t.tgt_kind or t.kind, tgts, vocab_size=t.vocab_size))


def decode_kwargs(d: DecodeConfig) -> dict[str, Any]:
    return {"method": d.method, "beam_size": d.beam_size, "length_penalty": d.length_penalty, "max_len": d.max_len,
            "temperature": d.temperature, "top_k": d.top_k, "top_p": d.top_p}


@torch.no_grad()
def translate(model: nn.Module, sentences: Sequence[str], src_tok: Tokenizer, tgt_tok: Tokenizer, *,
              batch_size: int = 256, max_src_len: int | None = None, device: torch.device | str | None = None,
              **decode: Any) -> list[str]:
    """Translate ``sentences`` (detokenized strings in, strings out) with greedy / beam / sampling decoding.

    Sentences are decoded in length-sorted batches (less padding) and returned in input order. Sources longer
    than ``max_src_len`` tokens are truncated (keeping EOS). ``decode`` goes to :func:`paperzoo.generate.generate`
    (``method``, ``beam_size``, ``length_penalty``, ``max_len``, ``temperature``, ``top_k``, ``top_p``).
    """
    from paperzoo.generate import generate

    device = torch.device(device) if device is not None else next(model.parameters()).device
    enc = [src_tok.encode(s, add_eos=True) for s in sentences]
    if max_src_len:
        enc = [e if len(e) <= max_src_len else e[: max_src_len - 1] + [src_tok.eos_id] for e in enc]
    order = sorted(range(len(enc)), key=lambda i: len(enc[i]))
    out: list[str] = [""] * len(enc)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        src, lengths = pad_sequences([enc[i] for i in idx], src_tok.pad_id)
        res = generate(model, src.to(device), lengths.to(device), bos_id=tgt_tok.bos_id, eos_id=tgt_tok.eos_id,
                       pad_id=tgt_tok.pad_id, **decode)
        tokens = res.tokens[:, 0] if hasattr(res, "tokens") else res  # beam search: the best hypothesis
        for i, row in zip(idx, tokens.tolist()):
            out[i] = tgt_tok.decode(row)
    return out


class _TextTask(Task):
    """What the two text tasks share: their config type and its validation."""

    config_type = TextConfig
    throughput_unit = "tok"  # train_step's "count" is (target) tokens, padding excluded: logged as tok_per_s

    @classmethod
    def config_from_dict(cls, data: dict[str, Any]) -> TextConfig:
        return text_config_from_dict(data)


@register_task
class TranslationTask(_TextTask):
    """Sequence-to-sequence translation on a registered encoder-decoder model (see the module docstring)."""

    name = "translation"
    primary_metric = "val_exact_match"
    higher_is_better = True
    resume_command = "paperzoo translate train"

    def __init__(self, cfg: TextConfig, dist: Any = None, *, tokenizers: tuple[Tokenizer, Tokenizer] | None = None,
                 pairs: dict[str, list[tuple[str, str]]] | None = None) -> None:
        self.cfg, self.dist = cfg, _dist(dist)
        d = cfg.data
        self.pairs = pairs if pairs is not None else load_translation_pairs(cfg)
        self.src_tok, self.tgt_tok = tokenizers if tokenizers is not None else _tokenizers(cfg, self.pairs["train"])
        kw = dict(max_len=d.max_len, overlong=d.overlong)
        self.train_data = ParallelDataset(self.pairs["train"], self.src_tok, self.tgt_tok, **kw)
        self.val_data = ParallelDataset(self.pairs["val"], self.src_tok, self.tgt_tok, **kw)
        world, rank = self.dist.world_size, self.dist.rank
        self.train_loader = LengthBatchLoader(self.train_data, d.batch_size // world, seed=cfg.train.seed,
                                              device=self.dist.device, rank=rank, world_size=world)
        self._val_loader = LengthBatchLoader(self.val_data, d.eval_batch_size, shuffle=False, device=self.dist.device)

    @classmethod
    def from_config(cls, cfg: TextConfig, dist: Any = None, *,
                    resume_meta: dict[str, Any] | None = None) -> TranslationTask:
        """The task of ``cfg``; resuming, with the run's own tokenizers (saved in its checkpoint's metadata)."""
        toks = resume_meta["tokenizers"] if resume_meta is not None else None
        return cls(cfg, dist, tokenizers=(tokenizer_from_dict(toks["src"]), tokenizer_from_dict(toks["tgt"]))
                   if toks else None)

    # ---- the Task interface
    def model_args(self) -> dict[str, Any]:
        return {"src_vocab_size": self.src_tok.vocab_size, "tgt_vocab_size": self.tgt_tok.vocab_size,
                **self.cfg.model.args}

    def build_model(self) -> nn.Module:
        from paperzoo.registry import create_model

        return create_model(self.cfg.model.name, **self.model_args())

    def _loss(self, model: nn.Module, b: Any, smoothing: float) -> tuple[Tensor, Tensor, Tensor]:
        logits = model(b.src, b.tgt_in)  # (B, T, V)
        flat = logits.float().flatten(0, 1)  # (B*T, V)
        target = b.tgt_out.flatten()
        loss = F.cross_entropy(flat, target, ignore_index=self.tgt_tok.pad_id, label_smoothing=smoothing)
        real = target != self.tgt_tok.pad_id
        correct = ((flat.argmax(-1) == target) & real).sum()
        return loss, correct, real.sum()

    def train_step(self, model: nn.Module, batch: Any) -> tuple[Tensor, dict[str, Tensor]]:
        loss, correct, count = self._loss(model, batch, self.cfg.loss.smoothing)
        return loss, {"correct": correct, "count": count}

    def translate(self, model: nn.Module, sentences: Sequence[str], **decode: Any) -> list[str]:
        kw = {**decode_kwargs(self.cfg.decode), **decode}
        return translate(model, sentences, self.src_tok, self.tgt_tok, batch_size=self.cfg.data.eval_batch_size,
                         max_src_len=self.cfg.data.max_len, **kw)

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        was_training = model.training
        model.eval()
        nll, correct, count = 0.0, 0, 0
        for b in self._val_loader:
            loss, c, n = self._loss(model, b, 0.0)
            nll, correct, count = nll + float(loss) * int(n), correct + int(c), count + int(n)
        pairs = self.val_data.pairs[: self.cfg.data.val_decode] if self.cfg.data.val_decode else self.val_data.pairs
        hyps = self.translate(model, [s for s, _ in pairs])
        model.train(was_training)
        m = translation_metrics(hyps, [t for _, t in pairs])
        return {"val_loss": nll / count, "val_ppl": perplexity(nll, count), "val_token_acc": correct / count,
                **{f"val_{k}": v for k, v in m.items()}}

    def metadata(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {"task": "translation", "model": {"name": self.cfg.model.name, "args": self.model_args()},
                "tokenizers": {"src": self.src_tok.to_dict(), "tgt": self.tgt_tok.to_dict()},
                "data": asdict(self.cfg.data), "decode": asdict(self.cfg.decode)}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "tokenizers": [self.src_tok.fingerprint(), self.tgt_tok.fingerprint()]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        want = list(state.get("tokenizers", []))
        have = [self.src_tok.fingerprint(), self.tgt_tok.fingerprint()]
        if want and want != have:
            raise TokenizerMismatchError(f"cannot resume: the run was trained with tokenizers {want} (fingerprints) "
                                         f"but this task built {have}; resume with the run's own tokenizers")
        super().load_state_dict(state)


@register_task
class LanguageModelTask(_TextTask):
    """Next-token prediction on a text file with a registered decoder-only model (e.g. ``gpt_char_small``)."""

    name = "language_model"
    primary_metric = "val_loss"
    higher_is_better = False
    resume_command = "paperzoo lm train"

    def __init__(self, cfg: TextConfig, dist: Any = None, *, tokenizer: Tokenizer | None = None) -> None:
        from .data import read_lines

        self.cfg, self.dist = cfg, _dist(dist)
        d = cfg.data
        if d.dataset != "text" or not d.train:
            raise ValueError("language modelling needs data.dataset='text' and data.train=PATH (any text file)")
        text = "\n".join(read_lines(d.train)) + "\n"
        if tokenizer is None:
            if cfg.tokenizer.path:
                tokenizer = load_tokenizer(cfg.tokenizer.path)
            else:
                head = text[: int(len(text) * (1 - d.val_fraction))]  # built on the training part only
                lines = head.splitlines(keepends=True) if cfg.tokenizer.kind == "char" else head.splitlines()
                tokenizer = build_tokenizer(cfg.tokenizer.kind, lines, vocab_size=cfg.tokenizer.vocab_size)
        self.tok = tokenizer
        self.corpus = LMCorpus(text, tokenizer, val_fraction=d.val_fraction)
        world, rank = self.dist.world_size, self.dist.rank
        self.train_loader = LMLoader(self.corpus.train, d.block_size, d.batch_size // world, seed=cfg.train.seed,
                                     device=self.dist.device, rank=rank, world_size=world)
        self._val_loader = LMLoader(self.corpus.val, d.block_size, d.eval_batch_size, shuffle=False,
                                    device=self.dist.device)

    @classmethod
    def from_config(cls, cfg: TextConfig, dist: Any = None, *,
                    resume_meta: dict[str, Any] | None = None) -> LanguageModelTask:
        """The task of ``cfg``; resuming, with the run's own tokenizer (saved in its checkpoint's metadata)."""
        tok = resume_meta["tokenizers"]["lm"] if resume_meta is not None else None
        return cls(cfg, dist, tokenizer=tokenizer_from_dict(tok) if tok else None)

    # ---- the Task interface
    def model_args(self) -> dict[str, Any]:
        return {"vocab_size": self.tok.vocab_size, "block_size": self.cfg.data.block_size, **self.cfg.model.args}

    def build_model(self) -> nn.Module:
        from paperzoo.registry import create_model

        return create_model(self.cfg.model.name, **self.model_args())

    def train_step(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        x, y = batch
        logits = model(x)  # (B, T, V)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=-100)
        correct = (logits.argmax(-1) == y).sum()
        return loss, {"correct": correct, "count": torch.tensor(y.numel(), device=y.device)}

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        was_training = model.training
        model.eval()
        nll, n = 0.0, 0
        for i, (x, y) in enumerate(self._val_loader):
            if self.cfg.data.val_batches and i >= self.cfg.data.val_batches:
                break
            logits = model(x).float()
            nll += float(F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100, reduction="sum"))
            n += int((y != -100).sum())
        model.train(was_training)
        return {"val_loss": nll / n, "val_ppl": perplexity(nll, n), "val_tokens": float(n)}

    def metadata(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {"task": "language_model", "model": {"name": self.cfg.model.name, "args": self.model_args()},
                "tokenizers": {"lm": self.tok.to_dict()}, "data": asdict(self.cfg.data)}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "tokenizers": [self.tok.fingerprint()]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        want = list(state.get("tokenizers", []))
        if want and want != [self.tok.fingerprint()]:
            raise TokenizerMismatchError(f"cannot resume: the run was trained with tokenizer {want[0]} but this "
                                         f"task built {self.tok.fingerprint()}")
        super().load_state_dict(state)


class TextCheckpoint:
    """A loaded text checkpoint: ``model`` (eval mode), ``meta``, ``tokenizers`` ({"src","tgt"} or {"lm"})."""

    def __init__(self, model: nn.Module, meta: dict[str, Any], tokenizers: dict[str, Tokenizer], path: Path) -> None:
        self.model, self.meta, self.tokenizers, self.path = model, meta, tokenizers, path

    @property
    def task(self) -> str:
        return self.meta["task"]


def load_text_checkpoint(path: str | Path, which: str = "best", *, device: str | torch.device = "cpu",
                         tokenizer: Tokenizer | None = None) -> TextCheckpoint:
    """Rebuild the model of a translation / LM run directory, checkpoint directory or ``.safetensors`` file.

    ``which`` picks "best", "final" or "last" in a run directory ("best" falls back to "final"). A
    ``tokenizer`` given here must match the checkpoint's (else :class:`TokenizerMismatchError`).
    """
    from paperzoo.registry import create_model
    from paperzoo.train import checkpoint as ckpt
    from paperzoo.weights import load_state_dict_checked

    weights = ckpt.find_weights(path, which)
    meta = ckpt.read_meta(weights)
    if meta.get("task") not in ("translation", "language_model") or "tokenizers" not in meta:
        raise ValueError(f"{weights} is not a paperzoo translation or language-model checkpoint "
                         f"(task={meta.get('task')!r})")
    toks = {k: tokenizer_from_dict(v) for k, v in meta["tokenizers"].items()}
    if tokenizer is not None:
        for k, t in toks.items():
            check_same_tokenizer(t, tokenizer, f"{weights} ({k} side)")
    from paperzoo.deploy.quantize_text import is_int8_text_file, load_int8_text

    if is_int8_text_file(weights):  # written by `paperzoo quantize`: dynamic int8, CPU
        return load_int8_text(weights, device=device)
    model = create_model(meta["model"]["name"], **meta["model"]["args"])
    load_state_dict_checked(model, ckpt.read_weights(weights), what=str(weights))
    return TextCheckpoint(model.to(device).eval(), meta, toks, weights)


# ------------------------------------------------------------------------------------------ Python API
def train_translation(config: Any = None, *, overrides: list[str] | None = None,
                      resume: str | Path | None = None) -> Any:
    """:func:`paperzoo.train` for translation (a config without a ``task`` field is taken as one)."""
    from paperzoo.train.api import train

    return train(config, overrides=overrides, resume=resume, task="translation")


def train_lm(config: Any = None, *, overrides: list[str] | None = None, resume: str | Path | None = None) -> Any:
    """:func:`paperzoo.train` for language modelling (a config without a ``task`` field is taken as one)."""
    from paperzoo.train.api import train

    return train(config, overrides=overrides, resume=resume, task="language_model")
