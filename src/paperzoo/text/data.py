"""Text data: parallel corpora, language-model corpora and length-bucketed, padded, resumable batches.

Reading parallel text (:func:`read_parallel`):

* a TSV file, one ``source<TAB>target`` pair per line (a line with no tab, or with more than one, is an error
  naming the file and line), or two aligned text files, one sentence per line (different line counts are an
  error naming both files and both counts);
* empty lines: ``on_empty="skip"`` (default) drops a pair whose source or target is empty (or only whitespace)
  and reports how many were dropped; ``on_empty="error"`` refuses the file, naming the first such line;
* a trailing newline at the end of a file is not a line; ``\\r\\n`` line ends are accepted.

Encoding (:class:`ParallelDataset`): source ids end with EOS; targets are BOS y … EOS, fed to the decoder as
``tgt[:, :-1]`` and predicted as ``tgt[:, 1:]`` (teacher forcing). Characters the tokenizer does not know become
``unk``. Sequences longer than ``max_len`` tokens (EOS/BOS included): ``overlong="error"`` (default) refuses the
corpus naming the first such pair, ``"skip"`` drops those pairs, ``"truncate"`` cuts them to ``max_len`` tokens
keeping the final EOS (the truncated target is then what the model learns to produce; use it only for sources
or for language modelling).

Batching (:class:`LengthBatchLoader`): an epoch is a seeded permutation cut into pools of ``pool`` batches; each
pool is sorted by length and cut into batches, and the batch order is shuffled, so a batch holds sentences of
similar lengths (little padding) while epochs still differ. The order is a function of (seed, epoch) only, so a
resumed run continues at the exact batch: both loaders keep their position in the
:class:`~paperzoo.data.cursor.EpochCursor` shared by every paperzoo loader (``state_dict`` records it). Every
epoch has the same number of full batches; the last ``len % batch_size`` sentences of each epoch's permutation
wait for a later epoch.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from paperzoo.data.cursor import ResumableLoader

from .tokenizers import Tokenizer

__all__ = ["read_parallel", "read_lines", "ParallelDataset", "TranslationBatch", "LengthBatchLoader",
           "LMCorpus", "LMLoader", "pad_sequences"]


def _read_text(path: str | os.PathLike) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"text file not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{p} is not UTF-8 text: {e}") from None
    return text.splitlines()


def read_lines(path: str | os.PathLike) -> list[str]:
    """Lines of a UTF-8 text file (without their line ends)."""
    return _read_text(path)


def read_parallel(tsv: str | os.PathLike | None = None, *, src: str | os.PathLike | None = None,
                  tgt: str | os.PathLike | None = None, on_empty: str = "skip") -> list[tuple[str, str]]:
    """(source, target) pairs from a TSV file or from two aligned files (see the module docstring)."""
    if on_empty not in ("skip", "error"):
        raise ValueError(f"on_empty must be 'skip' or 'error', got {on_empty!r}")
    if (tsv is None) == (src is None or tgt is None):
        raise ValueError("give either a TSV file or both a source and a target file")
    where: list[str] = []
    if tsv is not None:
        pairs = []
        for n, line in enumerate(_read_text(tsv), 1):
            cols = line.split("\t")
            if len(cols) != 2:
                if not line.strip():
                    cols = ["", ""]
                else:
                    raise ValueError(f"{tsv}:{n}: expected 'source<TAB>target', found {len(cols) - 1} tab(s) "
                                     f"in {line[:60]!r}")
            pairs.append((cols[0], cols[1]))
            where.append(f"{tsv}:{n}")
    else:
        a, b = _read_text(src), _read_text(tgt)
        if len(a) != len(b):
            raise ValueError(f"parallel files do not align: {src} has {len(a)} lines but {tgt} has {len(b)}")
        pairs = list(zip(a, b))
        where = [f"{src}:{n} / {tgt}:{n}" for n in range(1, len(a) + 1)]
    out = []
    for (s, t), w in zip(pairs, where):
        if not s.strip() or not t.strip():
            if on_empty == "error":
                raise ValueError(f"{w}: empty {'source' if not s.strip() else 'target'} (on_empty='error'; "
                                 "use on_empty='skip' to drop such pairs)")
            continue
        out.append((s, t))
    if not out:
        raise ValueError(f"no non-empty pairs in {tsv or (str(src) + ' / ' + str(tgt))}")
    return out


def _fit_length(ids: list[int], max_len: int, overlong: str, what: str, eos_id: int) -> list[int] | None:
    if len(ids) <= max_len:
        return ids
    if overlong == "error":
        raise ValueError(f"{what} has {len(ids)} tokens, more than max_len={max_len} (set overlong='truncate' or "
                         "'skip', or raise max_len)")
    if overlong == "skip":
        return None
    return ids[: max_len - 1] + [eos_id]


def pad_sequences(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Right-pad to the longest: ((B, L) int64 ids, (B,) lengths)."""
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    out = torch.full((len(seqs), int(lengths.max()) if len(seqs) else 0), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    return out, lengths


class ParallelDataset:
    """Encoded pairs: ``src[i]`` = x … EOS, ``tgt[i]`` = BOS y … EOS (lists of ids), plus the raw text."""

    def __init__(self, pairs: Sequence[tuple[str, str]], src_tok: Tokenizer, tgt_tok: Tokenizer, *,
                 max_len: int = 256, overlong: str = "error") -> None:
        if overlong not in ("error", "skip", "truncate"):
            raise ValueError(f"overlong must be 'error', 'skip' or 'truncate', got {overlong!r}")
        self.src: list[list[int]] = []
        self.tgt: list[list[int]] = []
        self.pairs: list[tuple[str, str]] = []
        self.skipped = 0
        for i, (s, t) in enumerate(pairs):
            a = _fit_length(src_tok.encode(s, add_eos=True), max_len, overlong, f"pair {i} source {s[:40]!r}",
                            src_tok.eos_id)
            b = _fit_length(tgt_tok.encode(t, add_bos=True, add_eos=True), max_len, overlong,
                            f"pair {i} target {t[:40]!r}", tgt_tok.eos_id)
            if a is None or b is None:
                self.skipped += 1
                continue
            self.src.append(a)
            self.tgt.append(b)
            self.pairs.append((s, t))
        if not self.src:
            raise ValueError("no pairs left after removing over-long ones")
        self.pad_id = tgt_tok.pad_id

    def __len__(self) -> int:
        return len(self.src)

    def lengths(self) -> Tensor:
        return torch.tensor([max(len(a), len(b)) for a, b in zip(self.src, self.tgt)], dtype=torch.long)


@dataclass
class TranslationBatch:
    """One padded batch. ``src`` (B, S), ``tgt_in`` (B, T) = BOS y…, ``tgt_out`` (B, T) = y… EOS, pad = ``pad_id``."""

    src: Tensor
    src_lengths: Tensor
    tgt_in: Tensor
    tgt_out: Tensor
    index: Tensor  # (B,) positions in the dataset

    def to(self, device: torch.device | str) -> TranslationBatch:
        return TranslationBatch(*(t.to(device) for t in (self.src, self.src_lengths, self.tgt_in, self.tgt_out,
                                                          self.index)))

    @property
    def src_padding_mask(self) -> Tensor:
        """(B, S) True at padding."""
        return torch.arange(self.src.shape[1])[None, :].to(self.src.device) >= self.src_lengths[:, None]


class LengthBatchLoader(ResumableLoader):
    """Length-bucketed, padded batches of a :class:`ParallelDataset`; seeded and resumable (module docstring)."""

    def __init__(self, data: ParallelDataset, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 pool: int = 50, device: torch.device | str = "cpu", rank: int = 0, world_size: int = 1) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        super().__init__(seed)
        self.data, self.batch_size, self.shuffle, self.pool = data, batch_size, shuffle, pool
        self.device, self.rank, self.world = torch.device(device), rank, world_size
        self._lengths = data.lengths()

    def __len__(self) -> int:
        if self.shuffle:  # full batches only, the same number every epoch; DDP ranks take every world-th batch
            return (len(self.data) // self.batch_size) // self.world
        return -(-len(self.data) // self.batch_size)

    def batches(self) -> list[Tensor]:
        """This epoch's batches (dataset indices), in order."""
        n, bs = len(self.data), self.batch_size
        if not self.shuffle:  # evaluation: sorted by length (little padding), every sentence exactly once
            order = torch.sort(self._lengths, stable=True).indices
            return list(order.split(bs))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(n, generator=g)[: (n // bs) * bs]
        out: list[Tensor] = []
        for chunk in perm.split(bs * self.pool):
            chunk = chunk[torch.sort(self._lengths[chunk], stable=True).indices]  # similar lengths together
            out.extend(chunk.split(bs))
        order = torch.randperm(len(out), generator=g).tolist()
        out = [out[i] for i in order]
        return out[self.rank :: self.world][: len(self)]

    def collate(self, idx: Tensor) -> TranslationBatch:
        d = self.data
        src, src_len = pad_sequences([d.src[i] for i in idx.tolist()], d.pad_id)
        tgt, _ = pad_sequences([d.tgt[i] for i in idx.tolist()], d.pad_id)
        return TranslationBatch(src, src_len, tgt[:, :-1], tgt[:, 1:], idx).to(self.device)

    def __iter__(self) -> Iterator[TranslationBatch]:
        batches = self.batches()
        for i in self.cursor.positions(len(batches)):
            yield self.collate(batches[i])


class LMCorpus:
    """A text file as one stream of token ids, split into train and validation parts.

    The last ``val_fraction`` of the file's characters (moved to the next line start) is the validation
    text, so validation is text the model never trained on (no overlap through sliding windows).
    """

    def __init__(self, text: str, tokenizer: Tokenizer, *, val_fraction: float = 0.05) -> None:
        if not text.strip():
            raise ValueError("the language-model corpus is empty")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        cut = int(len(text) * (1 - val_fraction))
        nl = text.find("\n", cut)
        cut = nl + 1 if 0 <= nl < len(text) - 1 else cut
        self.tokenizer = tokenizer
        self.train = torch.tensor(tokenizer.encode(text[:cut]), dtype=torch.long)
        self.val = torch.tensor(tokenizer.encode(text[cut:]), dtype=torch.long)
        self.unk_rate = float((self.train == tokenizer.unk_id).float().mean()) if len(self.train) else 0.0

    @classmethod
    def from_file(cls, path: str | os.PathLike, tokenizer: Tokenizer, **kw: Any) -> LMCorpus:
        return cls("\n".join(_read_text(path)) + "\n", tokenizer, **kw)


class LMLoader(ResumableLoader):
    """Batches of (x, y) windows of ``block_size`` tokens, y = x shifted by one.

    Training: each epoch visits non-overlapping windows at a random offset (seeded by (seed, epoch)) in a
    seeded order; ``len`` = windows // batch_size. Evaluation (``shuffle=False``): consecutive windows from
    the start, the last one shorter, every token predicted exactly once.
    """

    def __init__(self, ids: Tensor, block_size: int, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 device: torch.device | str = "cpu", rank: int = 0, world_size: int = 1) -> None:
        if len(ids) < block_size + 2:
            raise ValueError(f"a corpus of {len(ids)} tokens is too short for block_size={block_size}")
        super().__init__(seed)
        self.ids, self.block, self.batch_size, self.shuffle = ids, block_size, batch_size, shuffle
        self.device, self.rank, self.world = torch.device(device), rank, world_size

    def __len__(self) -> int:
        n_win = (len(self.ids) - 1) // self.block
        if self.shuffle:
            return max(n_win - 1, 0) // self.batch_size // self.world
        n_windows = -(-(len(self.ids) - 1) // self.block)  # ceil: the last window may be shorter
        return -(-n_windows // self.batch_size)

    def _starts(self) -> Tensor:
        if not self.shuffle:
            return torch.arange(0, len(self.ids) - 1, self.block)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        offset = int(torch.randint(self.block, (1,), generator=g))
        starts = torch.arange(offset, len(self.ids) - 1 - self.block, self.block)
        return starts[torch.randperm(len(starts), generator=g)]

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        starts = self._starts()
        bs = self.batch_size
        for i in self.cursor.positions(len(self)):
            b = starts[(i * self.world + self.rank) * bs : (i * self.world + self.rank + 1) * bs].tolist()
            if self.shuffle:
                x = torch.stack([self.ids[s : s + self.block] for s in b])  # (B, T)
                y = torch.stack([self.ids[s + 1 : s + 1 + self.block] for s in b])
            else:  # the last window may be shorter: pad targets with -100 (ignored by the loss)
                xs = [self.ids[s : min(s + self.block, len(self.ids) - 1)] for s in b]
                ys = [self.ids[s + 1 : s + 1 + len(x)] for s, x in zip(b, xs)]
                x = torch.nn.utils.rnn.pad_sequence(xs, batch_first=True)
                y = torch.nn.utils.rnn.pad_sequence(ys, batch_first=True, padding_value=-100)
            yield x.to(self.device), y.to(self.device)
