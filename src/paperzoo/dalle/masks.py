"""DALL-E's attention masks over one sequence of text tokens and an h x w grid of image tokens.

Ramesh et al., "Zero-Shot Text-to-Image Generation", arXiv:2102.12092, Sec. 2.2 and Appendix B.1 (Fig. 11).

Every mask is a boolean (T, T) tensor, True where query i **may** attend to key j (the convention of
``F.scaled_dot_product_attention`` and :mod:`paperzoo.layers.attention`). All of them are causal (j <= i); the
sparse ones restrict only *image-to-image* attention, while every token keeps attending to all the text (and
the lead tokens) before it, as the paper says: "each image token [can] attend to all text tokens".

Image-to-image rules, with k the raster index (row-major, k = r * w + c) of an image token:

* ``causal_mask``: every earlier image token (dense; the default of :class:`~paperzoo.dalle.transformer.DALLE`);
* ``row_mask`` (Fig. 11a): the previous w tokens in raster order and itself, 0 <= k_i - k_j <= w, i.e. the rest
  of its row to the left and the end of the row above, down to the token right above it (Sparse Transformer's
  local "row" head, Child et al. arXiv:1904.10509, widened by one so that the token above is in view);
* ``column_mask`` (Fig. 11b): the tokens of its own column above it and itself, (k_i - k_j) mod w = 0;
* ``conv_mask`` (Fig. 11d): a causal kernel x kernel window, |r_i - r_j| <= kernel // 2 and
  |c_i - c_j| <= kernel // 2 among the earlier tokens (the paper uses 11 x 11 on its 32 x 32 grid).

Fig. 11c (the column mask in a transposed image layout) is the same attention as 11b, an implementation trick
for the GPU kernels; it is not built here. :func:`layer_kinds` gives the paper's per-layer choice: for layer
i = 1..n, "column" when (i - 2) mod 4 = 0, "row" otherwise, and "conv" in the last layer.

The layout is ``lead`` tokens (DALLE's order token), then the text and the image (``image_first=False``) or the
image and the text (``image_first=True``, for captioning). :func:`draw_masks` saves the masks as one picture.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["MASK_KINDS", "causal_mask", "row_mask", "column_mask", "conv_mask", "make_mask", "layer_kinds",
           "draw_masks"]

MASK_KINDS = ("causal", "row", "column", "conv")


def _layout(text_len: int, grid: tuple[int, int], image_first: bool, lead: int) -> tuple[Tensor, Tensor]:
    """(T,) bool: is position t an image token; (T,) int64: its raster index k (-1 for text / lead tokens)."""
    h, w = grid
    if text_len < 0 or lead < 0 or h < 1 or w < 1:
        raise ValueError(f"need text_len, lead >= 0 and a grid of at least 1 x 1, got {text_len}, {lead}, {grid}")
    n = h * w
    parts = [(False, lead), (True, n), (False, text_len)] if image_first else \
        [(False, lead), (False, text_len), (True, n)]
    is_image = torch.cat([torch.full((size,), flag) for flag, size in parts])  # (T,)
    k = torch.full(is_image.shape, -1, dtype=torch.long)
    k[is_image] = torch.arange(n)
    return is_image, k


def _restrict(text_len: int, grid: tuple[int, int], image_first: bool, lead: int,
              rule: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """causal & (not both image, or ``rule(k_i (T, 1), k_j (1, T))`` for the image-to-image pairs)."""
    is_image, k = _layout(text_len, grid, image_first, lead)
    t = torch.arange(k.shape[0])
    causal = t[None, :] <= t[:, None]  # (T, T): key j <= query i
    both = is_image[:, None] & is_image[None, :]  # (T, T): image query, image key
    return causal & (~both | rule(k[:, None], k[None, :]))


def causal_mask(text_len: int, grid: tuple[int, int], *, image_first: bool = False, lead: int = 0) -> Tensor:
    """The standard causal mask (T, T), T = lead + text_len + h * w: j <= i."""
    return _restrict(text_len, grid, image_first, lead, lambda ki, kj: torch.ones((), dtype=torch.bool))


def row_mask(text_len: int, grid: tuple[int, int], *, image_first: bool = False, lead: int = 0) -> Tensor:
    """Fig. 11a: an image token sees the w image tokens before it in raster order, and itself."""
    w = grid[1]
    return _restrict(text_len, grid, image_first, lead, lambda ki, kj: ki - kj <= w)


def column_mask(text_len: int, grid: tuple[int, int], *, image_first: bool = False, lead: int = 0) -> Tensor:
    """Fig. 11b: an image token sees the image tokens of its column above it, and itself."""
    w = grid[1]
    return _restrict(text_len, grid, image_first, lead, lambda ki, kj: (ki - kj) % w == 0)


def conv_mask(text_len: int, grid: tuple[int, int], *, kernel: int = 3, image_first: bool = False,
              lead: int = 0) -> Tensor:
    """Fig. 11d: an image token sees the earlier image tokens of the kernel x kernel window centred on it."""
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"conv_mask needs an odd kernel >= 1, got {kernel}")
    w, half = grid[1], kernel // 2

    def window(ki: Tensor, kj: Tensor) -> Tensor:
        return ((ki // w - kj // w).abs() <= half) & ((ki % w - kj % w).abs() <= half)  # rows and columns

    return _restrict(text_len, grid, image_first, lead, window)


def make_mask(kind: str, text_len: int, grid: tuple[int, int], *, kernel: int = 3, image_first: bool = False,
              lead: int = 0) -> Tensor:
    """The mask called ``kind`` (one of :data:`MASK_KINDS`)."""
    kw = {"image_first": image_first, "lead": lead}
    if kind == "conv":
        return conv_mask(text_len, grid, kernel=kernel, **kw)
    builders = {"causal": causal_mask, "row": row_mask, "column": column_mask}
    if kind not in builders:
        raise ValueError(f"unknown mask kind {kind!r}; valid choices: {', '.join(MASK_KINDS)}")
    return builders[kind](text_len, grid, **kw)


def layer_kinds(pattern: str, n_layer: int) -> list[str]:
    """The mask kind of each layer: ``"causal"`` everywhere, or the paper's ``"sparse"`` pattern (App. B.1):
    layer i = 1..n is "column" if (i - 2) mod 4 = 0 else "row" (row, column, row, row, ...), the last "conv"."""
    if pattern == "causal":
        return ["causal"] * n_layer
    if pattern != "sparse":
        raise ValueError(f"unknown mask_pattern {pattern!r}; valid choices: causal, sparse")
    kinds = ["column" if (i - 2) % 4 == 0 else "row" for i in range(1, n_layer + 1)]
    return kinds[:-1] + ["conv"] if n_layer else kinds


def draw_masks(path: str | Path, text_len: int = 6, grid: tuple[int, int] = (4, 4), *, kernel: int = 3,
               kinds: Sequence[str] = MASK_KINDS, image_first: bool = False, lead: int = 0) -> Path:
    """Save the masks side by side as a PNG (the paper's Fig. 11 uses 6 text tokens and a 4 x 4 grid): white =
    may attend, a line where the image tokens start."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(kinds), figsize=(3.2 * len(kinds), 3.4), squeeze=False)
    start = lead + (0 if image_first else text_len) - 0.5  # where the image block begins
    for ax, kind in zip(axes[0], kinds):
        m = make_mask(kind, text_len, grid, kernel=kernel, image_first=image_first, lead=lead)
        ax.imshow(m.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        for line in (ax.axhline, ax.axvline):
            line(start, color="tab:red", lw=0.8)
        ax.set_title(kind if kind != "conv" else f"conv ({kernel}x{kernel})")
        ax.set_xlabel("key")
        ax.set_ylabel("query")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
