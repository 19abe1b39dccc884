"""Encoder-decoder attention of a trained translation model for one sentence, tokens on both axes.

The model first translates the sentence; then one teacher-forced pass over (source, its own translation)
collects the cross-attention weights (B, heads, T, S) of every decoder layer (Vaswani et al. 2017, Sec. 3.2.3:
queries from the decoder, keys and values from the top encoder layer). Row t shows which source tokens the
decoder read while producing output token t. Panels: the head average of the chosen layer, then each head.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from .common import font_for, new_figure, save_figure


def _labels(tok, ids: list[int]) -> list[str]:
    special = {tok.bos_id: "<s>", tok.eos_id: "</s>", tok.pad_id: "<pad>"}
    return [special.get(i) or tok.decode([i]).replace(" ", "·") or "?" for i in ids]


def translation_attention(checkpoint: str | os.PathLike, sentence: str, which: str = "best"
                          ) -> tuple[torch.Tensor, list[str], list[str], str]:
    """(cross-attention per layer (L, heads, T, S), source labels, output labels, the translation)."""
    from paperzoo.text.tasks import load_text_checkpoint, translate

    ck = load_text_checkpoint(checkpoint, which)
    if ck.task != "translation":
        raise ValueError(f"{checkpoint} is a {ck.task!r} checkpoint, not a translation model")
    if not hasattr(ck.model, "attention_maps"):
        raise ValueError(f"{type(ck.model).__name__} does not expose attention_maps (use a Transformer)")
    src_tok, tgt_tok = ck.tokenizers["src"], ck.tokenizers["tgt"]
    decode = {k: v for k, v in (ck.meta.get("decode") or {}).items() if k in ("max_len", "method", "beam_size")}
    hyp = translate(ck.model, [sentence], src_tok, tgt_tok, **decode)[0]  # decoded as the run's config says
    src_ids = src_tok.encode(sentence, add_eos=True)
    out_ids = tgt_tok.encode(hyp, add_eos=True)  # the tokens the decoder produced, EOS included
    tgt_in = [tgt_tok.bos_id] + out_ids[:-1]  # teacher forcing: BOS + all but the last
    with torch.no_grad():
        maps = ck.model.attention_maps(torch.tensor([src_ids]), torch.tensor([tgt_in]))["cross"]
    weights = torch.stack([m[0] for m in maps])  # (L, heads, T, S)
    return weights, _labels(src_tok, src_ids), _labels(tgt_tok, out_ids), hyp


def plot_translation_attention(checkpoint: str | os.PathLike, sentence: str, path: str | os.PathLike,
                               layer: int = -1, max_heads: int = 4, which: str = "best") -> Path:
    weights, src_labels, out_labels, hyp = translation_attention(checkpoint, sentence, which)
    if not -weights.shape[0] <= layer < weights.shape[0]:
        raise ValueError(f"layer {layer} out of range: the decoder has {weights.shape[0]} layers")
    w = weights[layer]  # (heads, T, S)
    panels = [("mean over heads", w.mean(0))] + [(f"head {h}", w[h]) for h in range(min(max_heads, w.shape[0]))]
    cols = min(len(panels), 3)
    rows = math.ceil(len(panels) / cols)
    s, t = len(src_labels), len(out_labels)
    fig, axes = new_figure(cols, rows, size=(cols * max(4.0, 0.35 * s + 2), rows * max(3.5, 0.32 * t + 1.8)))
    for ax in axes.flat:
        ax.axis("off")
    im = None
    font = font_for([*src_labels, *out_labels, sentence, hyp])  # Korean needs a CJK font: DejaVu has no Hangul
    family = {} if font is None else {"fontfamily": font}
    for ax, (title, m) in zip(axes.flat, panels):
        ax.axis("on")
        im = ax.imshow(m.numpy(), cmap="viridis", vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(s), src_labels, rotation=90, fontsize=7, **family)
        ax.set_yticks(range(t), out_labels, fontsize=7, **family)
        ax.set(title=title, xlabel="source token (keys, values)", ylabel="output token (queries)")
    fig.colorbar(im, ax=list(axes.flat), shrink=0.7, label="attention weight")
    fig.suptitle(f"Encoder-decoder attention, decoder layer {layer}: {sentence!r} -> {hyp!r}", fontsize=10,
                 **family)
    return save_figure(fig, path)
