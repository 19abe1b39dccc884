"""DALL-E's Transformer: one decoder-only model over [text tokens ; image tokens], in both directions.

Ramesh et al., "Zero-Shot Text-to-Image Generation", arXiv:2102.12092, Sec. 2.2 and Appendix B.

The text (BPE tokens, at most ``text_len`` of them) and the image (the dVAE's h x w grid of codes, N = h * w
tokens, in raster order) are concatenated into one stream and modelled autoregressively:

    text first (the paper's, text -> image):   [<text-first>, t_1 .. t_L, i_1 .. i_N]
    image first (captioning, image -> text):   [<image-first>, i_1 .. i_N, t_1 .. t_L]

* Text: a learned embedding and a learned position embedding per text position; a caption shorter than L is
  padded, and "we use a special padding token for each of the 256 text positions" (Sec. 2.2, App. B.2): the pad
  at position j is embedded as its own learned vector ``pad_emb[j]``, and the pads are predicted like any token
  (the model learns where a caption ends: captioning stops at the first pad).
* Image: its own embedding table (the paper's single vocabulary with an offset of the text vocabulary, split in
  two: with separate output heads this is that vocabulary with the logits of the wrong kind masked) and "row
  and column embeddings" (App. B.1) added by grid position.
* The loss is the cross-entropy of every next token, normalised per kind and weighted "1/8 for the text and 7/8
  for the image" (Sec. 2.2): loss = 1/8 mean CE(text) + 7/8 mean CE(image).
* Attention: the GPT-2 blocks of :mod:`paperzoo.models.gpt` (pre-norm, GELU MLP, fused-QKV attention); causal
  everywhere by default, or the paper's sparse row / column / convolutional masks (:mod:`paperzoo.dalle.masks`,
  ``mask_pattern="sparse"``, App. B.1).
* Sampling (:meth:`DALLE.generate_images`) and greedy captioning (:meth:`DALLE.caption`) run one token a step
  with the KV cache of :mod:`paperzoo.models.fast_decode` (``use_cache=False``: the blocks re-run over the whole
  prefix each step, the reference the tests hold the cache equal to).

Deviations:

* The leading order token and the image-first order are ours: the paper only models text -> image. Training on
  both orders lets the same model caption (issue 16's "both directions"). With ``swap_weights_image_first`` an
  image-first item weights its text 7/8 and its image 1/8: in each order the generated part gets the weight.
* Dense attention masks (a boolean tensor), not the paper's block-sparse GPU kernels; at our 7 x 7 grid the sparse
  masks restrict attention without saving compute.
* Sizes: 64 layers, 62 heads, d = 3968, 256 + 1024 tokens in the paper (12 billion parameters); a few million here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..generate import top_k_filter, top_p_filter
from ..models.fast_decode import KVCache, block_step, block_weights
from ..models.gpt import Block, GPTConfig, gpt2_init_
from .masks import layer_kinds, make_mask

__all__ = ["DALLEConfig", "DALLE", "TEXT_FIRST", "IMAGE_FIRST"]

TEXT_FIRST, IMAGE_FIRST = 0, 1  # ids of the order token


@dataclass
class DALLEConfig:
    """DALL-E Transformer hyper-parameters (the paper's values in the comments)."""

    text_len: int = 24  # text positions, captions padded to this (256)
    text_vocab: int = 1000  # BPE vocabulary of the caption tokenizer (16,384)
    text_pad_id: int = 0  # the tokenizer's padding id: marks the positions that get the per-position pad tokens
    image_vocab: int = 512  # dVAE codes (8,192)
    grid: tuple[int, int] = (7, 7)  # (h, w) of the dVAE's token grid (32 x 32)
    n_layer: int = 6  # (64)
    n_head: int = 8  # (62)
    n_embd: int = 256  # (3,968)
    dropout: float = 0.0
    mask_pattern: str = "causal"  # or "sparse": row / column / row / row ..., conv in the last layer (App. B.1)
    conv_kernel: int = 3  # the conv mask's window (11 on the paper's 32 x 32 grid)
    loss_text: float = 1 / 8  # Sec. 2.2: "we weight ... by 1/8 and 7/8"
    loss_image: float = 7 / 8
    swap_weights_image_first: bool = True  # image-first items: 7/8 text, 1/8 image (ours, see the docstring)

    def __post_init__(self) -> None:
        self.grid = tuple(int(g) for g in self.grid)  # type: ignore[assignment]
        counts = {"text_len": self.text_len, "text_vocab": self.text_vocab, "image_vocab": self.image_vocab,
                  "n_layer": self.n_layer, "n_head": self.n_head, "n_embd": self.n_embd}
        bad = [f"{k}={v}" for k, v in counts.items() if v < 1]
        if len(self.grid) != 2 or min(self.grid) < 1:
            bad.append(f"grid={list(self.grid)}")
        if bad:
            raise ValueError(f"DALLEConfig: these must be >= 1: {', '.join(bad)}")
        if not 0 <= self.text_pad_id < self.text_vocab:
            raise ValueError(f"DALLEConfig: text_pad_id={self.text_pad_id} is outside the text vocabulary")
        layer_kinds(self.mask_pattern, self.n_layer)  # refuses an unknown pattern

    @property
    def n_image(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def seq_len(self) -> int:
        """Order token + text + image."""
        return 1 + self.text_len + self.n_image


class DALLE(nn.Module):
    """``forward(text (B, L), image (B, h, w), order) -> {"loss", "loss_text", "loss_image", ...}``, plus
    :meth:`generate_images` (text -> codes) and :meth:`caption` (codes -> text)."""

    def __init__(self, cfg: DALLEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c, (h, w) = cfg.n_embd, cfg.grid
        self.order_emb = nn.Embedding(2, c)  # <text-first>, <image-first>
        self.text_emb = nn.Embedding(cfg.text_vocab, c)
        self.pad_emb = nn.Parameter(torch.empty(cfg.text_len, c))  # one learned pad token per text position
        self.text_pos = nn.Parameter(torch.empty(cfg.text_len, c))
        self.image_emb = nn.Embedding(cfg.image_vocab, c)
        self.row_emb = nn.Parameter(torch.empty(h, c))  # App. B.1: row and column embeddings
        self.col_emb = nn.Parameter(torch.empty(w, c))
        self.drop = nn.Dropout(cfg.dropout)
        gpt = GPTConfig(vocab_size=1, block_size=cfg.seq_len, n_layer=cfg.n_layer, n_head=cfg.n_head,
                        n_embd=c, dropout=cfg.dropout)
        self.blocks = nn.ModuleList(Block(gpt) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(c)
        self.text_head = nn.Linear(c, cfg.text_vocab, bias=False)
        self.image_head = nn.Linear(c, cfg.image_vocab, bias=False)
        self.kinds = layer_kinds(cfg.mask_pattern, cfg.n_layer)
        for kind in sorted(set(self.kinds) - {"causal"}):  # (2, T, T): [text-first, image-first] layouts
            masks = [make_mask(kind, cfg.text_len, cfg.grid, kernel=cfg.conv_kernel, image_first=f, lead=1)
                     for f in (False, True)]
            self.register_buffer(f"mask_{kind}", torch.stack(masks), persistent=False)
        self._init_weights()

    def _init_weights(self) -> None:
        gpt2_init_(self, self.blocks, (self.pad_emb, self.text_pos, self.row_emb, self.col_emb))  # GPT-2's

    # ------------------------------------------------------------------------------------------ embeddings
    def embed_text(self, text: Tensor, start: int = 0) -> Tensor:
        """Text ids (B, n) at positions start .. start + n - 1 -> (B, n, C); pads get their position's token."""
        pos = slice(start, start + text.shape[1])
        x = self.text_emb(text)  # (B, n, C)
        x = torch.where((text == self.cfg.text_pad_id)[..., None], self.pad_emb[pos], x)  # per-position pads
        return x + self.text_pos[pos]

    def embed_image(self, codes: Tensor, start: int = 0) -> Tensor:
        """Codes (B, n) at raster positions start .. start + n - 1 -> (B, n, C), plus row and column embeddings."""
        k = torch.arange(start, start + codes.shape[1], device=codes.device)
        w = self.cfg.grid[1]
        return self.image_emb(codes) + self.row_emb[k // w] + self.col_emb[k % w]

    def embed_order(self, image_first: Tensor) -> Tensor:
        """(B,) bool -> the order tokens (B, 1, C)."""
        return self.order_emb(image_first.long())[:, None]

    # ------------------------------------------------------------------------------------------ the stack
    def _mask(self, kind: str, image_first: Tensor, rows: slice, keys: int) -> Tensor | None:
        """The layer's mask rows (B, 1, len(rows), keys) for each item's order; None for a causal layer."""
        if kind == "causal":
            return None
        m = getattr(self, f"mask_{kind}")[:, rows, :keys]  # (2, n, keys)
        return m[image_first.long()][:, None]  # (B, 1, n, keys)

    def hidden(self, x: Tensor, image_first: Tensor) -> Tensor:
        """Embedded sequences (B, T, C) starting with the order token -> final hidden states (B, T, C)."""
        t = x.shape[1]
        x = self.drop(x)
        for kind, block in zip(self.kinds, self.blocks):
            x = block(x, self._mask(kind, image_first, slice(0, t), t))
        return self.ln_f(x)

    def _check(self, text: Tensor, image: Tensor) -> None:
        cfg = self.cfg
        if text.dim() != 2 or text.shape[1] != cfg.text_len:
            raise ValueError(f"text must be (B, text_len={cfg.text_len}) token ids, got {tuple(text.shape)}")
        if image.shape[1:] != cfg.grid:
            raise ValueError(f"image must be (B, {cfg.grid[0]}, {cfg.grid[1]}) codes, got {tuple(image.shape)}")
        if text.numel() and (int(text.min()) < 0 or int(text.max()) >= cfg.text_vocab):
            raise ValueError(f"text ids must lie in [0, {cfg.text_vocab})")
        if image.numel() and (int(image.min()) < 0 or int(image.max()) >= cfg.image_vocab):
            raise ValueError(f"image codes must lie in [0, {cfg.image_vocab})")

    @staticmethod
    def _image_first(order: str | Tensor, batch: int, device: torch.device) -> Tensor:
        """"text" / "image" or a (B,) bool tensor (True = image first) -> (B,) bool."""
        if isinstance(order, Tensor):
            if order.shape != (batch,):
                raise ValueError(f"order must be 'text', 'image' or a ({batch},) bool tensor, got {tuple(order.shape)}")
            return order.to(device=device, dtype=torch.bool)
        if order not in ("text", "image"):
            raise ValueError(f"order must be 'text' (text first) or 'image' (image first), got {order!r}")
        return torch.full((batch,), order == "image", device=device)

    def forward(self, text: Tensor, image: Tensor, order: str | Tensor = "text") -> dict[str, Tensor]:
        """Teacher-forced losses of the sequences [order; text; image] or [order; image; text].

        Returns ``loss`` (the weighted sum, averaged over the batch), ``loss_text`` and ``loss_image`` (mean
        cross-entropy per token of each kind), ``text_logits`` (B, L, V_text) and ``image_logits`` (B, N, V_img).
        """
        self._check(text, image)
        cfg, b = self.cfg, text.shape[0]
        first = self._image_first(order, b, text.device)  # (B,)
        codes = image.flatten(1)  # (B, h, w) -> (B, N), raster order
        o, t, i = self.embed_order(first), self.embed_text(text), self.embed_image(codes)
        f = first[:, None, None]
        seq = torch.where(f, torch.cat([o, i, t], 1), torch.cat([o, t, i], 1))  # (B, T, C)
        h = self.hidden(seq[:, :-1], first)  # (B, T - 1, C): h[:, p] predicts token p + 1
        n_t, n_i = cfg.text_len, cfg.n_image
        ar_t, ar_i = torch.arange(n_t, device=h.device), torch.arange(n_i, device=h.device)
        text_at = torch.where(first[:, None], n_i + ar_t, ar_t)  # (B, L): positions whose next token is text
        image_at = torch.where(first[:, None], ar_i, n_t + ar_i)  # (B, N)
        text_logits = self.text_head(_gather(h, text_at))  # (B, L, V_text)
        image_logits = self.image_head(_gather(h, image_at))  # (B, N, V_img)
        ce_t = F.cross_entropy(text_logits.float().transpose(1, 2), text, reduction="none").mean(1)  # (B,)
        ce_i = F.cross_entropy(image_logits.float().transpose(1, 2), codes, reduction="none").mean(1)
        swap = first & cfg.swap_weights_image_first
        w_t = torch.where(swap, cfg.loss_image, cfg.loss_text)  # Sec. 2.2: 1/8 text, 7/8 image
        w_i = torch.where(swap, cfg.loss_text, cfg.loss_image)
        return {"loss": (w_t * ce_t + w_i * ce_i).mean(), "loss_text": ce_t.mean(), "loss_image": ce_i.mean(),
                "text_logits": text_logits, "image_logits": image_logits}

    # ------------------------------------------------------------------------------------------ decoding
    def _feeder(self, image_first: Tensor, use_cache: bool) -> Callable[[Tensor], Tensor]:
        """A function that takes the next embedded positions (B, n, C) and returns their hidden states (B, n, C).

        Cached: each block keeps its keys / values (fast_decode's KVCache) and only the new positions run.
        Uncached (the reference): every call re-runs the blocks over everything fed so far."""
        if not use_cache:
            fed: list[Tensor] = []

            def rerun(x: Tensor) -> Tensor:
                fed.append(x)
                return self.hidden(torch.cat(fed, 1), image_first)[:, -x.shape[1]:]

            return rerun
        size = self.cfg.seq_len
        caches = [KVCache(size, max_length=size) for _ in self.blocks]
        weights = [block_weights(block) for block in self.blocks]

        def step(x: Tensor) -> Tensor:
            start, n = caches[0].length, x.shape[1]
            for kind, cache, w in zip(self.kinds, caches, weights):
                x = block_step(x, cache, w, self._mask(kind, image_first, slice(start, start + n), start + n))
            return self.ln_f(x)

        return step

    def _decode(self, prefix: Tensor, image_first: Tensor, steps: int, head: nn.Linear,
                embed: Callable[[Tensor, int], Tensor], choose: Callable[[Tensor], Tensor],
                use_cache: bool) -> Tensor:
        """Feed ``prefix`` (B, t, C), then ``steps`` times: choose a token from ``head``'s logits at the last
        position and feed its embedding ``embed(token (B, 1), index)``. Returns the tokens (B, steps)."""
        was_training = self.training
        self.eval()  # no dropout: the cached blocks have none
        try:
            feed = self._feeder(image_first, use_cache)
            h, out = feed(prefix), []
            for s in range(steps):
                out.append(choose(head(h[:, -1])))  # (B,)
                if s + 1 < steps:
                    h = feed(embed(out[-1][:, None], s))
            return torch.stack(out, 1)
        finally:
            self.train(was_training)

    @torch.no_grad()
    def generate_images(self, text: Tensor, *, temperature: float = 1.0, top_k: int | None = None,
                        top_p: float | None = None, generator: torch.Generator | None = None,
                        use_cache: bool = True) -> Tensor:
        """Sample image codes (B, h, w) for text ids (B, L) (padded with ``text_pad_id``), one code a step.

        ``temperature`` 0 is greedy; ``top_k`` / ``top_p`` restrict sampling to the k most likely codes / the
        nucleus (paperzoo.generate's filters)."""
        cfg = self.cfg
        self._check(text, text.new_zeros(text.shape[0], *cfg.grid))
        if not temperature >= 0.0 or (top_k is not None and top_k < 0) or \
                (top_p is not None and not 0.0 < top_p <= 1.0):
            raise ValueError(f"need temperature >= 0, top_k >= 0, 0 < top_p <= 1; got {temperature}, {top_k}, {top_p}")
        first = torch.zeros(text.shape[0], dtype=torch.bool, device=text.device)
        prefix = torch.cat([self.embed_order(first), self.embed_text(text)], 1)  # (B, 1 + L, C)

        def choose(logits: Tensor) -> Tensor:
            if temperature == 0.0:
                return logits.argmax(-1)
            logits = logits.float() / temperature
            logits = top_k_filter(logits, top_k) if top_k else logits
            logits = top_p_filter(logits, top_p) if top_p is not None else logits
            return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(1)

        codes = self._decode(prefix, first, cfg.n_image, self.image_head, self.embed_image, choose, use_cache)
        return codes.view(-1, *cfg.grid)  # (B, N) -> (B, h, w)

    @torch.no_grad()
    def caption(self, image: Tensor, *, use_cache: bool = True) -> Tensor:
        """Greedy text ids (B, L) for image codes (B, h, w): the image-first order; after the first pad every
        position is a pad (the caption has ended)."""
        cfg = self.cfg
        self._check(image.new_zeros(image.shape[0], cfg.text_len), image)
        first = torch.ones(image.shape[0], dtype=torch.bool, device=image.device)
        prefix = torch.cat([self.embed_order(first), self.embed_image(image.flatten(1))], 1)  # (B, 1 + N, C)
        ended = torch.zeros_like(first)

        def choose(logits: Tensor) -> Tensor:
            nonlocal ended
            tokens = logits.argmax(-1).masked_fill(ended, cfg.text_pad_id)
            ended = ended | (tokens == cfg.text_pad_id)
            return tokens

        return self._decode(prefix, first, cfg.text_len, self.text_head, self.embed_text, choose, use_cache)


def _gather(h: Tensor, index: Tensor) -> Tensor:
    """Rows ``index`` (B, n) of h (B, T, C) -> (B, n, C)."""
    return h.gather(1, index[..., None].expand(-1, -1, h.shape[-1]))
