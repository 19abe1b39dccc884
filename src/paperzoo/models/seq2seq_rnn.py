"""Recurrent sequence models: an attention encoder-decoder (RNNsearch) and an LSTM/GRU language model.

* Bahdanau, Cho & Bengio, "Neural Machine Translation by Jointly Learning to Align and Translate",
  arXiv:1409.0473 (ICLR 2015): "RNNsearch", App. A.2.
* Zaremba, Sutskever & Vinyals, "Recurrent Neural Network Regularization", arXiv:1409.2329 (2014): the
  multi-layer LSTM language model with dropout between layers; tied input/output embeddings from Press & Wolf,
  "Using the Output Embedding to Improve Language Models", arXiv:1608.05859.

RNNsearch, one decoder step i (App. A.2.2), given the previous state s_{i-1} and the previous token y_{i-1}:

    c_i   = Σ_j α_ij h_j,  α_i = softmax(vᵀ tanh(W_a s_{i-1} + U_a h_j))      additive attention (Sec. 3.1)
    t̃_i  = U_o s_{i-1} + V_o E y_{i-1} + C_o c_i;  t_i = maxout_2(t̃_i)       deep output
    p(y_i | y_<i, x) = softmax(W_o t_i)
    s_i   = GRU([E y_{i-1}; c_i], s_{i-1})

with annotations h_j = [→h_j; ←h_j] from a bidirectional encoder and s_0 = tanh(W_s ←h_1).

Deviations and options:
* ``cell="lstm"`` swaps both RNNs for LSTMs (the decoder's memory cell starts at zero); ``num_layers`` stacks
  encoder layers (the paper has one). The decoder is one layer, as in the paper.
* ``dropout`` (not in the paper) on embeddings and on t_i; U_a has a bias (see layers/additive_attention.py).
* Initialisation as App. B.1 (see ``_init_weights``).
* ``forward(src, tgt_in, src_lengths=None)`` takes (src, tgt) in the order of the Transformer and the
  translation trainer; padding comes from ``src_lengths`` or else from ``pad_id``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..generate import BeamSearchOutput
from ..layers.additive_attention import AdditiveAttention
from ..registry import Paper, register_model
from .rnn import GRU, LSTM, gru_step, lstm_step

__all__ = ["Seq2SeqConfig", "Seq2SeqRNN", "Seq2SeqState", "RNNLMConfig", "RNNLanguageModel", "RNNLMState"]

BAHDANAU = Paper("Neural Machine Translation by Jointly Learning to Align and Translate", "1409.0473", 2015)
ZAREMBA = Paper("Recurrent Neural Network Regularization", "1409.2329", 2014)
CELLS = {"gru": GRU, "lstm": LSTM}


def _check_tokens(x: Tensor, what: str) -> None:
    if x.dim() != 2 or x.dtype not in (torch.long, torch.int32):
        raise ValueError(f"{what} must be integer token ids of shape (B, N), got {tuple(x.shape)} {x.dtype}")


def _lengths(src: Tensor, src_lengths: Tensor | None, pad_id: int) -> Tensor:
    if src_lengths is None:  # right-padded batch: everything up to the last non-pad token
        real = src.ne(pad_id)
        pos = torch.arange(1, src.shape[1] + 1, device=src.device)
        return (real * pos).amax(1).clamp_min(1)
    return torch.as_tensor(src_lengths, device=src.device).long()


@dataclass
class Seq2SeqConfig:
    """RNNsearch hyper-parameters with App. A's symbols; defaults are small enough for a CPU."""

    src_vocab_size: int = 8000  # K_x
    tgt_vocab_size: int = 8000  # K_y
    m: int = 128  # word embedding size (620 in the paper)
    n: int = 256  # hidden units of each encoder direction and of the decoder (1000)
    n_attn: int = 256  # n', hidden size of the alignment MLP (1000)
    l: int = 256  # maxout units of the deep output (500)
    cell: str = "gru"  # "gru" (paper) or "lstm"
    num_layers: int = 1  # encoder layers
    dropout: float = 0.0
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2


@dataclass
class Seq2SeqState:
    """Decoding state for :mod:`paperzoo.generate`; every tensor has the batch (or beam) first.

    Attributes:
        keys: (B, S, 2n) annotations h_j; ``projected_keys``: U_a h_j (B, S, n'), computed once.
        key_padding_mask: (B, S) True at padding, or None.
        s: (B, n) decoder state s_{i-1}; ``c``: (B, n) LSTM memory cell or None.
        attention: (B, S) the weights α of the last step (for visualisation), or None before the first.
    """

    keys: Tensor
    projected_keys: Tensor
    key_padding_mask: Tensor | None
    s: Tensor
    c: Tensor | None = None
    attention: Tensor | None = None

    def reorder(self, index: Tensor) -> Seq2SeqState:
        sel = lambda t: None if t is None else t.index_select(0, index)  # noqa: E731
        return Seq2SeqState(sel(self.keys), sel(self.projected_keys), sel(self.key_padding_mask), sel(self.s),
                            sel(self.c), sel(self.attention))


class Seq2SeqRNN(nn.Module):
    """Bidirectional RNN encoder + attention decoder (RNNsearch). ``forward(src, tgt_in) -> logits (B, T, K_y)``."""

    is_decoder_only = False

    def __init__(self, cfg: Seq2SeqConfig) -> None:
        super().__init__()
        if cfg.cell not in CELLS:
            raise ValueError(f"cell must be one of {sorted(CELLS)}, got {cfg.cell!r}")
        self.cfg = cfg
        self.src_embed = nn.Embedding(cfg.src_vocab_size, cfg.m, padding_idx=cfg.pad_id)
        self.tgt_embed = nn.Embedding(cfg.tgt_vocab_size, cfg.m, padding_idx=cfg.pad_id)
        self.encoder = CELLS[cfg.cell](cfg.m, cfg.n, cfg.num_layers, batch_first=True, bidirectional=True,
                                       dropout=cfg.dropout if cfg.num_layers > 1 else 0.0)
        self.init_proj = nn.Linear(cfg.n, cfg.n)  # W_s: s_0 = tanh(W_s ←h_1)
        self.attention = AdditiveAttention(cfg.n, 2 * cfg.n, cfg.n_attn)
        gates = CELLS[cfg.cell].gates  # LSTM: i, f, g, o; GRU: r, z, n
        # The decoder cell, input [E y_{i-1}; c_i]; parameters named as in nn.GRUCell / nn.LSTMCell.
        self.decoder = nn.ParameterDict({
            "weight_ih": nn.Parameter(torch.empty(gates * cfg.n, cfg.m + 2 * cfg.n)),
            "weight_hh": nn.Parameter(torch.empty(gates * cfg.n, cfg.n)),
            "bias_ih": nn.Parameter(torch.empty(gates * cfg.n)),
            "bias_hh": nn.Parameter(torch.empty(gates * cfg.n)),
        })
        self.U_o = nn.Linear(cfg.n, 2 * cfg.l)  # deep output, App. A.2.2
        self.V_o = nn.Linear(cfg.m, 2 * cfg.l, bias=False)
        self.C_o = nn.Linear(2 * cfg.n, 2 * cfg.l, bias=False)
        self.W_o = nn.Linear(cfg.l, cfg.tgt_vocab_size)
        self.drop = nn.Dropout(cfg.dropout)
        self._init_weights()

    def _init_weights(self) -> None:
        """App. B.1: recurrent matrices random orthogonal (per gate), W_a and U_a ~ N(0, 0.001²), v_a and all
        biases zero, every other weight matrix ~ N(0, 0.01²)."""
        for name, p in self.named_parameters():
            if "bias" in name or name.startswith("attention.v_a"):
                nn.init.zeros_(p)
            elif "weight_hh" in name:
                for gate in p.data.split(self.cfg.n):  # (gates*n, n) -> gates x (n, n)
                    nn.init.orthogonal_(gate)
            elif name.startswith(("attention.W_a", "attention.U_a")):
                nn.init.normal_(p, std=0.001)
            else:
                nn.init.normal_(p, std=0.01)
        for emb in (self.src_embed, self.tgt_embed):
            emb.weight.data[self.cfg.pad_id].zero_()  # padding_idx: a zero vector that gets no gradient

    # ------------------------------------------------------------------------------------------- encoder
    def encode(self, src: Tensor, src_lengths: Tensor | None = None) -> Seq2SeqState:
        """Run the encoder and return the state before the first decoder step."""
        _check_tokens(src, "src")
        lengths = _lengths(src, src_lengths, self.cfg.pad_id)
        keys, h_n = self.encoder(self.drop(self.src_embed(src)), lengths=lengths)  # (B, S, 2n)
        h_n = h_n[0] if isinstance(h_n, tuple) else h_n  # LSTM: (h_n, c_n)
        s0 = torch.tanh(self.init_proj(h_n[-1]))  # h_n[-1]: the top layer's backward state, ←h_1
        pad = torch.arange(src.shape[1], device=src.device)[None, :] >= lengths[:, None]  # (B, S)
        return Seq2SeqState(keys, self.attention.project_keys(keys), pad if bool(pad.any()) else None, s0,
                            torch.zeros_like(s0) if self.cfg.cell == "lstm" else None)

    # ------------------------------------------------------------------------------------------- decoder
    def _decode(self, emb_proj: Tensor, emb: Tensor, state: Seq2SeqState) -> tuple[Tensor, Seq2SeqState]:
        """One step i: ``emb`` = E y_{i-1} (B, m), ``emb_proj`` its part of the cell's input projection."""
        d = self.decoder
        context, alpha = self.attention(state.s, state.keys, key_padding_mask=state.key_padding_mask,
                                        projected_keys=state.projected_keys)  # c_i (B, 2n), α_i (B, S)
        t = self.U_o(state.s) + self.V_o(emb) + self.C_o(context)  # t̃_i (B, 2l)
        t = t.view(t.shape[0], self.cfg.l, 2).amax(-1)  # maxout over pairs: (B, 2l) -> (B, l, 2) -> (B, l)
        logits = self.W_o(self.drop(t))
        gx = emb_proj + F.linear(context, d["weight_ih"][:, self.cfg.m :])  # W_ih [E y; c] + b_ih
        if self.cfg.cell == "lstm":
            s, c = lstm_step(gx, state.s, state.c, d["weight_hh"], d["bias_hh"])
        else:
            s, c = gru_step(gx, state.s, d["weight_hh"], d["bias_hh"]), None
        return logits, replace(state, s=s, c=c, attention=alpha)

    def _embed_target(self, tgt: Tensor) -> tuple[Tensor, Tensor]:
        emb = self.drop(self.tgt_embed(tgt))  # (B, T, m)
        # The embedding half of the cell's input projection, for every step at once
        return emb, F.linear(emb, self.decoder["weight_ih"][:, : self.cfg.m], self.decoder["bias_ih"])

    def forward(self, src: Tensor, tgt_in: Tensor, src_lengths: Tensor | None = None, *,
                return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Teacher forcing. src (B, S), tgt_in (B, T) = BOS y_1 .. y_{T-1} -> logits (B, T, K_y)
        [and attention weights (B, T, S) with ``return_attention=True``]."""
        _check_tokens(tgt_in, "tgt_in")
        state = self.encode(src, src_lengths)
        emb, emb_proj = self._embed_target(tgt_in)
        logits, attn = [], []
        for i in range(tgt_in.shape[1]):  # the decoder is sequential: c_i depends on s_{i-1}
            out, state = self._decode(emb_proj[:, i], emb[:, i], state)
            logits.append(out)
            attn.append(state.attention)
        logits = torch.stack(logits, dim=1)  # T x (B, K_y) -> (B, T, K_y)
        return (logits, torch.stack(attn, dim=1)) if return_attention else logits

    # --------------------------------------------------------------------------- step interface (generate.py)
    def init_state(self, src: Tensor, src_lengths: Tensor | None = None, *, use_cache: bool = True) -> Seq2SeqState:
        """Encode once; U_a h_j is precomputed (App. A.1.2). ``use_cache`` has no effect: the state is the cache."""
        return self.encode(src, src_lengths)

    def step(self, tokens: Tensor, state: Seq2SeqState) -> tuple[Tensor, Seq2SeqState]:
        """Feed y_{i-1} (B,) and return the logits of y_i (B, K_y) and the new state."""
        emb, emb_proj = self._embed_target(tokens[:, None])
        return self._decode(emb_proj[:, 0], emb[:, 0], state)

    @torch.no_grad()
    def generate(self, src: Tensor, src_lengths: Tensor | None = None, **kwargs: Any) -> Any:
        """Translate ``src`` (B, S) with greedy / beam / sampling; see :func:`paperzoo.generate.generate`."""
        from ..generate import generate

        for k in ("bos_id", "eos_id", "pad_id"):
            kwargs.setdefault(k, getattr(self.cfg, k))
        return generate(self, src, src_lengths, **kwargs)


# ---------------------------------------------------------------------------------------- language model


@dataclass
class RNNLMConfig:
    """A multi-layer LSTM/GRU language model (Zaremba et al. 2014, Sec. 3)."""

    vocab_size: int = 256
    emb_dim: int = 256
    hidden_size: int = 256
    num_layers: int = 2
    cell: str = "lstm"
    dropout: float = 0.2  # on embeddings, between layers and before the output (Zaremba et al.: 0.5 / 0.65)
    tie_weights: bool = True  # needs emb_dim == hidden_size (Press & Wolf)
    block_size: int | None = None  # the training context length; recorded only, an RNN has no limit
    init_range: float = 0.1  # U(±0.1) for embeddings and the output layer (Zaremba et al., medium model)


@dataclass
class RNNLMState:
    """Batch-first recurrent state: ``h`` (B, L, H) and, for LSTMs, ``c`` (B, L, H)."""

    h: Tensor
    c: Tensor | None = None

    def reorder(self, index: Tensor) -> RNNLMState:
        return RNNLMState(self.h.index_select(0, index), None if self.c is None else self.c.index_select(0, index))


class RNNLanguageModel(nn.Module):
    """``forward(idx (B, T)) -> logits (B, T, V)`` predicting the next token; step interface for generation."""

    is_decoder_only = True

    def __init__(self, cfg: RNNLMConfig) -> None:
        super().__init__()
        if cfg.cell not in CELLS:
            raise ValueError(f"cell must be one of {sorted(CELLS)}, got {cfg.cell!r}")
        if cfg.tie_weights and cfg.emb_dim != cfg.hidden_size:
            raise ValueError(f"tie_weights needs emb_dim == hidden_size, got {cfg.emb_dim} and {cfg.hidden_size}")
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.emb_dim)
        self.rnn = CELLS[cfg.cell](cfg.emb_dim, cfg.hidden_size, cfg.num_layers, batch_first=True,
                                   dropout=cfg.dropout if cfg.num_layers > 1 else 0.0)
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.hidden_size, cfg.vocab_size)
        nn.init.uniform_(self.embed.weight, -cfg.init_range, cfg.init_range)
        nn.init.uniform_(self.head.weight, -cfg.init_range, cfg.init_range)
        nn.init.zeros_(self.head.bias)
        if cfg.tie_weights:
            self.head.weight = self.embed.weight

    def forward(self, idx: Tensor, state: RNNLMState | None = None, *, return_state: bool = False
                ) -> Tensor | tuple[Tensor, RNNLMState]:
        """Logits (B, T, V); pass and return ``state`` to carry it across chunks (truncated BPTT)."""
        _check_tokens(idx, "idx")
        hx = None
        if state is not None:  # (B, L, H) -> (L, B, H)
            hx = (state.h.transpose(0, 1), state.c.transpose(0, 1)) if state.c is not None else state.h.transpose(0, 1)
        out, hn = self.rnn(self.drop(self.embed(idx)), hx)  # (B, T, H)
        logits = self.head(self.drop(out))
        if not return_state:
            return logits
        h, c = hn if isinstance(hn, tuple) else (hn, None)
        return logits, RNNLMState(h.transpose(0, 1), None if c is None else c.transpose(0, 1))  # (B, L, H)

    def init_state(self, prefix: Tensor, src_lengths: Tensor | None = None, *, use_cache: bool = True
                   ) -> RNNLMState:
        """Read a prompt prefix (B, t) (may be empty); the next ``step`` gets the token that follows it.
        ``use_cache`` has no effect: the recurrent state is the cache."""
        if src_lengths is not None and bool((src_lengths != prefix.shape[1]).any()):
            raise ValueError("prompts in one batch must have the same length (no left padding)")
        B, L, H = prefix.shape[0], self.cfg.num_layers, self.cfg.hidden_size
        if prefix.shape[1] == 0:
            zeros = self.embed.weight.new_zeros(B, L, H)
            return RNNLMState(zeros, zeros.clone() if self.cfg.cell == "lstm" else None)
        return self.forward(prefix, return_state=True)[1]

    def step(self, tokens: Tensor, state: RNNLMState) -> tuple[Tensor, RNNLMState]:
        logits, state = self.forward(tokens[:, None], state, return_state=True)
        return logits[:, -1], state

    @torch.no_grad()
    def generate(self, prompt: Tensor, max_new_tokens: int, **kwargs: Any) -> Tensor:
        """Continue ``prompt`` (B, T0 ≥ 1) by up to ``max_new_tokens`` tokens; returns (B, T0 + new)."""
        from ..generate import generate

        kwargs.setdefault("method", "sample")
        out = generate(self, prompt, max_len=max_new_tokens, **kwargs)
        tokens = out.tokens[:, 0] if isinstance(out, BeamSearchOutput) else out  # beam search: the best hypothesis
        return torch.cat([prompt, tokens], dim=1)


# ----------------------------------------------------------------------------------------- registered models


@register_model(family="rnn_seq2seq", paper=BAHDANAU, kind="sequence", tags=("translation", "small"))
def rnn_seq2seq_attn(**kw: Any) -> Seq2SeqRNN:
    """Bi-GRU encoder + additive-attention GRU decoder, m=128, n=256, n'=256, l=256: trains on a CPU."""
    return Seq2SeqRNN(Seq2SeqConfig(**kw))


@register_model(family="rnn_seq2seq", paper=BAHDANAU, kind="sequence", tags=("translation",))
def rnnsearch(**kw: Any) -> Seq2SeqRNN:
    """The paper's RNNsearch (App. A.2, B.1): K = 30000 words, m=620, n=n'=1000, l=500."""
    cfg = {"src_vocab_size": 30000, "tgt_vocab_size": 30000, "m": 620, "n": 1000, "n_attn": 1000, "l": 500}
    return Seq2SeqRNN(Seq2SeqConfig(**{**cfg, **kw}))


@register_model(family="rnn_lm", paper=ZAREMBA, kind="sequence", tags=("lm", "small"))
def lstm_lm(**kw: Any) -> RNNLanguageModel:
    """2-layer LSTM LM, 256 units, tied embeddings, dropout 0.2 (e.g. character-level on fortunes)."""
    return RNNLanguageModel(RNNLMConfig(**{"cell": "lstm", **kw}))


@register_model(family="rnn_lm", paper=ZAREMBA, kind="sequence", tags=("lm", "small"))
def gru_lm(**kw: Any) -> RNNLanguageModel:
    """The same with GRU cells."""
    return RNNLanguageModel(RNNLMConfig(**{"cell": "gru", **kw}))
