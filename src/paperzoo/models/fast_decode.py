"""KV-cached decoding for the Transformer and GPT: their decoder layers restated for inference, one token a step.

:mod:`paperzoo.generate` decodes one token per step. Without a cache, each step re-runs the decoder over the
whole prefix (``init_state(use_cache=False)``, the reference). With one, only the new position runs: every
layer keeps the keys and values of the positions before it (a :class:`KVCache`), and the Transformer's
encoder-decoder keys/values, which depend on the source only (Vaswani et al., arXiv:1706.03762, Sec. 3.2.3),
are projected once per source.

Why this module restates the layers instead of calling their ``forward(..., cache=...)``: at batch 1 a small
model's decoding step is mostly fixed per-call cost, not arithmetic: module calls (~2 µs each), ``nn.Module``
attribute lookups (~0.5 µs each), shape checks, eval-mode dropout calls. Through the layers' own ``forward``
the cached greedy decoding of gpt_mini was 4.4x faster than uncached at batch 1 (target: 5x); these
functional steps, on tensors looked up once per decoding state, reach 5.9x (benchmarks/bench_transformer.py).
The paper files (models/transformer.py, models/gpt.py) keep one statement of each layer; this module is the
second, and tests/models/test_fast_decode.py holds every function here equal to the module it restates:

* :func:`self_attention_step`, :func:`cross_attention_step`: ``MultiHeadAttention.forward`` in eval mode;
* :func:`decoder_layer_step`: ``transformer.DecoderLayer.forward``; :func:`block_step`: ``gpt.Block.forward``;
* :class:`TransformerCache` / :class:`GPTCache`: the states ``init_state(use_cache=True)`` returns, advanced by
  :func:`step_transformer` / :func:`step_gpt` (``Transformer.step`` / ``GPT.step`` call them).

Inference only: no dropout, no attention weights. A state holds references to the parameters (in-place updates
such as an optimizer step show through; a parameter *replaced* by a new tensor does not). Its caches are
written in place, so a step consumes the state it was given; ``state.reorder`` copies (beam search).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..layers.attention import MultiHeadAttention, scaled_dot_product_attention
from ..layers.residual import residual

if TYPE_CHECKING:
    from .gpt import GPT, Block
    from .transformer import DecoderLayer, Transformer

__all__ = ["KVCache", "AttentionWeights", "attention_weights", "self_attention_step", "memory_kv",
           "cross_attention_step", "DecoderLayerWeights", "decoder_layer_weights", "decoder_layer_step",
           "TransformerCache", "start_transformer", "step_transformer", "BlockWeights", "block_weights",
           "block_step", "GPTCache", "start_gpt", "step_gpt"]

KV = tuple[Tensor, Tensor]  # keys, values: each (B, heads, S, d)


class KVCache:
    """Keys and values of one attention layer for step-by-step decoding, in preallocated buffers.

    ``k`` and ``v`` are (B, heads, T_max, d) buffers whose first ``length`` positions are filled. :meth:`append`
    writes new positions by slice assignment and returns views of the filled part, so a decoding step copies
    only its own (B, heads, 1, d) and allocates nothing: concatenating instead would copy the whole cache and
    allocate a new one at every step, O(T²) bytes per sequence. The buffers are allocated on the first append
    (with that tensor's batch, heads, d, dtype and device) for ``capacity`` positions; when they are full they
    double, like a Python list (amortised O(1) per position), up to ``max_length`` if given, past which
    :meth:`append` raises a ValueError.

    The cache is updated in place: a decoding state that holds it is consumed by the step that extends it.
    :meth:`reorder` returns an independent copy (beam search selects and duplicates beams with it).
    """

    def __init__(self, capacity: int = 64, max_length: int | None = None) -> None:
        if capacity < 1 or (max_length is not None and max_length < 1):
            raise ValueError(f"capacity and max_length must be >= 1, got {capacity}, {max_length}")
        self.capacity = capacity if max_length is None else min(capacity, max_length)
        self.max_length = max_length
        self.length = 0  # positions filled
        self.k: Tensor | None = None  # (B, heads, T_max, d); None until the first append
        self.v: Tensor | None = None

    @property
    def keys(self) -> Tensor:
        """The cached keys (B, heads, length, d), a view of the buffer."""
        if self.k is None:
            raise ValueError("the KV cache is empty")
        return self.k[:, :, : self.length]

    @property
    def values(self) -> Tensor:
        """The cached values (B, heads, length, d), a view of the buffer."""
        if self.v is None:
            raise ValueError("the KV cache is empty")
        return self.v[:, :, : self.length]

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write k, v (B, heads, L, d) at positions ``length`` .. ``length + L - 1``; return every key and value
        cached so far, (B, heads, length + L, d) views."""
        start, end = self.length, self.length + k.shape[2]
        if self.max_length is not None and end > self.max_length:
            raise ValueError(f"KV cache overflow: {end} positions requested, max_length={self.max_length}")
        if self.k is None:
            self.k = k.new_empty(k.shape[0], k.shape[1], max(self.capacity, end), k.shape[3])
            self.v = v.new_empty(self.k.shape)
        elif (k.shape[:2] != self.k.shape[:2] or k.shape[3] != self.k.shape[3] or v.shape != k.shape
              or k.dtype != self.k.dtype):
            # slice assignment would broadcast a batch of 1 into every row, or cast: refuse it by name instead
            raise ValueError(f"KV cache holds (B, heads, T, d) = {tuple(self.k.shape)} {self.k.dtype}; cannot "
                             f"append keys {tuple(k.shape)} {k.dtype} and values {tuple(v.shape)}")
        if end > self.k.shape[2]:
            self._grow(end)
        self.k.narrow(2, start, end - start).copy_(k)  # in place: positions < start are untouched
        self.v.narrow(2, start, end - start).copy_(v)
        self.length = end
        return self.k.narrow(2, 0, end), self.v.narrow(2, 0, end)

    def _grow(self, needed: int) -> None:
        size = max(needed, 2 * self.k.shape[2])
        size = size if self.max_length is None else min(size, self.max_length)
        k = self.k.new_empty(self.k.shape[0], self.k.shape[1], size, self.k.shape[3])
        v = self.v.new_empty(k.shape)
        k[:, :, : self.length] = self.keys
        v[:, :, : self.length] = self.values
        self.k, self.v, self.capacity = k, v, size

    def reorder(self, index: Tensor) -> KVCache:
        """A new cache holding batch rows ``index`` (1-D, may repeat rows): ``index_select`` on dim 0."""
        new = KVCache(self.capacity, self.max_length)
        new.length = self.length
        if self.k is not None:
            new.k, new.v = self.k.index_select(0, index), self.v.index_select(0, index)
        return new

    def __repr__(self) -> str:
        shape = None if self.k is None else tuple(self.k.shape)
        return f"KVCache(length={self.length}, buffer={shape}, max_length={self.max_length})"


def _check_length(caches: list[KVCache], length: int) -> None:
    """Refuse a decoding state whose caches hold other than ``length`` positions: a previous step already
    extended them in place (stepping one state twice would silently overwrite what the first step wrote)."""
    if caches and caches[0].length != length:
        raise ValueError(f"this decoding state has {length} tokens but its KV cache {caches[0].length}: it was "
                         "already advanced by step(), which extends the cache in place; copy it with "
                         "state.reorder(torch.arange(B)) to step it more than once")



# ------------------------------------------------------------------------------------ multi-head attention
class AttentionWeights(NamedTuple):
    """The projections of one :class:`MultiHeadAttention`, looked up once (references, not copies)."""

    in_proj_weight: Tensor  # [Wᑫ; Wᴷ; Wⱽ] (3C, C)
    in_proj_bias: Tensor | None
    out_proj_weight: Tensor  # Wᴼ (C, C)
    out_proj_bias: Tensor | None
    num_heads: int


def attention_weights(attn: MultiHeadAttention) -> AttentionWeights:
    return AttentionWeights(attn.in_proj.weight, attn.in_proj.bias, attn.out_proj.weight, attn.out_proj.bias,
                            attn.num_heads)


def self_attention_step(x: Tensor, cache: KVCache, w: AttentionWeights, attn_mask: Tensor | None = None) -> Tensor:
    """Causal self-attention of positions x (B, L, C) that follow the cached ones: their keys/values are
    appended to ``cache``, and they attend to every cached position and causally among themselves (and only
    where a bool ``attn_mask`` (L, cached + L) is True, if one is given: DALL-E's sparse masks)."""
    b, n, c = x.shape
    qkv = F.linear(x, w.in_proj_weight, w.in_proj_bias)  # (B, L, 3C), one fused matmul
    qkv = qkv.view(b, n, 3, w.num_heads, c // w.num_heads)  # (B, L, 3C) -> (B, L, 3, heads, d)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (3, B, heads, L, d) -> q, k, v each (B, heads, L, d)
    k, v = cache.append(k, v)  # (B, heads, cached + L, d)
    # one new position sees every key: no causal mask
    out, _ = scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=n > 1)
    out = out.transpose(1, 2).reshape(b, n, c)  # (B, heads, L, d) -> (B, L, C): Concat
    return F.linear(out, w.out_proj_weight, w.out_proj_bias)  # · Wᴼ


def memory_kv(attn: MultiHeadAttention, memory: Tensor) -> KV:
    """The Wᴷ, Wⱽ rows of the in-projection applied to the encoder output (B, S, C), once per source."""
    e, h, d = attn.embed_dim, attn.num_heads, attn.head_dim
    b = attn.in_proj.bias
    kv = F.linear(memory, attn.in_proj.weight[e:], None if b is None else b[e:])  # (B, S, 2C)
    kv = kv.view(memory.shape[0], memory.shape[1], 2, h, d).permute(2, 0, 3, 1, 4)  # (2, B, heads, S, d)
    return kv[0], kv[1]


def cross_attention_step(x: Tensor, kv: KV, w: AttentionWeights, allowed: Tensor | None) -> Tensor:
    """Encoder-decoder attention of x (B, L, C) to precomputed keys/values (each (B, heads, S, d)); ``allowed``
    (B, 1, 1, S) is True at real source tokens, or None without padding. Only the Wᑫ rows are applied."""
    b, n, c = x.shape
    bias = None if w.in_proj_bias is None else w.in_proj_bias[:c]
    q = F.linear(x, w.in_proj_weight[:c], bias).view(b, n, w.num_heads, c // w.num_heads)  # (B, L, heads, d)
    out, _ = scaled_dot_product_attention(q.transpose(1, 2), kv[0], kv[1], attn_mask=allowed)  # (B, heads, L, d)
    out = out.transpose(1, 2).reshape(b, n, c)  # (B, heads, L, d) -> (B, L, C): Concat
    return F.linear(out, w.out_proj_weight, w.out_proj_bias)  # · Wᴼ


# -------------------------------------------------------------------------------------------- Transformer
class DecoderLayerWeights(NamedTuple):
    """The tensors of one ``transformer.DecoderLayer``, looked up once."""

    self_attn: AttentionWeights
    cross_attn: AttentionWeights
    norms: tuple[tuple[Tensor, Tensor], ...]  # (weight, bias) of norm1, norm2, norm3
    ff1_weight: Tensor
    ff1_bias: Tensor
    ff2_weight: Tensor
    ff2_bias: Tensor
    eps: float
    norm_first: bool
    act: Callable[[Tensor], Tensor]


def decoder_layer_weights(layer: DecoderLayer) -> DecoderLayerWeights:
    norms = tuple((n.weight, n.bias) for n in (layer.norm1, layer.norm2, layer.norm3))
    f = layer.ffn
    return DecoderLayerWeights(attention_weights(layer.self_attn), attention_weights(layer.cross_attn), norms,
                               f.linear1.weight, f.linear1.bias, f.linear2.weight, f.linear2.bias,
                               layer.norm1.eps, layer.norm_first, F.relu if isinstance(f.act, nn.ReLU) else F.gelu)


def decoder_layer_step(x: Tensor, kv: KV, allowed: Tensor | None, cache: KVCache, w: DecoderLayerWeights
                       ) -> Tensor:
    """``DecoderLayer.forward`` in eval mode for positions x (B, L, C) that follow the cached ones."""
    c = x.shape[-1]

    def norm(i: int) -> Callable[[Tensor], Tensor]:
        return lambda t: F.layer_norm(t, (c,), w.norms[i][0], w.norms[i][1], w.eps)

    def ffn(t: Tensor) -> Tensor:
        return F.linear(w.act(F.linear(t, w.ff1_weight, w.ff1_bias)), w.ff2_weight, w.ff2_bias)

    x = residual(x, lambda h: self_attention_step(h, cache, w.self_attn), norm(0), w.norm_first)
    x = residual(x, lambda h: cross_attention_step(h, kv, w.cross_attn, allowed), norm(1), w.norm_first)
    return residual(x, ffn, norm(2), w.norm_first)


@dataclass
class TransformerCache:
    """A Transformer's KV-cached decoding state; every tensor has the batch (or beam) first.

    Attributes:
        allowed: (B, 1, 1, S) True at real source tokens, or None when no source is padded.
        tokens: (B, t) decoder inputs fed so far (BOS first).
        memory_kv: per decoder layer, the encoder-decoder (k, v), each (B, heads, S, d).
        self_kv: per decoder layer, the self-attention keys/values of the t positions so far.
        weights: per decoder layer, the tensors a step reads.
    """

    allowed: Tensor | None
    tokens: Tensor
    memory_kv: list[KV]
    self_kv: list[KVCache]
    weights: list[DecoderLayerWeights]

    def reorder(self, index: Tensor) -> TransformerCache:
        """Select batch rows (beam search expands and reorders beams with this); the caches are copied."""
        return TransformerCache(None if self.allowed is None else self.allowed.index_select(0, index),
                                self.tokens.index_select(0, index),
                                [(k.index_select(0, index), v.index_select(0, index)) for k, v in self.memory_kv],
                                [c.reorder(index) for c in self.self_kv], self.weights)


def start_transformer(model: Transformer, memory: Tensor, key_padding_mask: Tensor | None) -> TransformerCache:
    """The state before the first step, from the encoder output (B, S, C) and its padding mask (B, S)."""
    layers = model.decoder.layers
    allowed = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]  # (B, 1, 1, S)
    return TransformerCache(allowed, memory.new_zeros(memory.shape[0], 0, dtype=torch.long),
                            [memory_kv(layer.cross_attn, memory) for layer in layers], [KVCache() for _ in layers],
                            [decoder_layer_weights(layer) for layer in layers])


def step_transformer(model: Transformer, tokens: Tensor, state: TransformerCache) -> tuple[Tensor, TransformerCache]:
    """Feed the last tokens (B,): next-token logits (B, V) and the new state. Only the new position runs."""
    t = state.tokens.shape[1]
    _check_length(state.self_kv, t)
    x = model.embed(tokens[:, None], model.tgt_embed, offset=t)  # (B, 1, C)
    for kv, cache, w in zip(state.memory_kv, state.self_kv, state.weights):
        x = decoder_layer_step(x, kv, state.allowed, cache, w)
    if model.decoder.norm is not None:
        x = model.decoder.norm(x)
    tokens_so_far = torch.cat([state.tokens, tokens[:, None]], dim=1)  # (B, t + 1)
    return model.generator(x[:, -1]), TransformerCache(state.allowed, tokens_so_far, state.memory_kv,
                                                      state.self_kv, state.weights)


# ---------------------------------------------------------------------------------------------------- GPT
class BlockWeights(NamedTuple):
    """The tensors of one ``gpt.Block``, looked up once."""

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
    gelu: str  # "tanh" or "none", F.gelu's approximate=


def block_weights(block: Block) -> BlockWeights:
    mlp = block.mlp
    return BlockWeights(block.ln_1.weight, block.ln_1.bias, attention_weights(block.attn), block.ln_2.weight,
                        block.ln_2.bias, mlp.c_fc.weight, mlp.c_fc.bias, mlp.c_proj.weight, mlp.c_proj.bias,
                        block.ln_1.eps, mlp.act.approximate)


def block_step(x: Tensor, cache: KVCache, w: BlockWeights, attn_mask: Tensor | None = None) -> Tensor:
    """``Block.forward`` in eval mode for positions x (B, L, C) that follow the cached ones (``attn_mask``: the
    rows of these positions, (L, cached + L) bool)."""
    c = x.shape[-1]
    x = x + self_attention_step(F.layer_norm(x, (c,), w.ln_1_weight, w.ln_1_bias, w.eps), cache, w.attn,
                                attn_mask)
    h = F.layer_norm(x, (c,), w.ln_2_weight, w.ln_2_bias, w.eps)
    h = F.gelu(F.linear(h, w.c_fc_weight, w.c_fc_bias), approximate=w.gelu)
    return x + F.linear(h, w.c_proj_weight, w.c_proj_bias)


@dataclass
class GPTCache:
    """GPT's KV-cached decoding state; every tensor has the batch first.

    Attributes:
        tokens: (B, t) every token fed so far (the prompt, then the generated ones).
        kv: per block, the self-attention keys/values of the first min(t, block_size) positions.
        weights: per block, the tensors a step reads.
    """

    tokens: Tensor
    kv: list[KVCache]
    weights: list[BlockWeights]

    def reorder(self, index: Tensor) -> GPTCache:
        """Select batch rows (beam search expands and reorders beams with this); the caches are copied."""
        return GPTCache(self.tokens.index_select(0, index), [c.reorder(index) for c in self.kv], self.weights)


def _gpt_hidden(model: GPT, idx: Tensor, state: GPTCache) -> Tensor:
    """Ids (B, L) at the positions after the cached ones -> final hidden states (B, L, C); fills the caches."""
    offset = state.kv[0].length
    x = F.embedding(idx, model.wte.weight)  # (B, L, C)
    if model.cfg.pos == "learned":
        x = x + model.wpe.weight[offset : offset + idx.shape[1]]  # (L, C) rows of positions offset.., broadcast
    else:
        x = model.sinusoid(x, offset)
    for cache, w in zip(state.kv, state.weights):
        x = block_step(x, cache, w)
    return model.ln_f(x)


def start_gpt(model: GPT, prefix: Tensor) -> GPTCache:
    """The state after a prompt prefix (B, t) (may be empty): its keys/values are cached in one pass."""
    size = model.cfg.block_size
    state = GPTCache(prefix, [KVCache(min(64, size), max_length=size) for _ in model.h],
                     [block_weights(block) for block in model.h])
    if prefix.shape[1] > 0:
        _gpt_hidden(model, prefix, state)
    return state


def step_gpt(model: GPT, tokens: Tensor, state: GPTCache) -> tuple[Tensor, GPTCache]:
    """Feed the last tokens (B,) at a position < block_size: next-token logits (B, V) and the new state."""
    _check_length(state.kv, state.tokens.shape[1])
    h = _gpt_hidden(model, tokens[:, None], state)  # (B, 1, C): only the new position runs
    return model.lm_head(h[:, -1]), GPTCache(torch.cat([state.tokens, tokens[:, None]], dim=1), state.kv,
                                             state.weights)
