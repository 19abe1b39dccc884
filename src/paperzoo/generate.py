"""Autoregressive decoding: greedy, beam search and sampling, for every model with a step interface.

A model decodes through the :class:`StepModel` protocol:

* ``init_state(src, src_lengths=None, *, use_cache=True) -> state``: read the source (encoder-decoder: run the
  encoder; decoder-only: ``src`` is the prompt prefix). ``use_cache=False`` asks for the uncached reference
  (the Transformer and GPT re-run their decoder over the whole prefix each step; an RNN's state is its cache);
* ``step(tokens (B,), state) -> (logits (B, V), state)``: feed the last token, get the next-token logits;
* ``state.reorder(index)``: the state's batch rows ``index`` (1-D, may repeat rows), for beam search;
* ``is_decoder_only``: True when ``src`` is a prompt to continue rather than a source to translate.

The Transformer, GPT and the RNN models implement it. Generation stops at the end-of-sentence token
(``eos_id``) or after ``max_len`` new tokens; positions after a sequence's EOS hold ``pad_id``. Beam search
follows Wu et al., "Google's Neural Machine Translation System", arXiv:1609.08144, Sec. 7: hypotheses are
ranked by log P(Y|X) / lp(Y) with lp(Y) = ((5 + |Y|) / 6)^α.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

__all__ = ["StepModel", "DecodingState", "BeamSearchOutput", "gnmt_length_penalty", "top_k_filter", "top_p_filter",
           "greedy_search", "sample", "beam_search", "generate"]


class DecodingState(Protocol):
    def reorder(self, index: Tensor) -> DecodingState: ...


class StepModel(Protocol):
    is_decoder_only: bool
    training: bool

    def init_state(self, src: Tensor, src_lengths: Tensor | None = None, *, use_cache: bool = True
                   ) -> DecodingState: ...

    def step(self, tokens: Tensor, state: Any) -> tuple[Tensor, DecodingState]: ...


def gnmt_length_penalty(length: Tensor | int, alpha: float) -> Tensor:
    """lp(Y) = ((5 + |Y|) / (5 + 1))^α  (GNMT, arXiv:1609.08144, Sec. 7). α = 0 ranks by raw log-probability."""
    return ((5.0 + torch.as_tensor(length, dtype=torch.float32)) / 6.0) ** alpha


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep the ``k`` largest logits of each row (ties at the k-th value are kept), set the rest to -inf."""
    if k >= logits.shape[-1]:
        return logits
    kth = logits.topk(k, dim=-1).values[..., -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Nucleus filtering (Holtzman et al., arXiv:1904.09751): keep the smallest set of most likely tokens
    whose probability sums to at least ``p``; the most likely token is always kept."""
    if p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    drop = (cum - sorted_logits.softmax(dim=-1)) >= p  # mass *before* a token already reaches p
    drop[..., 0] = False
    return logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))


def _finish(tokens: Tensor, finished: Tensor, eos_id: int | None, pad_id: int) -> tuple[Tensor, Tensor]:
    """Replace tokens of finished rows by padding and mark rows that just produced EOS."""
    tokens = tokens.masked_fill(finished, pad_id)
    if eos_id is not None:
        finished = finished | (tokens == eos_id)
    return tokens, finished


@torch.inference_mode()
def greedy_search(model: StepModel, state: DecodingState, start_tokens: Tensor, *, max_len: int,
                  eos_id: int | None = None, pad_id: int = 0) -> Tensor:
    """Pick the most likely token at each step. Returns (B, T ≤ max_len) new tokens, EOS included."""
    return sample(model, state, start_tokens, max_len=max_len, temperature=0.0, eos_id=eos_id, pad_id=pad_id)


@torch.inference_mode()
def sample(model: StepModel, state: DecodingState, start_tokens: Tensor, *, max_len: int, temperature: float = 1.0,
           top_k: int | None = None, top_p: float | None = None, eos_id: int | None = None, pad_id: int = 0,
           generator: torch.Generator | None = None) -> Tensor:
    """Ancestral sampling from softmax(logits / temperature), optionally restricted to the top-k tokens and/or
    the top-p nucleus (top-k first, as is usual). ``temperature=0`` is greedy; ``top_k`` 0 or None keeps every
    token. Returns (B, T ≤ max_len)."""
    if not temperature >= 0.0:  # also refuses NaN
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 = no top-k filter), got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    tokens, out = start_tokens, []
    finished = torch.zeros_like(start_tokens, dtype=torch.bool)
    for _ in range(max_len):
        logits, state = model.step(tokens, state)  # (B, V)
        if temperature == 0.0:
            tokens = logits.argmax(dim=-1)
        else:
            logits = logits.float() / temperature
            if top_k:
                logits = top_k_filter(logits, top_k)
            if top_p is not None:
                logits = top_p_filter(logits, top_p)
            tokens = torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(1)
        if eos_id is not None:  # without an EOS token nothing finishes: no bookkeeping, no sync per step
            tokens, finished = _finish(tokens, finished, eos_id, pad_id)
        out.append(tokens)
        if eos_id is not None and bool(finished.all()):
            break
    return torch.stack(out, dim=1) if out else start_tokens.new_zeros(start_tokens.shape[0], 0)


@dataclass
class BeamSearchOutput:
    """n-best hypotheses per input, best first.

    Attributes:
        tokens: (B, n_best, T) new tokens (EOS included when one was produced), padded with ``pad_id``.
        scores: (B, n_best) log P(Y|X) / lp(Y), the score they were ranked by.
        lengths: (B, n_best) |Y|, counting the EOS.
    """

    tokens: Tensor
    scores: Tensor
    lengths: Tensor


@torch.inference_mode()
def beam_search(model: StepModel, state: DecodingState, start_tokens: Tensor, *, beam_size: int, max_len: int,
                eos_id: int | None, pad_id: int = 0, length_penalty: float = 0.0, n_best: int = 1
                ) -> BeamSearchOutput:
    """Batched beam search: K hypotheses per input, advanced together as B·K rows of one batch.

    Each step scores all K·V one-token extensions and takes the best 2K. Extensions ending in EOS that rank
    within the first K become finished hypotheses (scored log P / lp, GNMT); the best K others stay alive.
    An input is done once ``n_best`` hypotheses are finished and no alive beam can still beat the worst of
    them (log P only falls as tokens are added, so an alive beam's best reachable score is its log P over the
    largest lp it can reach). After ``max_len`` steps unfinished beams compete too. Beam size 1 is greedy.
    """
    if not 1 <= n_best <= beam_size:
        raise ValueError(f"need 1 <= n_best <= beam_size, got n_best={n_best}, beam_size={beam_size}")
    b, k, dev = start_tokens.shape[0], beam_size, start_tokens.device
    rows = torch.arange(b, device=dev)
    state = state.reorder(rows.repeat_interleave(k))  # (B*K) rows: beam j of input i at i*K+j
    tokens = start_tokens.repeat_interleave(k)
    alive_seq = start_tokens.new_zeros(b, k, 0)
    alive_score = torch.full((b, k), float("-inf"), device=dev)
    alive_score[:, 0] = 0.0  # all beams start identical: expand only the first at step 1
    fin_seq = start_tokens.new_full((b, n_best, max_len), pad_id)
    fin_score = torch.full((b, n_best), float("-inf"), device=dev)
    fin_len = torch.zeros(b, n_best, dtype=torch.long, device=dev)
    done = torch.zeros(b, dtype=torch.bool, device=dev)
    neg_inf = torch.tensor(float("-inf"), device=dev)

    for t in range(max_len):
        length = t + 1
        logits, state = model.step(tokens, state)  # (B*K, V)
        vocab = logits.shape[-1]
        logp = logits.float().log_softmax(dim=-1).view(b, k, vocab)  # (B*K, V) -> (B, K, V)
        cand = (alive_score[:, :, None] + logp).view(b, k * vocab)  # (B, K*V): log P of every extension
        top_score, top_idx = cand.topk(min(2 * k, k * vocab), dim=1)  # (B, 2K), sorted
        beam, tok = top_idx // vocab, top_idx % vocab  # (B, 2K): parent beam and token of each candidate
        cand_seq = torch.cat([alive_seq.gather(1, beam[:, :, None].expand(-1, -1, t)), tok[:, :, None]], dim=2)

        # finished: EOS extensions ranked within the first K (so that K = 1 is exactly greedy)
        is_eos = tok == eos_id if eos_id is not None else torch.zeros_like(tok, dtype=torch.bool)
        in_top_k = torch.arange(tok.shape[1], device=dev)[None, :] < k
        new_fin = is_eos & in_top_k & ~done[:, None] & torch.isfinite(top_score)
        if t == max_len - 1:  # out of length: the extensions that would stay alive compete as they are
            would_live = ~is_eos & ((~is_eos).cumsum(dim=1) <= k)
            new_fin = new_fin | (would_live & ~done[:, None] & torch.isfinite(top_score))
        fin_score, fin_seq, fin_len = _merge_finished(
            fin_score, fin_seq, fin_len,
            torch.where(new_fin, top_score / gnmt_length_penalty(length, length_penalty), neg_inf),
            torch.nn.functional.pad(cand_seq, (0, max_len - length), value=pad_id), length)

        # alive: the best K extensions that did not end in EOS
        alive_cand = torch.where(is_eos, neg_inf, top_score)
        alive_score, pos = alive_cand.topk(k, dim=1)  # (B, K)
        alive_seq = cand_seq.gather(1, pos[:, :, None].expand(-1, -1, length))
        tokens = tok.gather(1, pos).view(-1)  # (B, K) -> (B*K,)
        parents = rows[:, None] * k + beam.gather(1, pos)  # (B, K): row of each new beam's parent in B*K
        state = state.reorder(parents.view(-1))

        # done: n_best finished and no alive beam can overtake the worst of them
        lp_max = torch.maximum(gnmt_length_penalty(length + 1, length_penalty),
                               gnmt_length_penalty(max_len, length_penalty))
        best_reachable = alive_score[:, 0] / lp_max
        done = done | (fin_score[:, -1] >= best_reachable)
        if bool(done.all()):
            break

    width = max(int(fin_len.max()), 1)
    return BeamSearchOutput(fin_seq[:, :, :width], fin_score, fin_len)


def _merge_finished(fin_score: Tensor, fin_seq: Tensor, fin_len: Tensor, new_score: Tensor, new_seq: Tensor,
                    length: int) -> tuple[Tensor, Tensor, Tensor]:
    """Keep the n best of (already finished ∪ new) per input; -inf scores mark empty slots."""
    n = fin_score.shape[1]
    score = torch.cat([fin_score, new_score], dim=1)  # (B, n + 2K)
    seq = torch.cat([fin_seq, new_seq], dim=1)  # (B, n + 2K, max_len)
    lens = torch.cat([fin_len, torch.full_like(new_score, length, dtype=torch.long)], dim=1)
    best, idx = score.topk(n, dim=1)
    return best, seq.gather(1, idx[:, :, None].expand(-1, -1, seq.shape[2])), lens.gather(1, idx)


@torch.inference_mode()
def generate(model: StepModel, src: Tensor, src_lengths: Tensor | None = None, *, method: str = "greedy",
             max_len: int = 128, bos_id: int | None = None, eos_id: int | None = None, pad_id: int = 0,
             use_cache: bool = True, beam_size: int = 4, length_penalty: float = 0.6, n_best: int = 1,
             temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
             generator: torch.Generator | None = None) -> Tensor | BeamSearchOutput:
    """Decode with ``method`` in {"greedy", "beam", "sample"}.

    Encoder-decoder models read ``src`` (B, S) and start from ``bos_id``; decoder-only models
    (``model.is_decoder_only``) continue the prompt ``src`` (B, T0 ≥ 1). Returns the new tokens (B, T), or a
    :class:`BeamSearchOutput` for beam search. ``use_cache=False`` recomputes every step from scratch (the
    reference the KV cache is tested against).
    """
    was_training = model.training
    model.eval()
    try:
        if model.is_decoder_only:
            if src.shape[1] == 0:
                raise ValueError("a decoder-only model needs a prompt of at least one token (e.g. BOS)")
            lengths = None if src_lengths is None else src_lengths - 1
            state = model.init_state(src[:, :-1], lengths, use_cache=use_cache)
            start = src[:, -1]
        else:
            if bos_id is None:
                raise ValueError("encoder-decoder generation needs bos_id")
            state = model.init_state(src, src_lengths, use_cache=use_cache)
            start = src.new_full((src.shape[0],), bos_id)
        if method == "greedy":
            return greedy_search(model, state, start, max_len=max_len, eos_id=eos_id, pad_id=pad_id)
        if method == "sample":
            return sample(model, state, start, max_len=max_len, temperature=temperature, top_k=top_k, top_p=top_p,
                          eos_id=eos_id, pad_id=pad_id, generator=generator)
        if method == "beam":
            return beam_search(model, state, start, beam_size=beam_size, max_len=max_len, eos_id=eos_id,
                               pad_id=pad_id, length_penalty=length_penalty, n_best=n_best)
        raise ValueError(f"unknown method {method!r}; expected 'greedy', 'beam' or 'sample'")
    finally:
        model.train(was_training)
