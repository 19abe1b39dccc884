"""Patch embedding (ViT arXiv:2010.11929 Eq. 1; Swin arXiv:2103.14030 Sec. 3.1 "patch partition" +
"linear embedding").

Cutting the image into non-overlapping P x P patches, flattening each and applying the same linear map E is
exactly a convolution with kernel = stride = P, which is how it is computed here (one kernel call).
"""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .helpers import to_2tuple

__all__ = ["PatchEmbed"]


class PatchEmbed(nn.Module):
    """(B, C, H, W) image -> (B, H/P, W/P, D) grid of patch embeddings (channels last, ready for tokens).

    Args:
        patch_size: P (int or (Ph, Pw)).
        in_chans: image channels C.
        embed_dim: D.
        norm: apply LayerNorm(D) to each embedding (Swin does; ViT does not).
        pad: if the image sides are not multiples of P, zero-pad bottom/right up to the next multiple
            (``True``) or raise a ``ValueError`` naming the sizes (``False``).
    """

    def __init__(self, patch_size: int | tuple[int, int] = 16, in_chans: int = 3, embed_dim: int = 768,
                 norm: bool = False, pad: bool = False, bias: bool = True) -> None:
        super().__init__()
        self.patch_size = to_2tuple(patch_size)
        self.pad = pad
        self.proj = nn.Conv2d(in_chans, embed_dim, self.patch_size, self.patch_size, bias=bias)  # E
        self.norm = nn.LayerNorm(embed_dim) if norm else nn.Identity()

    def grid_size(self, h: int, w: int) -> tuple[int, int]:
        """Patch grid (gh, gw) of an h x w image (padding rounds up)."""
        ph, pw = self.patch_size
        if self.pad:
            return -(-h // ph), -(-w // pw)
        return h // ph, w // pw

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        ph, pw = self.patch_size
        if h % ph or w % pw:
            if not self.pad:
                raise ValueError(
                    f"input {h}x{w} is not divisible by the patch size {ph}x{pw}; resize or crop it to a "
                    f"multiple such as {h // ph * ph or ph}x{w // pw * pw or pw}, or build the model with padding"
                )
            x = F.pad(x, (0, -w % pw, 0, -h % ph))  # zeros on the right and bottom
        x = self.proj(x)  # (B, D, H/P, W/P)
        return self.norm(x.permute(0, 2, 3, 1))  # (B, D, gh, gw) -> (B, gh, gw, D)
