"""DALL-E (Ramesh et al. 2021, "Zero-Shot Text-to-Image Generation", arXiv:2102.12092) on captioned Fashion-MNIST.

The pieces, one file each (docs/models/dalle.md walks through them):

* ``dvae.py`` — the discrete VAE of Sec. 2.1 / Appendix A (image -> grid of codes -> image), its losses and
  schedules; ``vae_task.py`` — the ``dalle_vae`` training task, ``load_dvae`` and ``tokenize_images``.
* ``captions.py`` — English and Korean captions made from each image's class and measured properties, and the
  SentencePiece BPE tokenizer over them; ``clip.py`` / ``clip_task.py`` — the small contrastive model
  (Radford et al. 2021, arXiv:2103.00020) that reranks samples (Sec. 2.5), the ``dalle_clip`` task, ``load_clip``.
* ``masks.py`` — the attention masks of Appendix B.1; ``transformer.py`` — the decoder-only Transformer over
  [text tokens ; image tokens] (Sec. 2.2); ``task.py`` — the ``dalle`` task, ``load_dalle``, ``generate`` and
  ``caption_images``.

Every public name below is importable from ``paperzoo.dalle``; the submodule is imported on first use, so
``import paperzoo.dalle`` stays cheap (no SentencePiece, no dataset reading).
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> the submodule that defines it
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(["DVAEConfig", "DiscreteVAE", "Encoder", "Decoder", "LOGIT_LAPLACE_EPS", "map_pixels",
                     "unmap_pixels", "logit_laplace_nll", "gumbel_softmax_relaxation", "kl_to_uniform",
                     "temperature_at", "kl_weight_at", "create_dvae", "dvae_names", "UnknownDVAEError"], "dvae"),
    **dict.fromkeys(["DVAEDataConfig", "AnnealConfig", "DVAETaskConfig", "DVAETask", "load_dvae",
                     "tokenize_images"], "vae_task"),
    **dict.fromkeys(["CLASS_NAMES_EN", "CLASS_NAMES_KO", "SHOE_CLASSES", "SIZES", "BRIGHTNESS", "DIRECTIONS",
                     "HELD_OUT", "INK_THRESHOLD", "SIZE_TERTILES", "BRIGHTNESS_MEDIAN", "measure", "quantise",
                     "make_caption", "n_templates", "all_captions", "class_prompts", "caption_class", "describes",
                     "build_caption_tokenizer", "CaptionedFashionMNIST"], "captions"),
    **dict.fromkeys(["CLIPConfig", "CLIP", "ImageEncoder", "TextEncoder", "clip_loss", "tokenize_captions",
                     "clip_scores", "rerank", "create_clip", "clip_names"], "clip"),
    **dict.fromkeys(["ClipDataConfig", "ClipTaskConfig", "ClipTask", "load_clip", "rerank_prompt"], "clip_task"),
    **dict.fromkeys(["MASK_KINDS", "causal_mask", "row_mask", "column_mask", "conv_mask", "make_mask", "layer_kinds",
                     "draw_masks"], "masks"),
    **dict.fromkeys(["DALLEConfig", "DALLE", "TEXT_FIRST", "IMAGE_FIRST"], "transformer"),
    **dict.fromkeys(["DALLEDataConfig", "DALLETaskConfig", "PairLoader", "DALLETask", "encode_captions",
                     "load_dalle", "generate", "caption_images"], "task"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import the submodule that defines ``name`` on first access (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
