"""Typed configuration of the text tasks (translation, language modelling), loaded like the image recipes.

The ``model``, ``optim``, ``sched``, ``train`` and ``run`` sections are the training toolkit's own dataclasses
(:mod:`paperzoo.train.config`), so the trainer reads them unchanged; ``data``, ``tokenizer``, ``loss`` and
``decode`` are the text tasks' sections below. Validation (unknown keys, wrong types, invalid choices) and
``section.key=value`` overrides work as for image recipes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

from paperzoo.train.config import (
    ConfigError,
    ModelConfig,
    OptimConfig,
    RunConfig,
    SchedConfig,
    TrainConfig,
    build_config,
    check_fields,
    read_config_data,
)

__all__ = ["TextDataConfig", "TokenizerConfig", "TextLossConfig", "DecodeConfig", "TextConfig",
           "load_text_config", "text_config_from_dict"]


@dataclass
class TextDataConfig:
    #: "builtin" (dates/numbers task), "tsv" (``train`` = a TSV file), "files" (``train`` + ``train_tgt``
    #: aligned files) for translation; "text" (``train`` = any text file) for language modelling.
    dataset: Literal["builtin", "tsv", "files", "text"] = "builtin"
    # -- the built-in task (paperzoo.text.tasks_builtin)
    lang: Literal["ko", "fr", "de"] = "ko"
    n_train: int = 20000
    n_val: int = 500
    n_test: int = 1000
    max_number: int = 99999
    p_date: float = 0.5
    task_seed: int = 0  # seeds the task's values, independently of train.seed
    # -- files: TSV or source files; *_tgt = the aligned target files ("files"); val/test optional
    train: str | None = None
    train_tgt: str | None = None
    val: str | None = None
    val_tgt: str | None = None
    test: str | None = None
    test_tgt: str | None = None
    val_fraction: float = 0.05  # held out of ``train`` when no ``val`` is given (LM: the file's tail)
    on_empty: Literal["skip", "error"] = "skip"  # empty source or target lines
    overlong: Literal["error", "skip", "truncate"] = "error"  # sequences longer than max_len tokens
    max_len: int = 256  # tokens per sequence, BOS/EOS included (translation)
    block_size: int = 128  # tokens per training window (language modelling)
    # -- batching
    batch_size: int = 64  # sentences (translation) or windows (LM) per micro-batch
    eval_batch_size: int = 256
    val_decode: int | None = 500  # validation sentences decoded after each epoch (None = all)
    val_batches: int | None = None  # LM: cap on validation batches per evaluation (None = all)

    def __post_init__(self) -> None:
        check_fields(self, "data", n_train="count", n_val="count", n_test="non_negative", max_number="count",
                     p_date="probability", val_fraction="open_fraction", batch_size="count",
                     eval_batch_size="count", val_decode="count", val_batches="count")
        for k in ("max_len", "block_size"):  # BOS/EOS or a context and its next token need two positions
            if not getattr(self, k) >= 2:
                raise ConfigError(f"data.{k}: must be an integer >= 2, got {getattr(self, k)}")
        if self.dataset in ("tsv", "files", "text") and not self.train:
            raise ConfigError(f"data.train: dataset {self.dataset!r} needs a file (data.train=PATH)")
        if self.dataset == "files" and not self.train_tgt:
            raise ConfigError("data.train_tgt: dataset 'files' needs the aligned target file too")


@dataclass
class TokenizerConfig:
    kind: Literal["char", "bpe", "unigram"] = "char"
    tgt_kind: Literal["char", "bpe", "unigram"] | None = None  # target side, if different from ``kind``
    vocab_size: int = 1000  # bpe / unigram (byte fallback needs > 260 + distinct characters)
    shared: bool = False  # one tokenizer for source and target (needed for model.args.share_embeddings)
    path: str | None = None  # use a saved tokenizer (JSON or .model) instead of training one (both sides)

    def __post_init__(self) -> None:
        check_fields(self, "tokenizer", vocab_size="count")


@dataclass
class TextLossConfig:
    smoothing: float = 0.0  # label smoothing ε_ls (Vaswani et al. Sec. 5.4 use 0.1)

    def __post_init__(self) -> None:
        check_fields(self, "loss", smoothing="fraction")


@dataclass
class DecodeConfig:
    method: Literal["greedy", "beam", "sample"] = "greedy"
    beam_size: int = 4
    length_penalty: float = 0.6  # GNMT α (beam search)
    max_len: int = 128  # new tokens at most
    temperature: float = 1.0  # 0 = greedy
    top_k: int | None = None  # 0 or None = no top-k filter
    top_p: float | None = None

    def __post_init__(self) -> None:
        check_fields(self, "decode", beam_size="count", length_penalty="non_negative", max_len="count",
                     temperature="non_negative", top_k="non_negative", top_p="nucleus")


@dataclass
class TextConfig:
    task: Literal["translation", "language_model"] = "translation"  # picks the Task (paperzoo.train.task)
    model: ModelConfig = field(default_factory=lambda: ModelConfig(name="transformer_tiny"))
    data: TextDataConfig = field(default_factory=TextDataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    loss: TextLossConfig = field(default_factory=TextLossConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(name="adamw", lr=1e-3, weight_decay=0.01,
                                                                   betas=(0.9, 0.98)))
    sched: SchedConfig = field(default_factory=SchedConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)


def text_config_from_dict(data: dict | None) -> TextConfig:
    """Build and validate a :class:`TextConfig` (missing keys take their defaults; each section checks its ranges)."""
    return build_config(TextConfig, data or {})


def load_text_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> TextConfig:
    """Read a YAML recipe (or start from defaults), apply ``section.key=value`` overrides and validate."""
    return text_config_from_dict(read_config_data(path, overrides))
