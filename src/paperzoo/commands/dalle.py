"""``paperzoo dalle train-vae|train-clip|train|generate|caption``: DALL-E on captioned Fashion-MNIST
(Ramesh et al. 2021, arXiv:2102.12092; docs/models/dalle.md).

* ``train-vae CONFIG``, ``train-clip CONFIG``, ``train CONFIG`` — the three stages (the discrete VAE, the CLIP
  reranker, the Transformer over [text ; image] tokens), each on the shared trainer: ``--set``, ``--resume``,
  ``--print-config`` and the shortcuts of ``paperzoo train``; e.g. ``paperzoo dalle train-vae dalle_vae_fmnist``.
* ``generate RUN PROMPT [--n 16] [-o grid.png] [--rerank K --clip CLIP_RUN]`` — text -> image: ``n`` samples
  for the prompt, tiled into one PNG; with ``--rerank K``, ``n x K`` samples of which CLIP keeps the ``n`` it
  scores highest, best first (Sec. 2.5).
* ``caption RUN IMAGE...`` — image -> text with the same Transformer, image first (greedy).

Each command is a thin layer over the Python API of ``paperzoo.dalle``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ._shared import COMMON_SHORTCUTS, add_training_args, run_training

if TYPE_CHECKING:  # torch is imported when a command runs, not when the CLI starts
    from torch import Tensor

#: (subcommand, task, what it trains, recipe)
STAGES = (("train-vae", "dalle_vae", "the discrete VAE (images -> tokens)", "dalle_vae_fmnist"),
          ("train-clip", "dalle_clip", "the CLIP reranker (images <-> captions)", "dalle_clip_fmnist"),
          ("train", "dalle", "the Transformer over [text ; image] tokens", "dalle_fmnist"))

#: the image size every DALL-E piece here works at (Fashion-MNIST)
IMAGE_SIZE = (28, 28)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dalle", help="DALL-E: train the dVAE / CLIP / Transformer, generate images, caption images",
                       description="Text -> image and image -> text on captioned Fashion-MNIST (docs/models/dalle.md).")
    ds = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    for name, task, what, recipe in STAGES:
        q = ds.add_parser(name, help=f"train {what} from a YAML recipe (+ overrides); resumable",
                          description=f"Train {what}. CONFIG is a YAML file or a recipe name in configs/ "
                                      f"(e.g. {recipe}).")
        add_training_args(q, shortcuts=COMMON_SHORTCUTS, example="train.max_steps=100")
        q.set_defaults(func=lambda a, task=task: run_training(a, task=task))

    q = ds.add_parser("generate", help="text -> image: samples for a prompt as one PNG grid (optionally CLIP-reranked)")
    q.add_argument("run", help="dalle run directory, checkpoint directory or .safetensors file")
    q.add_argument("prompt", help='the caption, e.g. "a small dark sneaker" or "작고 어두운 운동화"')
    q.add_argument("--n", type=int, default=16, help="images to write")
    q.add_argument("-o", "--out", default="dalle_samples.png", help="PNG file of the image grid")
    q.add_argument("--rerank", type=int, default=1, metavar="K",
                   help="draw n x K samples and keep the n that CLIP scores highest (needs --clip); 1: no reranking")
    q.add_argument("--clip", help="dalle_clip run directory used by --rerank")
    q.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    q.add_argument("--top-k", type=int, help="sample among the k most likely codes only (default: all)")
    q.add_argument("--top-p", type=float, help="nucleus sampling: the smallest set of codes with this much "
                                               "probability (default: all)")
    q.add_argument("--seed", type=int, default=0, help="seed of the sampling (default: 0)")
    _add_run_args(q)
    q.set_defaults(func=_generate)

    q = ds.add_parser("caption", help="image -> text: a caption for each image file")
    q.add_argument("run", help="dalle run directory, checkpoint directory or .safetensors file")
    q.add_argument("images", nargs="+", metavar="IMAGE",
                   help="image files: converted to grayscale and resized to 28x28; light item on dark ground, "
                        "as in Fashion-MNIST")
    _add_run_args(q)
    q.set_defaults(func=_caption)


def _add_run_args(q: argparse.ArgumentParser) -> None:
    q.add_argument("--which", choices=["best", "final", "last"], default="best",
                   help="which checkpoint of a run directory")
    q.add_argument("--device", default="cpu", help="cpu or cuda")


def read_images(paths: Sequence[str | Path], size: tuple[int, int] = IMAGE_SIZE) -> Tensor:
    """Image files as one grayscale batch (N, 1, H, W) in [0, 1], each resized (bilinear) to ``size``; a missing
    or unreadable file is one clear error before any model is loaded."""
    import torch
    from PIL import UnidentifiedImageError

    from paperzoo.train.evaluate import _load_image

    out = []
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no such image file")
        try:
            out.append(_load_image(path, 1, size))  # (1, H, W)
        except UnidentifiedImageError as e:
            raise ValueError(f"{path}: not an image file PIL can read") from e
    return torch.stack(out)  # (N, 1, H, W)


def check_prompt(prompt: str) -> str:
    """The prompt without surrounding blanks; an empty one is refused."""
    if not prompt.strip():
        raise ValueError("the prompt is empty: give a caption, e.g. \"a small dark sneaker\"")
    return prompt.strip()


def _generate(args: argparse.Namespace) -> int:
    from paperzoo.dalle import generate, load_clip, rerank_prompt
    from paperzoo.viz.tokens import save_image_grid

    prompt = check_prompt(args.prompt)
    if args.n < 1 or args.rerank < 1:
        raise ValueError(f"--n and --rerank must be >= 1, got {args.n} and {args.rerank}")
    if args.rerank > 1 and not args.clip:
        raise ValueError("--rerank K needs --clip CLIP_RUN (a dalle_clip run) to score the samples")
    # CLIP first: a wrong --clip costs nothing
    clip = load_clip(args.clip, which=args.which, device=args.device) if args.rerank > 1 else None
    images = generate(args.run, prompt, args.n * args.rerank, temperature=args.temperature, top_k=args.top_k,
                      top_p=args.top_p, seed=args.seed, which=args.which, device=args.device)  # (n K, 1, H, W)
    note = ""
    if clip is not None:  # Sec. 2.5: keep the samples CLIP scores highest, best first
        order = rerank_prompt(*clip, images, prompt)  # (n K,) best first
        images = images[order[: args.n].cpu()]
        note = f", the best {args.n} of {args.n * args.rerank} by CLIP"
    path = save_image_grid(images, args.out)
    print(f"wrote {len(images)} samples for {prompt!r}{note} to {path}")
    return 0


def _caption(args: argparse.Namespace) -> int:
    from paperzoo.dalle import caption_images

    images = read_images(args.images)  # (N, 1, 28, 28), before loading the model
    for path, text in zip(args.images, caption_images(args.run, images, which=args.which, device=args.device)):
        print(f"{path}: {text}")
    return 0
