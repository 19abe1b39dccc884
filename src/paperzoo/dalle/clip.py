"""A small CLIP for Fashion-MNIST captions: DALL-E reranks its samples with it.

Radford et al. 2021, "Learning Transferable Visual Models From Natural Language Supervision", arXiv:2103.00020;
used by DALL-E (Ramesh et al. 2021, arXiv:2102.12092, Sec. 2.5) to rank the N images sampled for a caption.

CLIP trains an image encoder and a text encoder so that the N matching (image, text) pairs of a batch score
higher than the N² - N mismatched ones (Fig. 3's pseudocode):

    I_e = l2_normalize(W_i · image_encoder(I)),  T_e = l2_normalize(W_t · text_encoder(T))
    logits = I_e T_eᵀ · exp(t)                                                  (t: a learned log temperature)
    loss = (CE(logits, arange(N), axis=0) + CE(logits, arange(N), axis=1)) / 2  (the symmetric InfoNCE)

The temperature starts at 0.07 (t = log(1/0.07)) and exp(t) is clipped at 100 (Sec. 2.5). The text encoder is
GPT-2's pre-norm Transformer with causal ("masked") self-attention, whose feature at the [EOS] token, layer-normed
and projected, is the text embedding (Sec. 2.4).

Deviations (all for 28 x 28 grayscale images and a few thousand distinct captions):

* the image encoder is a 5-layer CNN (conv-BN-ReLU, two stride-2 stages, global average pooling), not a ResNet
  with attention pooling or a ViT;
* the text encoder is 2 layers of width 64 over a ~500-piece SentencePiece BPE (the paper: 12 layers, 512
  wide, 49,152 BPE), with a context of 16 tokens;
* our captions are generated, so we know which texts of a batch truly describe which images: "a sneaker"
  describes every sneaker, "a small dark sneaker" every small dark one, and its Korean twin the same ones. The
  paper's loss counts all of them but the item's own as wrong matches, which for ~1,500 distinct captions is
  mostly noise. :func:`clip_loss` takes an optional ``positives`` matrix (True where text j describes image i)
  and spreads each image's target uniformly over the texts describing it, and each text's over the images it
  describes (a multi-positive InfoNCE, as in supervised contrastive learning, Khosla et al. 2020,
  arXiv:2004.11362). With the identity matrix (or None) it is exactly the paper's loss.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from paperzoo.layers.conv_norm_act import ConvNormAct
from paperzoo.models.gpt import Block, GPTConfig

__all__ = ["CLIPConfig", "CLIP", "ImageEncoder", "TextEncoder", "clip_loss", "tokenize_captions", "clip_scores",
           "rerank", "create_clip", "clip_names"]

# Fashion-MNIST's training-split pixel statistics (paperzoo.data.datasets): the image encoder standardises with them
_FMNIST_MEAN, _FMNIST_STD = 0.2860, 0.3530


@dataclass
class CLIPConfig:
    """Hyper-parameters of the small CLIP (the paper's names where it has them: width, layers, heads)."""

    vocab_size: int = 512  # the caption tokenizer's size
    context_length: int = 16  # longest tokenized caption, BOS and EOS included
    embed_dim: int = 128  # the joint embedding space
    image_width: int = 16  # channels of the first CNN stage (then 2x, 4x)
    text_width: int = 64
    text_layers: int = 2
    text_heads: int = 4
    dropout: float = 0.0
    pad_id: int = 0  # the tokenizer's padding id (paperzoo tokenizers: 0)
    init_temperature: float = 0.07  # Sec. 2.5: "initialized to the equivalent of 0.07"
    max_logit_scale: float = 100.0  # Sec. 2.5: "clipped to prevent scaling the logits by more than 100"

    def __post_init__(self) -> None:
        for k in ("vocab_size", "context_length", "embed_dim", "image_width", "text_width", "text_layers",
                  "text_heads"):
            if int(getattr(self, k)) < 1:
                raise ValueError(f"CLIPConfig.{k} must be >= 1, got {getattr(self, k)}")
        if self.text_width % self.text_heads:
            raise ValueError(f"text_width {self.text_width} is not divisible by text_heads {self.text_heads}")
        if self.init_temperature <= 0 or self.max_logit_scale <= 0:
            raise ValueError("init_temperature and max_logit_scale must be positive")


class ImageEncoder(nn.Module):
    """(B, 1, 28, 28) in [0, 1] -> (B, embed_dim): five conv-BN-ReLU at 28, 14, 14, 7, 7 pixels, average pool,
    linear projection."""

    def __init__(self, cfg: CLIPConfig) -> None:
        super().__init__()
        w = cfg.image_width
        self.features = nn.Sequential(
            ConvNormAct(1, w),  # 28 x 28
            ConvNormAct(w, 2 * w, stride=2), ConvNormAct(2 * w, 2 * w),  # 14 x 14
            ConvNormAct(2 * w, 4 * w, stride=2), ConvNormAct(4 * w, 4 * w),  # 7 x 7
        )
        self.proj = nn.Linear(4 * w, cfg.embed_dim, bias=False)  # W_i of Fig. 3

    def forward(self, x: Tensor) -> Tensor:
        x = (x - _FMNIST_MEAN) / _FMNIST_STD
        return self.proj(self.features(x).mean((2, 3)))  # (B, 4w, 7, 7) -> (B, 4w) -> (B, D)


class TextEncoder(nn.Module):
    """(B, L) BPE ids, right-padded, each [BOS] ... [EOS] -> (B, embed_dim): the [EOS] token's feature (Sec. 2.4)."""

    def __init__(self, cfg: CLIPConfig) -> None:
        super().__init__()
        self.cfg = cfg
        gpt = GPTConfig(vocab_size=cfg.vocab_size, block_size=cfg.context_length, n_layer=cfg.text_layers,
                        n_head=cfg.text_heads, n_embd=cfg.text_width, dropout=cfg.dropout)
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.text_width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.text_width))
        self.blocks = nn.ModuleList(Block(gpt) for _ in range(cfg.text_layers))
        self.ln_final = nn.LayerNorm(cfg.text_width)
        self.proj = nn.Linear(cfg.text_width, cfg.embed_dim, bias=False)  # W_t of Fig. 3
        # the released CLIP's initialisation: embeddings N(0, 0.02) / N(0, 0.01), projection N(0, width^-1/2)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.proj.weight, std=cfg.text_width ** -0.5)

    def forward(self, tokens: Tensor, pad_id: int | None = None) -> Tensor:
        pad_id = self.cfg.pad_id if pad_id is None else pad_id
        if tokens.dim() != 2 or tokens.shape[1] > self.cfg.context_length:
            raise ValueError(f"tokens must be (B, L) with L <= {self.cfg.context_length}, got {tuple(tokens.shape)}")
        lengths = (tokens != pad_id).sum(1)
        if (lengths == 0).any():
            raise ValueError("every text needs at least one token (an empty row is all padding)")
        x = self.token_embedding(tokens) + self.positional_embedding[: tokens.shape[1]]  # (B, L, C)
        for block in self.blocks:
            x = block(x)  # causal: a real token never sees the padding after it
        x = self.ln_final(x)
        eos = x[torch.arange(x.shape[0], device=x.device), lengths - 1]  # (B, C): the last real token, [EOS]
        return self.proj(eos)


class CLIP(nn.Module):
    """Image and text encoders into one normalised embedding space, and the learned temperature."""

    def __init__(self, cfg: CLIPConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or CLIPConfig()
        self.visual = ImageEncoder(cfg)
        self.text = TextEncoder(cfg)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.init_temperature)))  # t of Fig. 3

    def encode_image(self, images: Tensor) -> Tensor:
        """(B, 1, 28, 28) in [0, 1] -> (B, D), unit length."""
        if images.dim() != 4 or images.shape[1] != 1:
            raise ValueError(f"images must be (B, 1, H, W) in [0, 1], got {tuple(images.shape)}")
        return F.normalize(self.visual(images), dim=-1)

    def encode_text(self, tokens: Tensor, pad_id: int | None = None) -> Tensor:
        """(B, L) int64 token ids (right-padded with ``pad_id``, each ending in EOS) -> (B, D), unit length."""
        return F.normalize(self.text(tokens, pad_id), dim=-1)

    def scale(self) -> Tensor:
        """exp(t), clipped at ``max_logit_scale`` (the clamp passes no gradient there, as the paper's clipping)."""
        return self.logit_scale.exp().clamp(max=self.cfg.max_logit_scale)

    def forward(self, images: Tensor, tokens: Tensor) -> Tensor:
        """logits_per_image (B, B): entry (i, j) scores image i against text j (Fig. 3)."""
        return self.scale() * self.encode_image(images) @ self.encode_text(tokens).t()


def clip_loss(logits_per_image: Tensor, positives: Tensor | None = None) -> Tensor:
    """The symmetric InfoNCE of Fig. 3: the mean of the image -> text and text -> image cross-entropies.

    ``positives`` (B, B) bool, True where text j describes image i (the diagonal at least): image i's target is
    uniform over its row's positives, text j's over its column's (module docstring); None = the one-hot diagonal.
    """
    b = logits_per_image.shape[0]
    if logits_per_image.shape != (b, b):
        raise ValueError(f"logits must be square (B, B), got {tuple(logits_per_image.shape)}")
    logits = logits_per_image.float()
    if positives is None:
        target = torch.arange(b, device=logits.device)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
    p = positives.float()
    if not bool(p.diagonal().all()):
        raise ValueError("positives must hold the diagonal: each text describes its own image")
    to_text, to_image = p / p.sum(1, keepdim=True), p.t() / p.t().sum(1, keepdim=True)  # rows sum to 1
    return (F.cross_entropy(logits, to_text) + F.cross_entropy(logits.t(), to_image)) / 2


def tokenize_captions(tokenizer, texts: Sequence[str], context_length: int) -> Tensor:
    """(N, context_length) int64: [BOS] text [EOS], right-padded with the tokenizer's pad id.

    Raises ValueError when a text needs more than ``context_length`` tokens.
    """
    rows = [tokenizer.encode(t, add_bos=True, add_eos=True) for t in texts]
    too_long = [t for t, r in zip(texts, rows) if len(r) > context_length]
    if too_long:
        raise ValueError(f"caption {too_long[0]!r} needs more than {context_length} tokens (BOS and EOS included)")
    out = torch.full((len(rows), context_length), tokenizer.pad_id, dtype=torch.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r)
    return out


@torch.no_grad()
def clip_scores(clip: CLIP, images: Tensor, tokens: Tensor, *, batch_size: int = 512) -> Tensor:
    """Cosine similarity (N,) of each image (N, 1, 28, 28) to the one text ``tokens`` (1, L)."""
    if tokens.dim() != 2 or tokens.shape[0] != 1:
        raise ValueError(f"tokens must be one text (1, L), got {tuple(tokens.shape)}")
    was_training = clip.training
    clip.eval()
    text = clip.encode_text(tokens)  # (1, D)
    image = torch.cat([clip.encode_image(images[i: i + batch_size]) for i in range(0, len(images), batch_size)])
    clip.train(was_training)
    return (image @ text.t()).squeeze(1)  # (N,)


def rerank(clip: CLIP, images: Tensor, tokens: Tensor) -> Tensor:
    """DALL-E's reranking (Sec. 2.5): the indices (N,) of ``images`` from the best match of ``tokens`` (1, L) down."""
    return clip_scores(clip, images, tokens).argsort(descending=True, stable=True)


# ------------------------------------------------------------------------------------------ builders
def clip_fmnist(**kw) -> CLIP:
    """The small CLIP of the recipe: 219,953 parameters (a 77,872 image CNN, a 142,080 text Transformer)."""
    return CLIP(CLIPConfig(**kw))


def clip_tiny(**kw) -> CLIP:
    """A minute CLIP for tests and smoke runs."""
    return CLIP(CLIPConfig(**{"embed_dim": 32, "image_width": 8, "text_width": 32, "text_layers": 1,
                              "text_heads": 2, **kw}))


_BUILDERS = {"clip_fmnist": clip_fmnist, "clip_tiny": clip_tiny}


def clip_names() -> list[str]:
    return sorted(_BUILDERS)


def create_clip(name: str, **kw) -> CLIP:
    """A CLIP by builder name (:func:`clip_names`) with :class:`CLIPConfig` fields as keywords."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown CLIP model {name!r}; valid choices: {', '.join(clip_names())}")
    try:
        return _BUILDERS[name](**kw)
    except TypeError as e:
        raise ValueError(f"model.args do not fit {name}: {e}") from None
