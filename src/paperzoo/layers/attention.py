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
follows ``nn.MultiheadAttention``: True marks padding keys to ignore. With ``is_causal`` and more keys than
queries (S > L), the queries are the *last* L positions (query i sees keys j <= S - L + i), as when decoding
after cached keys.

The KV cache for step-by-step decoding lives in :mod:`paperzoo.models.fast_decode`.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = ["attention_explicit", "scaled_dot_product_attention", "causal_mask", "MultiHeadAttention"]


def causal_mask(q_len: int, k_len: int, device: torch.device | None = None) -> Tensor:
    """Bool (L, S) mask, True where query i may see key j. Queries are the *last* L of S positions, so with
    cached keys (S > L) query i sits at absolute position S - L + i."""
    i = torch.arange(q_len, device=device)[:, None]
    j = torch.arange(k_len, device=device)[None, :]
    return j <= i + (k_len - q_len)


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
        scores = scores.masked_fill(~causal_mask(q.shape[-2], k.shape[-2], q.device), float("-inf"))
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
        # SDPA refuses a mask together with is_causal, and aligns its causal mask top-left while our queries
        # are the *last* positions: fold causality into the mask instead.
        causal = causal_mask(q.shape[-2], k.shape[-2], q.device)
        if attn_mask is None or attn_mask.dtype == torch.bool:
            attn_mask = causal if attn_mask is None else attn_mask & causal
        else:
            attn_mask = attn_mask.masked_fill(~causal, float("-inf"))
        is_causal = False
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p,
                                         is_causal=is_causal, scale=scale)
    return out, None


class MultiHeadAttention(nn.Module):
    """Multi-head attention, self or encoder-decoder (Sec. 3.2.2, 3.2.3).

    The input projections Wᑫ, Wᴷ, Wⱽ of all heads are stacked in one ``in_proj`` (3·d_model x d_model), laid
    out exactly like ``nn.MultiheadAttention.in_proj_weight`` so weights copy across. Self-attention runs it
    as one fused matmul; encoder-decoder attention applies the Wᑫ rows to the queries and the Wᴷ/Wⱽ rows to
    the memory (keys and values are both the memory, Sec. 3.2.3). Each projection's d_model outputs are then
    split into ``num_heads`` heads of d_model / num_heads.

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

    def _split_heads(self, x: Tensor, parts: int) -> tuple[Tensor, ...]:
        """(B, N, parts·C) -> ``parts`` tensors (B, heads, N, d)."""
        b, n, _ = x.shape
        x = x.view(b, n, parts, self.num_heads, self.head_dim)  # (B, N, parts, heads, d)
        return x.permute(2, 0, 3, 1, 4).unbind(0)  # (parts, B, heads, N, d) -> parts x (B, heads, N, d)

    def project_qkv(self, query: Tensor, memory: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Q, K, V each (B, heads, N, d): from ``query`` alone (self-attention), or Q from ``query`` and K, V
        from ``memory``."""
        if memory is None:  # self-attention: one fused projection
            return self._split_heads(self.in_proj(query), 3)
        e, w, b = self.embed_dim, self.in_proj.weight, self.in_proj.bias
        q = F.linear(query, w[:e], None if b is None else b[:e])  # Wᑫ rows
        kv = F.linear(memory, w[e:], None if b is None else b[e:])  # Wᴷ, Wⱽ rows, one matmul
        return (*self._split_heads(q, 1), *self._split_heads(kv, 2))

    def forward(self, query: Tensor, memory: Tensor | None = None, *, key_padding_mask: Tensor | None = None,
                attn_mask: Tensor | None = None, is_causal: bool = False, need_weights: bool = False
                ) -> tuple[Tensor, Tensor | None]:
        """Attend ``query`` (B, L, C) to itself, or to ``memory`` (B, S, C).

        ``key_padding_mask`` (B, S) bool is True at padding keys; ``attn_mask`` bool (L, S), or any shape that
        broadcasts to (B, heads, L, S), is True where a query may attend to a key (e.g. DALL-E's sparse masks);
        ``is_causal`` lets position i see only positions <= i. The three combine (a key must pass each).
        Returns ``(out (B, L, C), weights (B, heads, L, S) or None)``; the weights come from
        the explicit path, only with ``need_weights``.
        """
        if query.dim() != 3 or query.shape[-1] != self.embed_dim:
            raise ValueError(f"query must be (B, L, {self.embed_dim}), got {tuple(query.shape)}")
        b, q_len, e = query.shape
        if memory is not None and (memory.dim() != 3 or memory.shape[0] != b or memory.shape[-1] != e):
            raise ValueError(f"memory must be (B={b}, S, {e}), got {tuple(memory.shape)}")
        k_len = q_len if memory is None else memory.shape[1]
        mask = None
        if key_padding_mask is not None:
            if key_padding_mask.shape != (b, k_len) or key_padding_mask.dtype != torch.bool:
                raise ValueError(f"key_padding_mask must be bool (B, S) = ({b}, {k_len}), got "
                                 f"{key_padding_mask.dtype} {tuple(key_padding_mask.shape)}")
            mask = ~key_padding_mask[:, None, None, :]  # (B, S) True = padding -> (B, 1, 1, S) True = may attend
        if attn_mask is not None:
            if attn_mask.dtype != torch.bool:
                raise ValueError(f"attn_mask must be bool (True = may attend), got {attn_mask.dtype}")
            mask = attn_mask if mask is None else mask & attn_mask
        q, k, v = self.project_qkv(query, memory)
        out, weights = scaled_dot_product_attention(q, k, v, mask, dropout_p=self.dropout if self.training else 0.0,
                                                    is_causal=is_causal, need_weights=need_weights)
        out = out.transpose(1, 2).reshape(b, q_len, e)  # (B, heads, L, d) -> (B, L, C): Concat
        return self.out_proj(out), weights  # · Wᴼ

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
