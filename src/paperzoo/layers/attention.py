"""Scaled dot-product and multi-head attention.

Vaswani et al., "Attention Is All You Need", arXiv:1706.03762.

    Attention(Q, K, V) = softmax(Q Kᵀ / √d_k) V                                  (Sec. 3.2.1, Eq. 1)
    MultiHead(Q, K, V) = Concat(head_1, ..., head_h) Wᴼ,
        head_i = Attention(Q W_iᑫ, K W_iᴷ, V W_iⱽ)                               (Sec. 3.2.2)

Two paths compute Eq. 1:
* ``attention_explicit``: the formula written out; returns the attention weights (for teaching and
  for attention maps);
* ``F.scaled_dot_product_attention``: PyTorch's fused kernels (flash / memory-efficient / math), used
  whenever the weights are not needed. A test proves the two agree, masks included.

Mask conventions (the same as ``F.scaled_dot_product_attention``): a *boolean* ``attn_mask`` is True where a
query **may** attend to a key; a float mask is *added* to the scores (use -inf to block). ``key_padding_mask``
follows ``nn.MultiheadAttention``: True marks padding keys to ignore.

For step-by-step decoding, :class:`KVCache` keeps one layer's keys and values in preallocated buffers that are
written in place (no ``torch.cat`` per step); ``MultiHeadAttention(..., cache=...)`` appends to it. The models'
cached decoding steps (eval mode) call :func:`cached_self_attention` / :func:`cached_cross_attention` instead:
the same arithmetic as functional calls on tensors looked up once (:class:`AttentionWeights`), because at
batch 1 a small model's step is mostly per-call overhead (module calls, ``nn.Module`` attribute lookups, checks).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = ["attention_explicit", "scaled_dot_product_attention", "merge_masks", "KVCache", "check_cache_length",
           "MultiHeadAttention", "AttentionWeights", "cached_self_attention", "cached_cross_attention"]


def _causal_mask(q_len: int, k_len: int, device: torch.device) -> Tensor:
    """Bool (L, S) mask, True where query i may see key j. Queries are the *last* L of S positions, so with a
    KV cache (S > L) query i sits at absolute position S - L + i."""
    offset = k_len - q_len
    i = torch.arange(q_len, device=device)[:, None]
    j = torch.arange(k_len, device=device)[None, :]
    return j <= i + offset


def merge_masks(
    attn_mask: Tensor | None,
    key_padding_mask: Tensor | None,
    is_causal: bool,
    q_len: int,
    k_len: int,
    dtype: torch.dtype,
    device: torch.device,
    *,
    batch_size: int | None = None,
    num_heads: int | None = None,
) -> Tensor | None:
    """Combine an attention mask, a key-padding mask and causality into one mask broadcastable to
    (B, heads, L, S): boolean if every part is boolean, else additive float.

    ``attn_mask`` may be (L, S), (B, L, S), (B*heads, L, S) (as ``nn.MultiheadAttention`` takes it; needs
    ``num_heads`` to be told apart) or (B or 1, heads or 1, L, S). Shapes are checked here, against
    ``batch_size`` / ``num_heads`` when given, so a wrong mask fails with a message naming the expected
    shape, not deep inside a kernel.
    """
    parts: list[Tensor] = []
    if attn_mask is not None:
        attn_mask = _normalize_attn_mask(attn_mask, q_len, k_len, batch_size, num_heads)
        parts.append(attn_mask)
    if key_padding_mask is not None:
        if key_padding_mask.dim() != 2 or key_padding_mask.shape[1] != k_len or (
            batch_size is not None and key_padding_mask.shape[0] != batch_size
        ):
            raise ValueError(
                f"key_padding_mask has shape {tuple(key_padding_mask.shape)}; expected (B, S) with "
                f"B={'any' if batch_size is None else batch_size}, S={k_len}"
            )
        kpm = key_padding_mask
        if kpm.dtype == torch.bool:
            parts.append(~kpm[:, None, None, :])  # (B, S) -> (B, 1, 1, S): True = may attend
        else:
            parts.append(kpm[:, None, None, :].to(dtype))  # (B, S) -> (B, 1, 1, S), added to the scores
    if is_causal:
        parts.append(_causal_mask(q_len, k_len, device))
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    if all(p.dtype == torch.bool for p in parts):
        mask = parts[0]
        for p in parts[1:]:
            mask = mask & p
        return mask
    mask = torch.zeros((), dtype=dtype, device=device)
    for p in parts:
        if p.dtype == torch.bool:
            p = torch.zeros(p.shape, dtype=dtype, device=device).masked_fill(~p, float("-inf"))
        mask = mask + p.to(dtype)
    return mask


def _normalize_attn_mask(mask: Tensor, q_len: int, k_len: int, batch_size: int | None,
                         num_heads: int | None) -> Tensor:
    """Return ``mask`` as (L, S) or (B or 1, heads or 1, L, S); raise a ValueError naming the shapes."""
    b = "B" if batch_size is None else f"B={batch_size}"
    h = "heads" if num_heads is None else f"heads={num_heads}"
    expected = (f"expected (L, S), (B, L, S), (B*heads, L, S) or (B, heads, L, S) with L={q_len}, S={k_len}, "
                f"{b}, {h}")
    if mask.dim() not in (2, 3, 4) or tuple(mask.shape[-2:]) != (q_len, k_len):
        raise ValueError(f"attn_mask has shape {tuple(mask.shape)}; {expected}")
    if mask.dim() == 3:
        n = mask.shape[0]
        if num_heads is not None and batch_size is not None and n == batch_size * num_heads and num_heads > 1:
            mask = mask.view(batch_size, num_heads, q_len, k_len)  # (B*heads, L, S) -> (B, heads, L, S)
        elif batch_size is None or n in (1, batch_size):
            mask = mask[:, None]  # (B, L, S) -> (B, 1, L, S): one mask per sample, shared by the heads
        else:
            raise ValueError(f"attn_mask has shape {tuple(mask.shape)}; {expected}")
    elif mask.dim() == 4:
        ok_b = batch_size is None or mask.shape[0] in (1, batch_size)
        ok_h = num_heads is None or mask.shape[1] in (1, num_heads)
        if not (ok_b and ok_h):
            raise ValueError(f"attn_mask has shape {tuple(mask.shape)}; {expected}")
    return mask


def attention_explicit(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Eq. 1 written out. q: (..., L, d), k: (..., S, d), v: (..., S, d_v) -> ((..., L, d_v), (..., L, S))."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale  # (..., L, S)
    if is_causal:
        scores = scores.masked_fill(~_causal_mask(q.shape[-2], k.shape[-2], q.device), float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask
    empty = None
    if attn_mask is not None or is_causal:
        # a query whose keys are all blocked gets zero weights (not NaN), as PyTorch's fused kernels do;
        # its scores are zeroed first so no NaN reaches the backward pass either
        empty = torch.isneginf(scores.amax(dim=-1, keepdim=True))  # (..., L, 1)
        scores = scores.masked_fill(empty, 0.0)
    weights = scores.softmax(dim=-1)
    if empty is not None:
        weights = weights.masked_fill(empty, 0.0)
    if dropout_p > 0.0:
        weights = F.dropout(weights, dropout_p)
    return weights @ v, weights


def scaled_dot_product_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    need_weights: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Eq. 1 through the fused kernel, or the explicit path when the weights are wanted."""
    if need_weights:
        return attention_explicit(q, k, v, attn_mask, dropout_p, is_causal, scale)
    if is_causal and (attn_mask is not None or q.shape[-2] != k.shape[-2]):
        # SDPA refuses a mask together with is_causal, and aligns its causal mask top-left while with a
        # KV cache the queries are the *last* positions: fold causality into the mask instead.
        attn_mask = merge_masks(attn_mask, None, True, q.shape[-2], k.shape[-2], q.dtype, q.device)
        is_causal = False
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p,
                                         is_causal=is_causal, scale=scale)
    return out, None


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


def check_cache_length(caches: list[KVCache], length: int) -> None:
    """Refuse a decoding state whose caches hold other than ``length`` positions: a previous step already
    extended them in place (stepping one state twice would silently overwrite what the first step wrote)."""
    if caches and caches[0].length != length:
        raise ValueError(f"this decoding state has {length} tokens but its KV cache {caches[0].length}: it was "
                         "already advanced by step(), which extends the cache in place; copy it with "
                         "state.reorder(torch.arange(B)) to step it more than once")

class MultiHeadAttention(nn.Module):
    """Multi-head attention, self or cross (Sec. 3.2.2).

    The input projections Wᑫ, Wᴷ, Wⱽ of all heads are stacked in one ``in_proj`` (3·d_model x d_model), laid
    out exactly like ``nn.MultiheadAttention.in_proj_weight`` so weights copy across. Self-attention runs it
    as one fused matmul; cross-attention applies the Wᑫ rows to the queries and the Wᴷ/Wⱽ rows to the memory.
    Each projection's d_model outputs are then split into ``num_heads`` heads of d_model / num_heads.

    Args:
        embed_dim: d_model.
        num_heads: h; must divide d_model.
        dropout: dropout on the attention weights (training only).
        bias: biases on the projections.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads  # d_k = d_v = d_model / h
        self.dropout = dropout
        self.in_proj = nn.Linear(embed_dim, 3 * embed_dim, bias=bias)  # [Wᑫ; Wᴷ; Wⱽ]
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)  # Wᴼ

    def _split_heads(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)  # (B, N, C) -> (B, heads, N, d)

    def project_qkv(self, query: Tensor, key: Tensor | None = None, value: Tensor | None = None
                    ) -> tuple[Tensor, Tensor, Tensor]:
        """Project and split into heads; returns q, k, v each (B, heads, N, d)."""
        if key is None:  # self-attention: one fused projection
            b, n, _ = query.shape
            qkv = self.in_proj(query).view(b, n, 3, self.num_heads, self.head_dim)  # (B, N, 3C) -> (B, N, 3, heads, d)
            return qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (3, B, heads, N, d) -> q, k, v each (B, heads, N, d)
        e = self.embed_dim
        w, b = self.in_proj.weight, self.in_proj.bias
        value = key if value is None else value
        q = F.linear(query, w[:e], None if b is None else b[:e])
        if value is key:
            k, v = F.linear(key, w[e:], None if b is None else b[e:]).chunk(2, dim=-1)
        else:
            k = F.linear(key, w[e : 2 * e], None if b is None else b[e : 2 * e])
            v = F.linear(value, w[2 * e :], None if b is None else b[2 * e :])
        return self._split_heads(q), self._split_heads(k), self._split_heads(v)

    def forward(
        self,
        query: Tensor,
        key: Tensor | None = None,
        value: Tensor | None = None,
        *,
        attn_mask: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
        is_causal: bool = False,
        need_weights: bool = False,
        cache: KVCache | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Attend ``query`` (B, L, C) to ``key``/``value`` (B, S, C); self-attention when ``key`` is None.

        Returns ``(out (B, L, C), weights (B, heads, L, S) or None)``. With a ``cache`` (self-attention when
        decoding) the new keys/values are written into it and the L queries, the newest positions, attend to
        every cached one; masks then cover all S = cached + L keys, and ``is_causal`` aligns to the last L.
        """
        if query.dim() != 3 or query.shape[-1] != self.embed_dim:
            raise ValueError(f"query must be (B, L, {self.embed_dim}), got {tuple(query.shape)}")
        b, e = query.shape[0], self.embed_dim
        for name, t in (("key", key), ("value", value)):
            if t is not None and (t.dim() != 3 or t.shape[0] != b or t.shape[-1] != e):
                raise ValueError(f"{name} must be (B={b}, S, {e}), got {tuple(t.shape)}")
        if key is not None and value is not None and key.shape[1] != value.shape[1]:
            raise ValueError(f"key and value lengths differ: {key.shape[1]} vs {value.shape[1]}")
        q, k, v = self.project_qkv(query, key, value)
        if cache is not None:
            k, v = cache.append(k, v)  # (B, heads, S_past + L, d), views of the cache
        b, _, q_len, _ = q.shape
        k_len = k.shape[2]
        if attn_mask is not None or key_padding_mask is not None:
            # one mask for SDPA; causality is folded in because SDPA refuses a mask together with is_causal
            mask = merge_masks(attn_mask, key_padding_mask, is_causal, q_len, k_len, q.dtype, q.device,
                               batch_size=b, num_heads=self.num_heads)
            is_causal = False
        else:
            mask = None
        out, weights = scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0,
            is_causal=is_causal, need_weights=need_weights,
        )
        out = out.transpose(1, 2).reshape(b, q_len, self.embed_dim)  # (B, heads, L, d) -> (B, L, C): Concat
        return self.out_proj(out), weights  # · Wᴼ

    def decode_weights(self) -> AttentionWeights:
        """This layer's projections for :func:`cached_self_attention` / :func:`cached_cross_attention`."""
        return AttentionWeights(self.in_proj.weight, self.in_proj.bias, self.out_proj.weight, self.out_proj.bias,
                                self.num_heads)

    def load_from_torch(self, mha: nn.MultiheadAttention) -> None:
        """Copy the weights of a ``nn.MultiheadAttention`` with the same sizes (packed in-projection)."""
        if mha.in_proj_weight is None:
            raise ValueError("nn.MultiheadAttention with separate q/k/v weights (kdim/vdim) is not supported")
        if mha.embed_dim != self.embed_dim or mha.num_heads != self.num_heads:
            raise ValueError(f"size mismatch: nn.MultiheadAttention(embed_dim={mha.embed_dim}, "
                             f"num_heads={mha.num_heads}) vs ours ({self.embed_dim}, {self.num_heads})")
        if (mha.in_proj_bias is None) != (self.in_proj.bias is None):
            raise ValueError("bias mismatch: build both with the same bias=")
        with torch.no_grad():
            self.in_proj.weight.copy_(mha.in_proj_weight)
            if self.in_proj.bias is not None:
                self.in_proj.bias.copy_(mha.in_proj_bias)
            self.out_proj.weight.copy_(mha.out_proj.weight)
            if self.out_proj.bias is not None:
                self.out_proj.bias.copy_(mha.out_proj.bias)


class AttentionWeights(NamedTuple):
    """The projections of a :class:`MultiHeadAttention`, as references (in-place updates show through; a
    parameter replaced by a new object does not): the decoding states of the models hold these."""

    in_proj_weight: Tensor  # [Wᑫ; Wᴷ; Wⱽ] (3C, C)
    in_proj_bias: Tensor | None
    out_proj_weight: Tensor  # Wᴼ (C, C)
    out_proj_bias: Tensor | None
    num_heads: int


def cached_self_attention(x: Tensor, cache: KVCache, w: AttentionWeights) -> Tensor:
    """``MultiHeadAttention(x, cache=cache, is_causal=L > 1)`` in eval mode, without a mask, as functional calls.

    x (B, L, C): positions that follow the cached ones; their keys/values are appended to ``cache``, and they
    attend to every cached position and causally among themselves. Returns (B, L, C). Tests hold it equal to
    the module's forward.
    """
    b, n, c = x.shape
    qkv = F.linear(x, w.in_proj_weight, w.in_proj_bias)  # (B, L, 3C), one fused matmul
    qkv = qkv.view(b, n, 3, w.num_heads, c // w.num_heads)  # (B, L, 3C) -> (B, L, 3, heads, d)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (3, B, heads, L, d) -> q, k, v each (B, heads, L, d)
    k, v = cache.append(k, v)  # (B, heads, cached + L, d)
    out, _ = scaled_dot_product_attention(q, k, v, is_causal=n > 1)  # (B, heads, L, d)
    out = out.transpose(1, 2).reshape(b, n, c)  # (B, heads, L, d) -> (B, L, C): Concat
    return F.linear(out, w.out_proj_weight, w.out_proj_bias)  # · Wᴼ


def cached_cross_attention(x: Tensor, kv: tuple[Tensor, Tensor], w: AttentionWeights,
                           attn_mask: Tensor | None = None, *, need_weights: bool = False, dropout_p: float = 0.0
                           ) -> tuple[Tensor, Tensor | None]:
    """Attention of x (B, L, C) to precomputed keys/values kv, each (B, heads, S, d): only the Wᑫ rows of the
    in-projection are applied (the Wᴷ, Wⱽ rows made ``kv``, once per source). Returns the output (B, L, C) and,
    with ``need_weights``, the weights (B, heads, L, S)."""
    b, n, c = x.shape
    bias = None if w.in_proj_bias is None else w.in_proj_bias[:c]
    q = F.linear(x, w.in_proj_weight[:c], bias).view(b, n, w.num_heads, c // w.num_heads)  # (B, L, heads, d)
    out, weights = scaled_dot_product_attention(q.transpose(1, 2), kv[0], kv[1], attn_mask=attn_mask,
                                                dropout_p=dropout_p, need_weights=need_weights)  # (B, heads, L, d)
    out = out.transpose(1, 2).reshape(b, n, c)  # (B, heads, L, d) -> (B, L, C): Concat(head_1..h)
    return F.linear(out, w.out_proj_weight, w.out_proj_bias), weights  # · Wᴼ
