"""A GPT-style decoder-only language model.

* Radford et al., "Language Models are Unsupervised Multitask Learners" (GPT-2, OpenAI 2019; no arXiv id),
  building on Radford et al., "Improving Language Understanding by Generative Pre-Training" (GPT, 2018).
* The decoder block is the Transformer's (Vaswani et al., arXiv:1706.03762, Sec. 3.1) without the
  encoder-decoder attention: masked multi-head self-attention and a position-wise MLP.

Notable features (GPT-2, Sec. 2.3 of its paper, and the choices popularised by nanoGPT):
* Pre-norm blocks: LayerNorm at the input of each sub-block and one more after the last block.
* Causal self-attention through ``F.scaled_dot_product_attention(is_causal=True)`` via
  :class:`paperzoo.layers.MultiHeadAttention` (fused Q/K/V projection).
* Learned absolute positions (GPT-2) or fixed sinusoidal ones (Vaswani et al. Sec. 3.5) with ``pos="sinusoidal"``.
* The output projection is tied to the token embedding (Press & Wolf, arXiv:1608.05859).
* GPT-2 initialisation: N(0, 0.02) weights, zero biases, and the residual projections (attention output and
  MLP output) scaled by 1/√(2·n_layer) "to account for the accumulation on the residual path".
* GELU in GPT-2's tanh approximation, as OpenAI's code has it (``gelu_approx=False``: the exact erf form,
  which nanoGPT uses).
* A KV cache for :mod:`paperzoo.generate` (``init_state`` / ``step``): preallocated per-block buffers
  (:class:`KVCache`, at most ``block_size`` positions) written in place, one position per step. In eval mode a
  step runs :meth:`Block.step`, the block's arithmetic as functional calls on its parameters, because at batch 1
  a small model's step is mostly per-call overhead (BENCHMARKS.md, KV cache).

Deviations:
* Beyond ``block_size`` tokens, generation keeps the last ``block_size`` tokens as context and re-runs them
  (as nanoGPT does); the KV cache only covers the first ``block_size`` positions.
* Prompts in one batch must have the same length (no left padding).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..layers.attention import AttentionWeights, KVCache, MultiHeadAttention, cached_self_attention, check_cache_length
from ..layers.pos_embed import SinusoidalPositionalEncoding
from ..registry import Paper, register_model

__all__ = ["GPTConfig", "GPT", "Block", "BlockWeights", "GPTState"]

PAPER = Paper("Language Models are Unsupervised Multitask Learners (GPT-2)", "n/a", 2019)


@dataclass
class GPTConfig:
    """GPT hyper-parameters with GPT-2's names (``n_ctx`` is ``block_size``)."""

    vocab_size: int = 50257
    block_size: int = 1024  # longest context
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0  # residual, embedding and attention dropout (GPT-2 used 0.1 when pre-training)
    bias: bool = True  # biases in Linear layers and LayerNorms, as GPT-2
    pos: str = "learned"  # "learned" (GPT-2) or "sinusoidal" (Vaswani et al. Sec. 3.5)
    tie_weights: bool = True
    gelu_approx: bool = True  # GPT-2's tanh GELU; False: exact erf (also ~4x slower on a 512-wide CPU vector)
    layer_norm_eps: float = 1e-5


class MLP(nn.Module):
    """Position-wise MLP with a 4x hidden width and GELU (GPT, Sec. 4.1 of the 2018 paper)."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.act = nn.GELU(approximate="tanh" if cfg.gelu_approx else "none")
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)  # a residual projection
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.c_proj(self.act(self.c_fc(x))))


class Block(nn.Module):
    """x + Attn(LN(x)), then x + MLP(LN(x)): the pre-norm decoder block of GPT-2."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.attn = MultiHeadAttention(cfg.n_embd, cfg.n_head, dropout=cfg.dropout, bias=cfg.bias)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, cache: KVCache | None = None) -> Tensor:
        """x: (B, T, C) -> (B, T, C); with a ``cache`` the T positions follow the cached ones and are appended."""
        # Causal: position i attends to positions <= i. A single new token with a cache sees all the cache.
        out, _ = self.attn(self.ln_1(x), is_causal=x.shape[1] > 1, cache=cache)
        x = x + self.drop(out)
        return x + self.mlp(self.ln_2(x))

    def decode_weights(self) -> BlockWeights:
        """This block's tensors for :meth:`step`, looked up once: a decoding state holds them for its steps."""
        return BlockWeights(self.ln_1.weight, self.ln_1.bias, self.attn.decode_weights(), self.ln_2.weight,
                            self.ln_2.bias, self.mlp.c_fc.weight, self.mlp.c_fc.bias, self.mlp.c_proj.weight,
                            self.mlp.c_proj.bias, self.ln_1.eps, self.mlp.act.approximate)

    def step(self, x: Tensor, cache: KVCache, w: BlockWeights | None = None) -> Tensor:
        """``forward(x, cache)`` in eval mode for new positions x (B, L, C) that follow the cached ones.

        The same arithmetic as ``forward`` (tests hold them equal) as functional calls on the tensors of
        ``w = decode_weights()``: no module calls or attribute lookups through ``nn.Module``, no dropout, no mask
        logic. Decoding one token at batch 1, a d = 128 model spends most of its step on exactly that per-call
        overhead (~25 module attribute lookups per block at ~0.5 µs each, BENCHMARKS.md). In training mode it is
        ``forward``; forward hooks on the submodules do not run here.
        """
        if self.training:
            return self(x, cache)
        w = self.decode_weights() if w is None else w
        c = x.shape[-1]
        x = x + cached_self_attention(F.layer_norm(x, (c,), w.ln_1_weight, w.ln_1_bias, w.eps), cache, w.attn)
        h = F.layer_norm(x, (c,), w.ln_2_weight, w.ln_2_bias, w.eps)
        h = F.gelu(F.linear(h, w.c_fc_weight, w.c_fc_bias), approximate=w.gelu)
        return x + F.linear(h, w.c_proj_weight, w.c_proj_bias)


class BlockWeights(NamedTuple):
    """The tensors of one :class:`Block`, as :meth:`Block.step` reads them (references, not copies:
    in-place updates such as an optimizer step show through; a parameter *replaced* by a new one does not)."""

    ln_1_weight: Tensor
    ln_1_bias: Tensor | None
    attn: AttentionWeights
    ln_2_weight: Tensor
    ln_2_bias: Tensor | None
    c_fc_weight: Tensor
    c_fc_bias: Tensor | None
    c_proj_weight: Tensor
    c_proj_bias: Tensor | None
    eps: float
    gelu: str


@dataclass
class GPTState:
    """Decoding state for :mod:`paperzoo.generate`; every tensor has the batch first.

    Attributes:
        tokens: (B, t) every token fed so far (the prompt, then the generated ones).
        kv: per block, a :class:`KVCache` of the self-attention keys/values (B, heads, min(t, block_size), d),
            written in place (so ``step`` consumes the state); None when not caching.
        use_cache: append keys/values per step (True) or re-run the context each step (False).
        weights: per block, the tensors a cached step reads (:meth:`Block.decode_weights`), looked up once.
    """

    tokens: Tensor
    kv: list[KVCache] | None = None
    use_cache: bool = True
    weights: list[BlockWeights] | None = None

    def reorder(self, index: Tensor) -> GPTState:
        """Select batch rows (beam search expands and reorders beams with this); the caches are copied."""
        kv = None if self.kv is None else [c.reorder(index) for c in self.kv]
        return GPTState(self.tokens.index_select(0, index), kv, self.use_cache, self.weights)


class GPT(nn.Module):
    """Decoder-only LM: ``forward(idx (B, T)) -> logits (B, T, vocab_size)`` for the next token at each position."""

    is_decoder_only = True

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        if cfg.pos not in ("learned", "sinusoidal"):
            raise ValueError(f"pos must be 'learned' or 'sinusoidal', got {cfg.pos!r}")
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        if cfg.pos == "learned":
            self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        else:
            self.sinusoid = SinusoidalPositionalEncoding(cfg.n_embd, cfg.block_size)
        self.drop = nn.Dropout(cfg.dropout)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_weights:
            self.lm_head.weight = self.wte.weight
        self._init_weights()

    def _init_weights(self) -> None:
        # GPT-2: N(0, 0.02) everywhere, zero biases; residual projections N(0, 0.02/√(2·n_layer)).
        for m in self.modules():
            if isinstance(m, nn.Linear | nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
        for block in self.h:
            for proj in (block.attn.out_proj, block.mlp.c_proj):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * self.cfg.n_layer))

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; by default without the position table (as GPT-2's paper counts)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.wpe.weight.numel() if non_embedding and self.cfg.pos == "learned" else n

    def _embed(self, idx: Tensor, offset: int) -> Tensor:
        # functional lookups and no eval-mode dropout call: decoding runs this once per token (see Block.step)
        x = F.embedding(idx, self.wte.weight)  # (B, T) -> (B, T, C)
        if self.cfg.pos == "learned":
            x = x + self.wpe.weight[offset : offset + idx.shape[1]]  # rows of positions offset.., (T, C) broadcast
        else:
            x = self.sinusoid(x, offset)
        return self.drop(x) if self.training else x

    def _run(self, idx: Tensor, offset: int = 0, cache: list[KVCache] | None = None,
             weights: list[BlockWeights] | None = None) -> Tensor:
        """(B, T) ids at positions offset .. offset + T - 1 -> final hidden states (B, T, C); with a ``cache``
        the blocks run :meth:`Block.step` (on ``weights`` if given)."""
        x = self._embed(idx, offset)
        if cache is None:
            for block in self.h:
                x = block(x)
        else:
            for i, block in enumerate(self.h):
                x = block.step(x, cache[i], None if weights is None else weights[i])  # forward() when training
        return self.ln_f(x)

    def new_cache(self) -> list[KVCache]:
        """One empty :class:`KVCache` per block, holding at most ``block_size`` positions."""
        return [KVCache(min(64, self.cfg.block_size), max_length=self.cfg.block_size) for _ in self.h]

    def _check(self, idx: Tensor) -> None:
        if idx.dim() != 2 or idx.dtype not in (torch.long, torch.int32):
            raise ValueError(f"idx must be integer token ids of shape (B, T), got {tuple(idx.shape)} {idx.dtype}")
        if idx.shape[1] > self.cfg.block_size:
            raise ValueError(f"sequence of length {idx.shape[1]} is longer than block_size={self.cfg.block_size}; "
                             "truncate it or build the model with a larger block_size")

    def forward(self, idx: Tensor) -> Tensor:
        self._check(idx)
        return self.lm_head(self._run(idx))

    # --------------------------------------------------------------------------- step interface (generate.py)
    def init_state(self, prefix: Tensor, src_lengths: Tensor | None = None, *, use_cache: bool = True) -> GPTState:
        """Read a prompt prefix (B, t) (may be empty); the next ``step`` gets the token that follows it."""
        if src_lengths is not None and bool((src_lengths != prefix.shape[1]).any()):
            raise ValueError("GPT prompts in one batch must have the same length (no left padding)")
        if not use_cache:
            return GPTState(prefix, None, use_cache)
        cache, weights = self.new_cache(), [block.decode_weights() for block in self.h]
        if prefix.shape[1] > 0:
            self._check(prefix)
            self._run(prefix, cache=cache, weights=weights)  # fills the caches in one pass (causal)
        return GPTState(prefix, cache, use_cache, weights)

    def step(self, tokens: Tensor, state: GPTState) -> tuple[Tensor, GPTState]:
        """Feed the last tokens (B,) and return the next-token logits (B, V) and the new state."""
        t = state.tokens.shape[1]
        seq = torch.cat([state.tokens, tokens[:, None]], dim=1)  # (B, t + 1)
        if state.use_cache and t < self.cfg.block_size:
            check_cache_length(state.kv, t)
            h = self._run(tokens[:, None], t, state.kv, state.weights)  # (B, 1, C): only the new position runs
        else:  # no cache, or past block_size: the last block_size tokens as context (cache no longer grows)
            h = self._run(seq[:, -self.cfg.block_size :])
        return self.lm_head(h[:, -1]), GPTState(seq, state.kv, state.use_cache, state.weights)

    @torch.inference_mode()
    def generate(self, prompt: Tensor, max_new_tokens: int, **kwargs: Any) -> Tensor:
        """Continue ``prompt`` (B, T0) by ``max_new_tokens`` tokens; returns (B, T0 + new) (see generate.py)."""
        from ..generate import generate

        kwargs.setdefault("method", "sample")
        out = generate(self, prompt, max_len=max_new_tokens, **kwargs)
        tokens = out.tokens[:, 0] if hasattr(out, "tokens") else out  # beam search: the best hypothesis
        return torch.cat([prompt, tokens], dim=1)


# ----------------------------------------------------------------------------------------- registered models
def _gpt(**kw: Any) -> GPT:
    return GPT(GPTConfig(**kw))


# GPT-2 small: 124,439,808 parameters with the tied output layer (OpenAI's checkpoint, as counted by nanoGPT).
@register_model(family="gpt", paper=PAPER, kind="sequence", ref_params=124_439_808, ref_source="openai-gpt2",
                tags=("lm",))
def gpt2(**kw: Any) -> GPT:
    """GPT-2 small (117M in the paper's Table 2): 12 layers, 12 heads, d=768, 1024 context, 50257 tokens."""
    return _gpt(**{"n_layer": 12, "n_head": 12, "n_embd": 768, "block_size": 1024, "vocab_size": 50257, **kw})


@register_model(family="gpt", paper=PAPER, kind="sequence", tags=("lm", "small"))
def gpt_mini(**kw: Any) -> GPT:
    """4 layers, 4 heads, d=128, 256 context: a subword LM that trains in minutes on a CPU."""
    return _gpt(**{"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 256, "vocab_size": 4096, **kw})


@register_model(family="gpt", paper=PAPER, kind="sequence", tags=("lm", "small"))
def gpt_char_small(**kw: Any) -> GPT:
    """6 layers, 6 heads, d=192, 256 context, dropout 0.1: a character-level LM (e.g. on fortunes)."""
    return _gpt(**{"n_layer": 6, "n_head": 6, "n_embd": 192, "block_size": 256, "vocab_size": 256,
                   "dropout": 0.1, **kw})
