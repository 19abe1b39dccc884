"""The Transformer for sequence transduction.

Vaswani et al., "Attention Is All You Need", arXiv:1706.03762 (NeurIPS 2017).

An encoder of N identical layers (self-attention, position-wise feed-forward) reads the source; a decoder of N
layers (masked self-attention, encoder-decoder attention, feed-forward) predicts the target one token at a time
(Sec. 3.1, Fig. 1). Each sub-layer is wrapped as LayerNorm(x + Dropout(Sublayer(x))) (Sec. 3.1, 5.4).
Encoder-decoder attention takes its keys and values from the output of the top encoder layer (Sec. 3.2.3).

Notable features:
* ``norm_first=False`` is the paper's post-norm; ``norm_first=True`` the pre-norm variant
  (Xiong et al., arXiv:2002.04745) that trains without warm-up tricks and needs a final LayerNorm per stack.
* Weights copy from ``nn.Transformer(batch_first=True)`` (:func:`load_torch_transformer`); a test proves the
  outputs are the same.
* A step interface (``init_state`` / ``step``) for :mod:`paperzoo.generate`. With ``use_cache=True`` (the
  default) the steps run :mod:`paperzoo.models.fast_decode` (KV cache, encoder-decoder K/V once per source);
  ``use_cache=False`` re-runs this file's decoder over the whole prefix each step, the reference.

Deviations from the paper:
* Sinusoidal positions (Sec. 3.5) come from :mod:`paperzoo.layers.pos_embed`; their table grows on demand, so
  there is no length limit (``max_len`` only sizes the first table).
* Optional dropout on the attention weights (``attn_drop``) and after the FFN's ReLU (``act_drop``), both 0 as in
  the paper; ``nn.Transformer`` uses 0.1 for both, so set them to match it exactly.
* A final LayerNorm on each stack when ``final_norm`` (default: only for pre-norm); ``nn.Transformer`` always
  has them.
* Initialisation is not given in the paper: Xavier-uniform projections (as tensor2tensor / ``nn.Transformer``)
  and N(0, d_model^-1/2) embeddings, so that embeddings scaled by √d_model have unit variance (as fairseq).
* Label smoothing (ε_ls = 0.1, Sec. 5.4) belongs to the loss, not the model.
* ``src_vocab_size``/``tgt_vocab_size`` are separate unless ``share_embeddings`` (the paper's shared BPE
  vocabulary, Sec. 3.4); the pre-softmax projection is tied to the target embedding by default (Sec. 3.4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from ..layers.attention import MultiHeadAttention
from ..layers.pos_embed import SinusoidalPositionalEncoding
from ..layers.residual import residual
from ..registry import Paper, register_model
from .fast_decode import TransformerCache, start_transformer, step_transformer

__all__ = ["TransformerConfig", "Transformer", "TransformerEncoder", "TransformerDecoder", "EncoderLayer",
           "DecoderLayer", "PositionwiseFeedForward", "TransformerState", "convert_torch_transformer_state_dict",
           "load_torch_transformer"]

PAPER = Paper("Attention Is All You Need", "1706.03762", 2017)


@dataclass
class TransformerConfig:
    """Hyper-parameters with the paper's symbols (Table 3). Defaults are the base model."""

    src_vocab_size: int = 37000
    tgt_vocab_size: int = 37000
    N_enc: int = 6  # N, encoder layers
    N_dec: int = 6  # N, decoder layers
    d_model: int = 512
    d_ff: int = 2048
    h: int = 8  # heads; d_k = d_v = d_model / h
    P_drop: float = 0.1  # residual dropout, on sub-layer outputs and on embedding + PE sums (Sec. 5.4)
    attn_drop: float = 0.0  # dropout on attention weights (not in the paper; nn.Transformer: 0.1)
    act_drop: float = 0.0  # dropout after the FFN activation (not in the paper; nn.Transformer: 0.1)
    activation: str = "relu"  # Eq. 2 uses ReLU; "gelu" as an option
    norm_first: bool = False  # False: post-norm as the paper; True: pre-norm
    final_norm: bool | None = None  # a LayerNorm on top of each stack; None = norm_first
    share_embeddings: bool = False  # one embedding for source and target (shared vocabulary, Sec. 3.4)
    tie_output: bool = True  # pre-softmax linear = target embedding matrix (Sec. 3.4)
    layer_norm_eps: float = 1e-5
    max_len: int = 1024  # initial size of the position table (it grows when needed)
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2


class PositionwiseFeedForward(nn.Module):
    """FFN(x) = max(0, x W1 + b1) W2 + b2  (Sec. 3.3, Eq. 2)."""

    def __init__(self, d_model: int, d_ff: int, act_drop: float = 0.0, activation: str = "relu") -> None:
        super().__init__()
        if activation not in ("relu", "gelu"):
            raise ValueError(f"activation must be 'relu' or 'gelu', got {activation!r}")
        self.linear1 = nn.Linear(d_model, d_ff)
        self.act = nn.ReLU() if activation == "relu" else nn.GELU()
        self.drop = nn.Dropout(act_drop)
        self.linear2 = nn.Linear(d_ff, d_model)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear2(self.drop(self.act(self.linear1(x))))


class EncoderLayer(nn.Module):
    """Self-attention then FFN, each as LayerNorm(x + Dropout(Sublayer(x))) (Sec. 3.1), or pre-norm."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.norm_first = cfg.norm_first
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.h, dropout=cfg.attn_drop)
        self.ffn = PositionwiseFeedForward(cfg.d_model, cfg.d_ff, cfg.act_drop, cfg.activation)
        self.norm1 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.norm2 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.drop1 = nn.Dropout(cfg.P_drop)
        self.drop2 = nn.Dropout(cfg.P_drop)
        self.keep_attn = False  # set by Transformer.attention_maps: use the explicit path, keep the weights
        self.attn_weights: Tensor | None = None

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        """x: (B, S, C) -> (B, S, C); ``key_padding_mask`` (B, S) True at padding."""
        def self_attend(h: Tensor) -> Tensor:
            out, self.attn_weights = self.self_attn(h, key_padding_mask=key_padding_mask, need_weights=self.keep_attn)
            return out

        x = residual(x, self_attend, self.norm1, self.norm_first, self.drop1)
        return residual(x, self.ffn, self.norm2, self.norm_first, self.drop2)


class DecoderLayer(nn.Module):
    """Masked self-attention, encoder-decoder attention, FFN (Sec. 3.1), each with residual + LayerNorm."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.norm_first = cfg.norm_first
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.h, dropout=cfg.attn_drop)
        self.cross_attn = MultiHeadAttention(cfg.d_model, cfg.h, dropout=cfg.attn_drop)
        self.ffn = PositionwiseFeedForward(cfg.d_model, cfg.d_ff, cfg.act_drop, cfg.activation)
        self.norm1 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.norm2 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.norm3 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.drop1 = nn.Dropout(cfg.P_drop)
        self.drop2 = nn.Dropout(cfg.P_drop)
        self.drop3 = nn.Dropout(cfg.P_drop)
        self.keep_attn = False  # set by Transformer.attention_maps
        self.attn_weights: Tensor | None = None
        self.cross_weights: Tensor | None = None

    def forward(self, x: Tensor, memory: Tensor, memory_key_padding_mask: Tensor | None = None,
                tgt_key_padding_mask: Tensor | None = None) -> Tensor:
        """x: (B, L, C) target positions, memory: (B, S, C) the top encoder layer's output -> (B, L, C)."""
        def self_attend(h: Tensor) -> Tensor:  # masked (Sec. 3.2.3): position i sees positions <= i
            out, self.attn_weights = self.self_attn(h, key_padding_mask=tgt_key_padding_mask, is_causal=True,
                                                    need_weights=self.keep_attn)
            return out

        def cross_attend(h: Tensor) -> Tensor:  # queries from the decoder, keys and values from the memory
            out, self.cross_weights = self.cross_attn(h, memory, key_padding_mask=memory_key_padding_mask,
                                                      need_weights=self.keep_attn)
            return out

        x = residual(x, self_attend, self.norm1, self.norm_first, self.drop1)
        x = residual(x, cross_attend, self.norm2, self.norm_first, self.drop2)
        return residual(x, self.ffn, self.norm3, self.norm_first, self.drop3)


class TransformerEncoder(nn.Module):
    """N encoder layers (+ final LayerNorm). ``forward(x (B, S, C), key_padding_mask (B, S)) -> memory``."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.N_enc))
        final = cfg.norm_first if cfg.final_norm is None else cfg.final_norm
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps) if final else None

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        for layer in self.layers:
            x = layer(x, key_padding_mask)
        return x if self.norm is None else self.norm(x)


class TransformerDecoder(nn.Module):
    """N decoder layers (+ final LayerNorm). ``forward(x (B, L, C), memory (B, S, C)) -> (B, L, C)``."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.N_dec))
        final = cfg.norm_first if cfg.final_norm is None else cfg.final_norm
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps) if final else None

    def forward(self, x: Tensor, memory: Tensor, *, memory_key_padding_mask: Tensor | None = None,
                tgt_key_padding_mask: Tensor | None = None) -> Tensor:
        """x: (B, L, C) target embeddings, memory: (B, S, C) -> (B, L, C)."""
        for layer in self.layers:
            x = layer(x, memory, memory_key_padding_mask, tgt_key_padding_mask)
        return x if self.norm is None else self.norm(x)


@dataclass
class TransformerState:
    """Decoding state without a cache (``init_state(use_cache=False)``): every step re-runs the decoder over all
    the target tokens so far, the reference the KV-cached :class:`~paperzoo.models.fast_decode.TransformerCache`
    is tested against. Tensors have the batch (or beam) first.

    Attributes:
        memory: (B, S, C) the encoder output.
        memory_key_padding_mask: (B, S) True at source padding, or None without padding.
        tokens: (B, t) decoder inputs fed so far (BOS first).
    """

    memory: Tensor
    memory_key_padding_mask: Tensor | None
    tokens: Tensor

    def reorder(self, index: Tensor) -> TransformerState:
        """Select batch rows (beam search expands and reorders beams with this)."""
        kpm = self.memory_key_padding_mask
        return TransformerState(self.memory.index_select(0, index),
                                None if kpm is None else kpm.index_select(0, index), self.tokens.index_select(0, index))


class Transformer(nn.Module):
    """The encoder-decoder Transformer (Fig. 1). ``forward(src, tgt) -> logits (B, T, tgt_vocab)``."""

    is_decoder_only = False

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        if cfg.share_embeddings and cfg.src_vocab_size != cfg.tgt_vocab_size:
            raise ValueError(f"share_embeddings needs one vocabulary; got src_vocab_size={cfg.src_vocab_size}, "
                             f"tgt_vocab_size={cfg.tgt_vocab_size}")
        self.cfg = cfg
        self.src_embed = nn.Embedding(cfg.src_vocab_size, cfg.d_model)
        self.tgt_embed = self.src_embed if cfg.share_embeddings else nn.Embedding(cfg.tgt_vocab_size, cfg.d_model)
        self.pos = SinusoidalPositionalEncoding(cfg.d_model, cfg.max_len)
        self.emb_drop = nn.Dropout(cfg.P_drop)
        self.encoder = TransformerEncoder(cfg)
        self.decoder = TransformerDecoder(cfg)
        self.generator = nn.Linear(cfg.d_model, cfg.tgt_vocab_size, bias=False)  # pre-softmax linear
        self._init_weights()
        if cfg.tie_output:  # "share the same weight matrix between ... and the pre-softmax linear" (Sec. 3.4)
            self.generator.weight = self.tgt_embed.weight

    def _init_weights(self) -> None:
        for name, p in self.named_parameters():
            if p.dim() > 1 and "embed" not in name:
                nn.init.xavier_uniform_(p)
            elif p.dim() == 1 and name.endswith("bias"):
                nn.init.zeros_(p)
        for emb in dict.fromkeys((self.src_embed, self.tgt_embed)):  # ordered: a set would order by id()
            nn.init.normal_(emb.weight, std=self.cfg.d_model**-0.5)

    # -------------------------------------------------------------------------------------- building blocks
    def embed(self, tokens: Tensor, table: nn.Embedding, offset: int = 0) -> Tensor:
        """Embedding · √d_model + PE (Sec. 3.4, 3.5), then dropout (Sec. 5.4). (B, N) -> (B, N, C)."""
        return self.emb_drop(self.pos(table(tokens) * math.sqrt(self.cfg.d_model), offset))

    def src_padding_mask(self, src: Tensor, src_lengths: Tensor | None = None) -> Tensor | None:
        """(B, S) True at padding, from lengths or ``pad_id``; None when nothing is padded (fast path)."""
        if src_lengths is not None:
            mask = torch.arange(src.shape[1], device=src.device)[None, :] >= src_lengths.to(src.device)[:, None]
        else:
            mask = src.eq(self.cfg.pad_id)
        return mask if bool(mask.any()) else None

    def _check_tokens(self, x: Tensor, what: str) -> None:
        if x.dim() != 2 or x.dtype not in (torch.long, torch.int32, torch.int64):
            raise ValueError(f"{what} must be integer token ids of shape (B, N), got {tuple(x.shape)} {x.dtype}")

    def encode(self, src: Tensor, src_key_padding_mask: Tensor | None = None) -> Tensor:
        """(B, S) source ids -> memory (B, S, C), the top encoder layer's output."""
        self._check_tokens(src, "src")
        return self.encoder(self.embed(src, self.src_embed), src_key_padding_mask)

    def forward(self, src: Tensor, tgt: Tensor, src_key_padding_mask: Tensor | None = None,
                tgt_key_padding_mask: Tensor | None = None) -> Tensor:
        """Teacher-forced logits. src: (B, S), tgt: (B, T) decoder inputs (BOS y_1 .. y_{T-1}) -> (B, T, V).

        The source padding mask defaults to ``src == pad_id``. A target padding mask is not needed for
        right-padded targets: the causal mask already hides later (padding) positions from real ones.
        """
        if src_key_padding_mask is None:
            src_key_padding_mask = self.src_padding_mask(src)
        memory = self.encode(src, src_key_padding_mask)
        self._check_tokens(tgt, "tgt")
        y = self.decoder(self.embed(tgt, self.tgt_embed), memory, memory_key_padding_mask=src_key_padding_mask,
                         tgt_key_padding_mask=tgt_key_padding_mask)
        return self.generator(y)

    @torch.no_grad()
    def attention_maps(self, src: Tensor, tgt: Tensor) -> dict[str, list[Tensor]]:
        """Attention weights of every layer for one teacher-forced pass, through the explicit path (Eq. 1).

        Returns ``{"encoder": [(B, heads, S, S)] * N_enc, "decoder": [(B, heads, T, T)] * N_dec,
        "cross": [(B, heads, T, S)] * N_dec}``; "cross" shows which source tokens each target token reads.
        """
        layers = [*self.encoder.layers, *self.decoder.layers]
        for layer in layers:
            layer.keep_attn = True
        try:
            self(src, tgt)
            return {"encoder": [la.attn_weights for la in self.encoder.layers],
                    "decoder": [la.attn_weights for la in self.decoder.layers],
                    "cross": [la.cross_weights for la in self.decoder.layers]}
        finally:
            for layer in layers:
                layer.keep_attn, layer.attn_weights = False, None
                if isinstance(layer, DecoderLayer):
                    layer.cross_weights = None

    # --------------------------------------------------------------------------- step interface (generate.py)
    def init_state(self, src: Tensor, src_lengths: Tensor | None = None, *, use_cache: bool = True
                   ) -> TransformerState | TransformerCache:
        """Encode the source (B, S) once; with the cache, also project each layer's encoder-decoder K/V once."""
        kpm = self.src_padding_mask(src, src_lengths)
        memory = self.encode(src, kpm)
        if use_cache:
            return start_transformer(self, memory, kpm)
        return TransformerState(memory, kpm, src.new_zeros(src.shape[0], 0))

    def step(self, tokens: Tensor, state: TransformerState | TransformerCache
             ) -> tuple[Tensor, TransformerState | TransformerCache]:
        """Feed the last tokens (B,) and return next-token logits (B, V) and the new state."""
        if isinstance(state, TransformerCache):
            return step_transformer(self, tokens, state)
        seq = torch.cat([state.tokens, tokens[:, None]], dim=1)  # (B, t + 1)
        y = self.decoder(self.embed(seq, self.tgt_embed), state.memory,
                         memory_key_padding_mask=state.memory_key_padding_mask)
        return self.generator(y[:, -1]), replace(state, tokens=seq)

    @torch.inference_mode()
    def generate(self, src: Tensor, src_lengths: Tensor | None = None, **kwargs: Any) -> Any:
        """Translate ``src`` (B, S); see :func:`paperzoo.generate.generate` for the options."""
        from ..generate import generate

        kwargs.setdefault("bos_id", self.cfg.bos_id)
        kwargs.setdefault("eos_id", self.cfg.eos_id)
        kwargs.setdefault("pad_id", self.cfg.pad_id)
        return generate(self, src, src_lengths, **kwargs)


# ------------------------------------------------------------------------------------- nn.Transformer weights
def convert_torch_transformer_state_dict(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename the keys of ``nn.Transformer.state_dict()`` to our encoder/decoder stacks' names."""
    out = {}
    for k, v in sd.items():
        k = k.replace("in_proj_weight", "in_proj.weight").replace("in_proj_bias", "in_proj.bias")
        k = k.replace("multihead_attn.", "cross_attn.").replace("linear1.", "ffn.linear1.")
        k = k.replace("linear2.", "ffn.linear2.")
        out[k] = v
    return out


def load_torch_transformer(model: Transformer, ref: nn.Transformer) -> None:
    """Copy an ``nn.Transformer``'s encoder and decoder into ``model`` (strict: every key and shape must fit).

    ``nn.Transformer`` has no embeddings or output layer; those keep their values. Build ``model`` with the
    same sizes, ``norm_first`` and ``final_norm=True`` (``nn.Transformer`` always has the final norms).
    """
    sd = convert_torch_transformer_state_dict(ref.state_dict())
    enc = {k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")}
    dec = {k[len("decoder."):]: v for k, v in sd.items() if k.startswith("decoder.")}
    try:
        model.encoder.load_state_dict(enc, strict=True)
        model.decoder.load_state_dict(dec, strict=True)
    except RuntimeError as e:
        hint = " (nn.Transformer always has final norms: build with final_norm=True)" if '"norm.' in str(e) else ""
        raise ValueError(f"nn.Transformer does not fit this model{hint}: {e}") from e


# ----------------------------------------------------------------------------------------- registered models
def _transformer(**kw: Any) -> Transformer:
    return Transformer(TransformerConfig(**kw))


@register_model(family="transformer", paper=PAPER, kind="sequence", tags=("translation",))
def transformer_base(**kw: Any) -> Transformer:
    """The paper's base model (Table 3): N=6, d_model=512, d_ff=2048, h=8, P_drop=0.1, shared 37k vocabulary."""
    kw.setdefault("share_embeddings", kw.get("src_vocab_size", 37000) == kw.get("tgt_vocab_size", 37000))
    return _transformer(**{"N_enc": 6, "N_dec": 6, "d_model": 512, "d_ff": 2048, "h": 8, "P_drop": 0.1, **kw})


@register_model(family="transformer", paper=PAPER, kind="sequence", tags=("translation",))
def transformer_big(**kw: Any) -> Transformer:
    """The paper's big model (Table 3): N=6, d_model=1024, d_ff=4096, h=16, P_drop=0.3."""
    kw.setdefault("share_embeddings", kw.get("src_vocab_size", 37000) == kw.get("tgt_vocab_size", 37000))
    return _transformer(**{"N_enc": 6, "N_dec": 6, "d_model": 1024, "d_ff": 4096, "h": 16, "P_drop": 0.3, **kw})


@register_model(family="transformer", paper=PAPER, kind="sequence", tags=("translation", "small"))
def transformer_small(**kw: Any) -> Transformer:
    """3+3 layers, d_model=256, d_ff=1024, h=8: the benchmark configuration; trains on a CPU."""
    kw = {"src_vocab_size": 8000, "tgt_vocab_size": 8000, **kw}
    return _transformer(**{"N_enc": 3, "N_dec": 3, "d_model": 256, "d_ff": 1024, "h": 8, **kw})


@register_model(family="transformer", paper=PAPER, kind="sequence", tags=("translation", "small"))
def transformer_tiny(**kw: Any) -> Transformer:
    """2+2 layers, d_model=128, d_ff=512, h=4: small tasks (dates and numbers) in minutes on a CPU."""
    kw = {"src_vocab_size": 1000, "tgt_vocab_size": 1000, **kw}
    return _transformer(**{"N_enc": 2, "N_dec": 2, "d_model": 128, "d_ff": 512, "h": 4, **kw})
