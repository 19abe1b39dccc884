"""Decoding: KV cache == no cache, beam search (GNMT length penalty, n-best, EOS), sampling filters.

Run: python -m pytest -q tests/test_generate.py
"""

import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn

from paperzoo.generate import (
    beam_search,
    generate,
    gnmt_length_penalty,
    greedy_search,
    sample,
    top_k_filter,
    top_p_filter,
)
from paperzoo.models.gpt import GPT, GPTConfig
from paperzoo.models.transformer import Transformer, TransformerConfig

PAD, BOS, EOS = 0, 1, 2


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads only cost (conftest)


def _peaky(model: nn.Module, scale: float) -> nn.Module:
    """A random model with sharper, input-dependent outputs than at init, in float64 so that the cached and
    uncached paths (different summation orders) cannot flip a near-tie."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model.double().eval()


def _transformer(**kw) -> Transformer:
    cfg = dict(src_vocab_size=20, tgt_vocab_size=20, N_enc=2, N_dec=2, d_model=32, d_ff=64, h=4, norm_first=True,
               tie_output=False)
    return _peaky(Transformer(TransformerConfig(**{**cfg, **kw})), 0.3)


def _gpt(**kw) -> GPT:
    return _peaky(GPT(GPTConfig(**{"vocab_size": 20, "block_size": 32, "n_layer": 2, "n_head": 4, "n_embd": 32,
                                   **kw})), 0.3)


def _inputs():
    src = torch.randint(3, 20, (4, 7), generator=torch.Generator().manual_seed(0))
    src[1, 5:] = PAD
    src[3, 3:] = PAD
    return src


MODELS = {
    "transformer": lambda: (_transformer(), _inputs()),
    "transformer-postnorm": lambda: (_transformer(norm_first=False), _inputs()),
    "gpt": lambda: (_gpt(), _inputs()[:, :3]),
}


def _decode(model, src, use_cache, method, **kw):
    return generate(model, src, method=method, bos_id=BOS, eos_id=EOS, pad_id=PAD, use_cache=use_cache, **kw)


@pytest.mark.parametrize("kind", MODELS)
def test_cached_and_uncached_decoding_give_identical_tokens(kind):
    model, src = MODELS[kind]()
    for method, kw in [("greedy", {}), ("beam", {"beam_size": 3, "n_best": 2}),
                       ("sample", {"top_k": 8, "top_p": 0.9, "temperature": 0.8})]:
        if method == "sample":
            a = _decode(model, src, True, method, max_len=12, generator=torch.Generator().manual_seed(5), **kw)
            b = _decode(model, src, False, method, max_len=12, generator=torch.Generator().manual_seed(5), **kw)
        else:
            a = _decode(model, src, True, method, max_len=12, **kw)
            b = _decode(model, src, False, method, max_len=12, **kw)
        if method == "beam":
            assert torch.equal(a.tokens, b.tokens), (kind, method)
            torch.testing.assert_close(a.scores, b.scores)
        else:
            assert torch.equal(a, b), (kind, method)
    greedy = _decode(model, src, True, "greedy", max_len=12)
    assert len({tuple(r) for r in greedy.tolist()}) > 1, "test model too degenerate to compare anything"


def test_transformer_cached_steps_equal_teacher_forcing():
    model = _transformer()
    src = _inputs()
    tgt = torch.randint(3, 20, (4, 6))
    tgt[:, 0] = BOS
    with torch.no_grad():
        full = model(src, tgt)
        state = model.init_state(src)
        for t in range(6):
            logits, state = model.step(tgt[:, t], state)
            torch.testing.assert_close(logits, full[:, t], rtol=1e-10, atol=1e-10)
    assert state.self_kv[0].keys.shape == (4, 4, 6, 8)  # (B, heads, t, d): appended once per step
    assert state.memory_kv[0][0].shape == (4, 4, 7, 8)  # (B, heads, S, d): computed once


@pytest.mark.parametrize("kind", MODELS)
def test_cached_logits_equal_uncached_logits_at_every_step_in_float32(kind):
    """The float32 models the benchmark runs: every step's logits agree to 1e-5, also after a beam-search
    style reorder (rows duplicated and dropped) half-way, which copies the caches."""
    torch.manual_seed(0)
    model, src = MODELS[kind]()
    model = model.float()
    cached, uncached = model.init_state(src), model.init_state(src, use_cache=False)
    tokens = torch.randint(3, 20, (src.shape[0], 40))  # past the caches' first capacity (they grow)
    index = torch.tensor([3, 3, 0, 1])
    with torch.no_grad():
        for t in range(tokens.shape[1]):
            if t == 20:
                cached, uncached = cached.reorder(index), uncached.reorder(index)
            a, cached = model.step(tokens[:, t], cached)
            b, uncached = model.step(tokens[:, t], uncached)
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=lambda m, t=t: f"step {t}: {m}")
    if kind == "gpt":  # a 3-token prompt and 40 steps pass block_size 32: the cache stops there (sliding window)
        assert cached.kv[0].length == cached.kv[0].capacity == model.cfg.block_size == 32
    else:
        assert cached.self_kv[0].length == 40 and cached.self_kv[0].capacity == 64


@pytest.mark.parametrize("kind", MODELS)
def test_a_consumed_state_cannot_be_stepped_again(kind):
    model, src = MODELS[kind]()
    state = model.init_state(src)
    tok = torch.full((src.shape[0],), 3)
    with torch.no_grad():
        _, new = model.step(tok, state)
        with pytest.raises(ValueError, match="already advanced by step"):
            model.step(tok, state)  # its caches already hold the step above
        branch = new.reorder(torch.arange(src.shape[0]))  # an independent copy may be stepped separately
        a, _ = model.step(tok, branch)
        b, _ = model.step(tok, new)
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("kind", MODELS)
def test_beam_size_one_is_greedy(kind):
    model, src = MODELS[kind]()
    greedy = _decode(model, src, True, "greedy", max_len=10)
    beam = _decode(model, src, True, "beam", max_len=10, beam_size=1, length_penalty=0.0)
    for i in range(src.shape[0]):
        row = greedy[i].tolist()
        g = torch.tensor(row[: row.index(EOS) + 1] if EOS in row else row)  # PAD may be a real token here
        assert torch.equal(beam.tokens[i, 0, : len(g)], g)
        assert beam.lengths[i, 0] == len(g)


# ------------------------------------------------------------------------------------------- a toy bigram model
A, B, C = 3, 4, 5
# Row 0 (greedy trap): greedy takes A (0.5) then EOS (0.35): P = 0.175; beam finds B EOS: 0.4 * 0.9 = 0.36.
TRAP = {BOS: {A: 0.5, B: 0.4, C: 0.1}, A: {EOS: 0.35, C: 0.33, B: 0.32}, B: {EOS: 0.9, A: 0.1}, C: {EOS: 1.0}}
# Row 1 (length penalty): [EOS] has P = 0.3 > [A EOS] = 0.28, but per GNMT with α = 1 the longer one wins:
# log 0.28 / lp(2) = -1.091 > log 0.3 / lp(1) = -1.204. Longer ones ([A B .. EOS]) stay below both.
LENGTH = {BOS: {EOS: 0.3, A: 0.7}, A: {EOS: 0.4, B: 0.6}, B: {B: 0.8, EOS: 0.2}, C: {EOS: 1.0}}


def _table(spec, vocab=6, eps=1e-6):
    t = torch.full((vocab, vocab), eps)
    for prev, nxt in spec.items():
        for tok, p in nxt.items():
            t[prev, tok] = p
    return (t / t.sum(-1, keepdim=True)).log()


@dataclass
class RowState:
    row: torch.Tensor  # (B,) which table each batch row reads

    def reorder(self, index):
        return RowState(self.row.index_select(0, index))


class Bigram(nn.Module):
    """P(y_t | y_{t-1}) from a fixed table per input row; the state keeps that row id."""

    is_decoder_only = False

    def __init__(self, *specs):
        super().__init__()
        self.register_buffer("logp", torch.stack([_table(s) for s in specs]))  # (rows, V, V)
        self.calls = 0

    def init_state(self, src, src_lengths=None, *, use_cache=True):
        return RowState(src[:, 0].clone())

    def step(self, tokens, state):
        self.calls += 1
        return self.logp[state.row, tokens], state

    def logprob(self, row, seq):
        prev = [BOS, *seq[:-1]]
        return sum(self.logp[row, p, t].item() for p, t in zip(prev, seq))


def _toy_run(model, src, **kw):
    state = model.init_state(src)
    return beam_search(model, state, torch.full((src.shape[0],), BOS), eos_id=EOS, pad_id=PAD, **kw)


def test_beam_search_beats_greedy_on_a_greedy_trap():
    model = Bigram(TRAP)
    src = torch.zeros(1, 1, dtype=torch.long)
    greedy = greedy_search(model, model.init_state(src), torch.tensor([BOS]), max_len=5, eos_id=EOS)
    assert greedy.tolist() == [[A, EOS]]
    out = _toy_run(model, src, beam_size=2, max_len=5, length_penalty=0.0, n_best=2)
    assert out.tokens[0, 0, :2].tolist() == [B, EOS]
    assert out.tokens[0, 1, :2].tolist() == [A, EOS]
    assert out.scores[0].tolist() == pytest.approx([math.log(0.4 * 0.9), math.log(0.5 * 0.35)], abs=1e-4)
    assert out.lengths[0].tolist() == [2, 2]


def test_length_penalty_follows_gnmt_and_batches_independent_rows():
    model = Bigram(TRAP, LENGTH)
    src = torch.tensor([[0], [1]])  # row 0 uses TRAP, row 1 LENGTH: beams must never mix across the batch
    plain = _toy_run(model, src, beam_size=3, max_len=12, length_penalty=0.0, n_best=3)
    assert plain.tokens[1, 0, :1].tolist() == [EOS]  # α = 0: the short, more probable one
    assert plain.tokens[0, 0, :2].tolist() == [B, EOS]
    long = _toy_run(model, src, beam_size=3, max_len=12, length_penalty=1.0, n_best=3)
    assert long.tokens[1, 0, :2].tolist() == [A, EOS]  # α = 1: normalised by ((5 + |Y|) / 6)^α
    for out, alpha in ((plain, 0.0), (long, 1.0)):
        for row in range(2):
            assert out.scores[row].tolist() == sorted(out.scores[row].tolist(), reverse=True)  # best first
            for j in range(3):
                n = int(out.lengths[row, j])
                seq = out.tokens[row, j, :n].tolist()
                assert out.tokens[row, j, n:].eq(PAD).all()
                expected = model.logprob(row, seq) / gnmt_length_penalty(n, alpha).item()
                assert out.scores[row, j].item() == pytest.approx(expected, abs=1e-4)
    assert gnmt_length_penalty(1, 0.6).item() == pytest.approx(1.0)
    assert gnmt_length_penalty(7, 1.0).item() == pytest.approx(2.0)


def test_eos_stops_decoding_and_pads_after_it():
    model = Bigram({BOS: {A: 1.0}, A: {B: 1.0}, B: {EOS: 1.0}})
    src = torch.zeros(2, 1, dtype=torch.long)
    out = greedy_search(model, model.init_state(src), torch.tensor([BOS, B]), max_len=20, eos_id=EOS, pad_id=PAD)
    assert out.tolist() == [[A, B, EOS], [EOS, PAD, PAD]]  # stops when every row is done, not at max_len
    assert model.calls == 3
    model.calls = 0
    beam = _toy_run(model, src[:1], beam_size=4, max_len=20)
    assert beam.tokens[0, 0].tolist() == [A, B, EOS] and model.calls < 20  # beam search stops early too
    capped = greedy_search(model, model.init_state(src), torch.tensor([BOS, BOS]), max_len=2, eos_id=EOS)
    assert capped.tolist() == [[A, B], [A, B]]  # max_len caps hypotheses that never reach EOS
    capped_beam = _toy_run(model, src[:1], beam_size=2, max_len=2)
    assert capped_beam.tokens[0, 0].tolist() == [A, B] and capped_beam.lengths[0, 0] == 2


def test_top_k_and_top_p_masks():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0], [0.0, 0.0, 5.0, 4.0]])
    inf = float("-inf")
    assert top_k_filter(logits, 2).tolist() == [[inf, 3.0, 2.0, inf], [inf, inf, 5.0, 4.0]]
    assert torch.equal(top_k_filter(logits, 10), logits)
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    kept = lambda p: torch.isfinite(top_p_filter(probs, p))[0].tolist()  # noqa: E731
    assert kept(0.5) == [True, False, False, False]
    assert kept(0.6) == [True, True, False, False]
    assert kept(0.8) == [True, True, False, False]  # 0.5 + 0.3 reaches 0.8
    assert kept(0.81) == [True, True, True, False]
    assert kept(0.01) == [True, False, False, False]  # the most likely token always stays
    shuffled = probs[:, [2, 0, 3, 1]]
    assert torch.isfinite(top_p_filter(shuffled, 0.6))[0].tolist() == [False, True, False, True]


def test_sampling_respects_filters_and_temperature():
    model = Bigram({BOS: {A: 0.5, B: 0.3, C: 0.2}, A: {EOS: 1.0}, B: {EOS: 1.0}, C: {EOS: 1.0}})
    src = torch.zeros(400, 1, dtype=torch.long)
    start = torch.full((400,), BOS)
    gen = torch.Generator().manual_seed(0)
    first = lambda **kw: sample(model, model.init_state(src), start, max_len=3, eos_id=EOS, generator=gen,  # noqa
                                **kw)[:, 0]
    assert set(first(top_k=2).tolist()) == {A, B}
    assert set(first(top_p=0.7).tolist()) == {A, B}
    assert set(first(top_k=1).tolist()) == {A}
    free = first()
    assert (free == A).float().mean().item() == pytest.approx(0.5, abs=0.08)  # samples follow P
    cold = first(temperature=0.2)  # P^(1/0.2): A dominates
    assert (cold == A).float().mean().item() > 0.9
    assert torch.equal(first(temperature=0.0), torch.full((400,), A))  # temperature 0 = greedy
    for bad, match in [({"temperature": -0.5}, "temperature"), ({"temperature": float("nan")}, "temperature"),
                       ({"top_k": -1}, "top_k"), ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p")]:
        with pytest.raises(ValueError, match=match):
            first(**bad)


def test_generate_argument_errors():
    model = Bigram(TRAP)
    with pytest.raises(ValueError, match="bos_id"):
        generate(model, torch.zeros(1, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="unknown method"):
        generate(model, torch.zeros(1, 1, dtype=torch.long), bos_id=BOS, method="nucleus")
    with pytest.raises(ValueError, match="n_best"):
        _toy_run(model, torch.zeros(1, 1, dtype=torch.long), beam_size=2, n_best=3, max_len=3)
    gpt = _gpt()
    with pytest.raises(ValueError, match="prompt"):
        generate(gpt, torch.zeros(1, 0, dtype=torch.long))
