"""Tokenizers: characters, or SentencePiece subwords (BPE / unigram) trained on the corpus.

Every tokenizer shares the same four special tokens at the same ids, which the sequence models use as their
defaults (``TransformerConfig.pad_id/bos_id/eos_id``):

========  ==  ===========================================================
``pad``    0  padding; never produced by ``encode``, skipped by ``decode``
``bos``    1  beginning of sequence (decoder start token)
``eos``    2  end of sequence; ``decode`` stops at the first one
``unk``    3  a character (or piece) outside the vocabulary
========  ==  ===========================================================

Round trips (tested):

* :class:`CharTokenizer`: ``decode(encode(s)) == s`` exactly for every string whose characters were seen when
  the vocabulary was built; an unseen character becomes ``unk`` and decodes to ``unk_text`` (default "⁇").
* :class:`SentencePieceTokenizer`: trained with the identity normalisation, no whitespace folding and byte
  fallback, so ``decode(encode(s)) == s`` exactly for any string, including characters never seen in training
  (they become UTF-8 byte pieces), leading, trailing and repeated spaces included. The byte pieces cost 256
  vocabulary entries, so ``vocab_size`` must exceed 260 + the distinct characters of the corpus. With
  ``byte_fallback=False`` unseen characters map to ``unk`` (decoded as " ⁇ ") and the round trip holds only
  for seen characters.

Saving: :meth:`Tokenizer.to_dict` is plain JSON (the SentencePiece model proto as base64), stored in every
checkpoint's metadata by the text tasks; :func:`tokenizer_from_dict` restores it, and :func:`check_same_tokenizer`
raises :class:`TokenizerMismatchError` naming the difference when a checkpoint and a tokenizer disagree.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["PAD_ID", "BOS_ID", "EOS_ID", "UNK_ID", "SPECIALS", "Tokenizer", "CharTokenizer",
           "SentencePieceTokenizer", "TokenizerMismatchError", "build_tokenizer", "tokenizer_from_dict",
           "load_tokenizer", "check_same_tokenizer"]

PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")


class TokenizerMismatchError(ValueError):
    """A tokenizer does not match the one a checkpoint (or a resumed run) was trained with."""


class Tokenizer:
    """Common interface: ``encode`` / ``decode`` / ``vocab_size`` / ``to_dict``; special ids as above."""

    kind = "base"
    pad_id, bos_id, eos_id, unk_id = PAD_ID, BOS_ID, EOS_ID, UNK_ID

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        ids = self._encode(text)
        return ([self.bos_id] if add_bos else []) + ids + ([self.eos_id] if add_eos else [])

    def decode(self, ids: Iterable[int], *, stop_at_eos: bool = True) -> str:
        """Text of ``ids``, skipping padding and BOS.

        ``stop_at_eos`` ends the text at the first EOS (a translation ends there); with ``False`` every EOS is
        skipped instead, which suits a language model's samples that run on across document boundaries.
        """
        out = []
        for i in ids:
            i = int(i)
            if i == self.eos_id and stop_at_eos:
                break
            if i not in (self.pad_id, self.bos_id, self.eos_id):
                out.append(i)
        return self._decode(out)

    def _encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def _decode(self, ids: list[int]) -> str:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def fingerprint(self) -> str:
        """A short hash of the serialised tokenizer: equal fingerprints = identical encodings."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), ensure_ascii=False))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, fingerprint={self.fingerprint()})"


class CharTokenizer(Tokenizer):
    """One token per Unicode code point; the vocabulary is the special tokens then the sorted characters."""

    kind = "char"

    def __init__(self, chars: Iterable[str], unk_text: str = "⁇") -> None:
        chars = list(chars)
        if any(len(c) != 1 for c in chars) or len(set(chars)) != len(chars):
            raise ValueError("CharTokenizer needs distinct single characters")
        self.chars, self.unk_text = chars, unk_text
        self._id = {c: i + len(SPECIALS) for i, c in enumerate(chars)}

    @classmethod
    def train(cls, texts: Iterable[str], *, min_freq: int = 1, max_chars: int | None = None) -> CharTokenizer:
        """Characters seen at least ``min_freq`` times (the ``max_chars`` most frequent), in sorted order."""
        counts = Counter()
        for t in texts:
            counts.update(t)
        kept = [c for c, n in counts.most_common(max_chars) if n >= min_freq]
        return cls(sorted(kept))

    @property
    def vocab_size(self) -> int:
        return len(SPECIALS) + len(self.chars)

    def _encode(self, text: str) -> list[int]:
        get = self._id.get
        return [get(c, UNK_ID) for c in text]

    def _decode(self, ids: list[int]) -> str:
        n = len(SPECIALS)
        return "".join(self.chars[i - n] if n <= i < self.vocab_size else self.unk_text for i in ids)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "char", "chars": "".join(self.chars), "unk_text": self.unk_text}


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model (Kudo & Richardson, arXiv:1808.06226): BPE (Sennrich et al., arXiv:1508.07909)
    or unigram LM (Kudo, arXiv:1804.10959) subwords, held in memory as its serialised model proto."""

    kind = "sentencepiece"

    def __init__(self, model_proto: bytes) -> None:
        import sentencepiece as spm

        self.model_proto = bytes(model_proto)
        self.sp = spm.SentencePieceProcessor(model_proto=self.model_proto)
        got = (self.sp.pad_id(), self.sp.bos_id(), self.sp.eos_id(), self.sp.unk_id())
        if got != (PAD_ID, BOS_ID, EOS_ID, UNK_ID):
            raise ValueError(f"SentencePiece model has special ids (pad, bos, eos, unk) = {got}; paperzoo needs "
                             f"{(PAD_ID, BOS_ID, EOS_ID, UNK_ID)} (train it with SentencePieceTokenizer.train)")

    @classmethod
    def train(cls, texts: Iterable[str], *, vocab_size: int = 1000, model_type: str = "bpe",
              byte_fallback: bool = True, character_coverage: float = 1.0, seed_sentences: int = 1_000_000,
              hard_vocab_limit: bool = False) -> SentencePieceTokenizer:
        """Train on ``texts`` (one sentence each; empty ones ignored). ``model_type``: "bpe" or "unigram".

        ``hard_vocab_limit=False`` lets a small corpus end with fewer pieces than ``vocab_size`` instead of
        failing. Training is single-threaded and seeded by SentencePiece's defaults: the same corpus gives the
        same model.
        """
        import sentencepiece as spm

        if model_type not in ("bpe", "unigram"):
            raise ValueError(f"model_type must be 'bpe' or 'unigram', got {model_type!r}")
        sentences = [t for t in texts if t.strip()]
        if not sentences:
            raise ValueError("cannot train a SentencePiece model on an empty corpus")
        buf = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(sentences), model_writer=buf, vocab_size=vocab_size, model_type=model_type,
                pad_id=PAD_ID, bos_id=BOS_ID, eos_id=EOS_ID, unk_id=UNK_ID,
                normalization_rule_name="identity", remove_extra_whitespaces=False,  # exact round trips
                byte_fallback=byte_fallback, character_coverage=character_coverage,
                input_sentence_size=seed_sentences, shuffle_input_sentence=False, num_threads=1,
                hard_vocab_limit=hard_vocab_limit, minloglevel=2)
        except RuntimeError as e:  # e.g. vocab_size below the characters (+ 256 byte pieces) it must hold
            extra = " (byte_fallback adds 256 byte pieces)" if byte_fallback else ""
            raise ValueError(f"SentencePiece training failed with vocab_size={vocab_size}{extra}: {e}") from None
        return cls(buf.getvalue())

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def pieces(self, text: str) -> list[str]:
        return self.sp.encode(text, out_type=str)

    def _encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def _decode(self, ids: list[int]) -> str:
        return self.sp.decode(ids)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "sentencepiece", "model": base64.b64encode(self.model_proto).decode("ascii")}


def build_tokenizer(kind: str, texts: Iterable[str], *, vocab_size: int = 1000) -> Tokenizer:
    """Train a tokenizer of ``kind`` ("char", "bpe" or "unigram") on ``texts``."""
    if kind == "char":
        return CharTokenizer.train(texts)
    if kind in ("bpe", "unigram"):
        return SentencePieceTokenizer.train(texts, vocab_size=vocab_size, model_type=kind)
    raise ValueError(f"unknown tokenizer kind {kind!r}; expected 'char', 'bpe' or 'unigram'")


def tokenizer_from_dict(d: dict[str, Any]) -> Tokenizer:
    """Inverse of :meth:`Tokenizer.to_dict`."""
    kind = d.get("kind") if isinstance(d, dict) else None
    if kind == "char":
        return CharTokenizer(list(d["chars"]), d.get("unk_text", "⁇"))
    if kind == "sentencepiece":
        return SentencePieceTokenizer(base64.b64decode(d["model"]))
    raise ValueError(f"not a paperzoo tokenizer (kind={kind!r}); expected 'char' or 'sentencepiece'")


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """A tokenizer saved with :meth:`Tokenizer.save` (JSON), or a SentencePiece ``.model`` file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"tokenizer file not found: {p}")
    if p.suffix == ".model":
        return SentencePieceTokenizer(p.read_bytes())
    try:
        return tokenizer_from_dict(json.loads(p.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{p} is neither a paperzoo tokenizer JSON nor a SentencePiece .model file") from e


def check_same_tokenizer(expected: dict[str, Any] | Tokenizer, got: Tokenizer, what: str) -> None:
    """Raise :class:`TokenizerMismatchError` unless ``got`` encodes exactly as ``expected`` (e.g. a checkpoint's)."""
    exp = expected if isinstance(expected, Tokenizer) else tokenizer_from_dict(expected)
    if exp.fingerprint() == got.fingerprint():
        return
    detail = f"{exp.kind} with {exp.vocab_size} tokens vs {got.kind} with {got.vocab_size} tokens"
    if isinstance(exp, CharTokenizer) and isinstance(got, CharTokenizer):
        missing, extra = set(exp.chars) - set(got.chars), set(got.chars) - set(exp.chars)
        detail += (f"; missing {''.join(sorted(missing))[:40]!r}, extra {''.join(sorted(extra))[:40]!r}"
                   if missing or extra else "; same characters in a different order")
    raise TokenizerMismatchError(f"{what}: the tokenizer does not match the one the checkpoint was trained with "
                                 f"({detail}; fingerprints {exp.fingerprint()} vs {got.fingerprint()}). Use the "
                                 "checkpoint's own tokenizer (stored in its meta.json) or retrain.")
