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
* A step interface for :mod:`paperzoo.generate` (``init_state`` / ``step``): with ``use_cache=True`` (the
  default) the steps run :mod:`paperzoo.models.fast_decode` (a KV cache of at most ``block_size`` positions);
  ``use_cache=False`` re-runs this file's blocks over the context each step, the reference.

Deviations:
* Beyond ``block_size`` tokens, generation keeps the last ``block_size`` tokens as context and re-runs them
  (as nanoGPT does); the KV cache only covers the first ``block_size`` positions.
* Prompts in one batch must have the same length (no left padding).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from ..generate import BeamSearchOutput
from ..layers.attention import MultiHeadAttention
from ..layers.pos_embed import SinusoidalPositionalEncoding
from ..registry import Paper, register_model
from .fast_decode import GPTCache, start_gpt, step_gpt

__all__ = ["GPTConfig", "GPT", "Block", "GPTState", "gpt2_init_"]

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

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """x: (B, T, C) -> (B, T, C); position i attends to positions <= i (and, with a bool ``attn_mask``
        broadcasting to (B, heads, T, T), only where it is True: DALL-E's sparse masks)."""
        x = x + self.drop(self.attn(self.ln_1(x), attn_mask=attn_mask, is_causal=True)[0])
        return x + self.mlp(self.ln_2(x))


@dataclass
class GPTState:
    """Decoding state without a cache (``init_state(use_cache=False)``): every step re-runs the blocks over the
    last ``block_size`` tokens, the reference the KV-cached :class:`~paperzoo.models.fast_decode.GPTCache` is
    tested against.

    Attributes:
        tokens: (B, t) every token fed so far (the prompt, then the generated ones).
    """

    tokens: Tensor

    def reorder(self, index: Tensor) -> GPTState:
        """Select batch rows (beam search expands and reorders beams with this)."""
        return GPTState(self.tokens.index_select(0, index))


def gpt2_init_(model: nn.Module, blocks: Iterable[Block], params: Iterable[nn.Parameter] = ()) -> None:
    """GPT-2's initialisation, in place: N(0, 0.02) for every Linear / Embedding weight and for ``params`` (free
    embedding tensors), zero biases, and the residual projections of ``blocks`` N(0, 0.02/√(2·n_layer))."""
    blocks = list(blocks)
    for m in model.modules():
        if isinstance(m, nn.Linear | nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
    for p in params:
        nn.init.normal_(p, std=0.02)
    for block in blocks:
        for proj in (block.attn.out_proj, block.mlp.c_proj):
            nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * len(blocks)))


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
        gpt2_init_(self, self.h)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; by default without the position table (as GPT-2's paper counts)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.wpe.weight.numel() if non_embedding and self.cfg.pos == "learned" else n

    def hidden(self, idx: Tensor) -> Tensor:
        """(B, T) ids -> final hidden states (B, T, C), before the output layer."""
        x = self.wte(idx)  # (B, T) -> (B, T, C)
        if self.cfg.pos == "learned":
            x = x + self.wpe.weight[: idx.shape[1]]  # positions 0 .. T-1, (T, C) broadcast over the batch
        else:
            x = self.sinusoid(x)
        x = self.drop(x)
        for block in self.h:
            x = block(x)
        return self.ln_f(x)

    def _check(self, idx: Tensor) -> None:
        if idx.dim() != 2 or idx.dtype not in (torch.long, torch.int32):
            raise ValueError(f"idx must be integer token ids of shape (B, T), got {tuple(idx.shape)} {idx.dtype}")
        if idx.shape[1] > self.cfg.block_size:
            raise ValueError(f"sequence of length {idx.shape[1]} is longer than block_size={self.cfg.block_size}; "
                             "truncate it or build the model with a larger block_size")

    def forward(self, idx: Tensor) -> Tensor:
        self._check(idx)
        return self.lm_head(self.hidden(idx))

    # --------------------------------------------------------------------------- step interface (generate.py)
    def init_state(self, prefix: Tensor, src_lengths: Tensor | None = None, *, use_cache: bool = True
                   ) -> GPTState | GPTCache:
        """Read a prompt prefix (B, t) (may be empty); the next ``step`` gets the token that follows it."""
        if src_lengths is not None and bool((src_lengths != prefix.shape[1]).any()):
            raise ValueError("GPT prompts in one batch must have the same length (no left padding)")
        if prefix.shape[1] > 0:
            self._check(prefix)
        return start_gpt(self, prefix) if use_cache else GPTState(prefix)

    def step(self, tokens: Tensor, state: GPTState | GPTCache) -> tuple[Tensor, GPTState | GPTCache]:
        """Feed the last tokens (B,) and return the next-token logits (B, V) and the new state."""
        if isinstance(state, GPTCache) and state.tokens.shape[1] < self.cfg.block_size:
            return step_gpt(self, tokens, state)
        # no cache, or past block_size: the last block_size tokens as context (a full cache no longer grows)
        seq = torch.cat([state.tokens, tokens[:, None]], dim=1)  # (B, t + 1)
        return self.lm_head(self.hidden(seq[:, -self.cfg.block_size :])[:, -1]), replace(state, tokens=seq)

    @torch.inference_mode()
    def generate(self, prompt: Tensor, max_new_tokens: int, **kwargs: Any) -> Tensor:
        """Continue ``prompt`` (B, T0) by ``max_new_tokens`` tokens; returns (B, T0 + new) (see generate.py)."""
        from ..generate import generate

        kwargs.setdefault("method", "sample")
        out = generate(self, prompt, max_len=max_new_tokens, **kwargs)
        tokens = out.tokens[:, 0] if isinstance(out, BeamSearchOutput) else out  # beam search: the best hypothesis
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
