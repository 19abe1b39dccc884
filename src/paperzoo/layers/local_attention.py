"""Local k x k self-attention with relative position embeddings, a drop-in for a spatial convolution.

Ramachandran et al., "Stand-Alone Self-Attention in Vision Models", arXiv:1906.05909 (NeurIPS 2019).

Every pixel ij forms a query q_ij = W_Q x_ij and attends over its k x k neighbourhood N_k(i, j) (the "memory
block") of keys k_ab = W_K x_ab and values v_ab = W_V x_ab. With relative positions (Sec. 2.2, Eq. 3):

    y_ij = sum_{a,b in N_k(i,j)} softmax_ab( q_ij^T k_ab + q_ij^T r_{a-i, b-j} ) v_ab

r_{a-i,b-j} is the concatenation of a row-offset embedding r_{a-i} and a column-offset embedding r_{b-j}, each
of half the query width, so q^T r = q_row^T r_{a-i} + q_col^T r_{b-j}: k row terms plus k column terms per
pixel, broadcast to the k x k window (the k^2 embeddings are never built). With N heads the channels are split
into N groups of d_out/N and each head computes Eq. 3 on its group; the outputs are concatenated.

Keys and values of every window are gathered with ``F.unfold``: (B, C * k^2, H * W), viewed as
(B, heads, d, k^2, H * W), and Eq. 3 is evaluated in that layout. Memory is therefore O(B * C * H * W * k^2),
proportional to k^2 per pixel and never to (H * W)^2.

Choices and deviations:
* W_Q, W_K, W_V are full d_in -> d_out 1x1 projections (no bias) whose outputs are split into heads. Sec. 2.2
  describes per-head d_in/N -> d_out/N maps, but the parameter counts of the paper's Table 1 (18.0M for the
  attention ResNet-50) are those of full projections, so we follow the table.
* Each head has its own row and column embeddings (d_out / (2N) wide each), so every head sees both offsets.
* Neighbours outside the image are masked out of the softmax (the paper does not say how borders are handled;
  zero-padded keys would still get the weight exp(q^T r) and pull in zero values).
* Eq. 2 has no 1/sqrt(d) factor, so ``scale`` defaults to 1.0; pass ``scale=dim_head ** -0.5`` for the
  Transformer convention.
* Stride: the attention runs at stride 1 and is followed by 2x2 average pooling with stride 2 (Sec. 3.1);
  ``ceil_mode=True`` so odd sizes give ceil(H/2), the size a strided 3x3 conv and the 1x1/2 shortcut give.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = ["LocalSelfAttention2d"]


class LocalSelfAttention2d(nn.Module):
    """Multi-head k x k local self-attention with relative row/column embeddings (SASA, Eq. 3).

    Args:
        in_chs: input channels d_in.
        out_chs: output channels d_out (must be divisible by ``2 * heads``).
        kernel_size: spatial extent k of the neighbourhood (odd).
        heads: number of heads N.
        stride: 1, or 2 for attention followed by 2x2 average pooling (Sec. 3.1).
        scale: factor on the logits; Eq. 2 uses none (1.0).
    """

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 7, heads: int = 8, stride: int = 1,
                 scale: float = 1.0) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd so the window is centred on its pixel, got {kernel_size}")
        if out_chs % (2 * heads) != 0:
            raise ValueError(f"out_chs={out_chs} must be divisible by 2 * heads = {2 * heads} "
                             "(each head splits its channels between row and column offsets)")
        if scale <= 0:
            raise ValueError(f"scale must be positive, got {scale}")
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        self.in_chs, self.out_chs, self.stride = in_chs, out_chs, stride
        self.kernel_size, self.heads = kernel_size, heads
        self.dim_head = out_chs // heads
        self.scale = scale
        self.to_q = nn.Conv2d(in_chs, out_chs, 1, bias=False)  # W_Q
        self.to_k = nn.Conv2d(in_chs, out_chs, 1, bias=False)  # W_K
        self.to_v = nn.Conv2d(in_chs, out_chs, 1, bias=False)  # W_V
        # r_{a-i} and r_{b-j} for offsets -(k//2) .. k//2, per head: (heads, k, d/2)
        self.rel_row = nn.Parameter(torch.empty(heads, kernel_size, self.dim_head // 2))
        self.rel_col = nn.Parameter(torch.empty(heads, kernel_size, self.dim_head // 2))
        self.pool = nn.AvgPool2d(2, 2, ceil_mode=True) if stride == 2 else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for conv in (self.to_q, self.to_k, self.to_v):
            nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="linear")
        nn.init.normal_(self.rel_row, std=1.0)
        nn.init.normal_(self.rel_col, std=1.0)

    def _gather(self, x: Tensor) -> Tensor:
        """k x k windows of a (B, C, H, W) map as (B, heads, d, k^2, H*W), zero outside the image."""
        B, C, H, W = x.shape
        k = self.kernel_size
        win = F.unfold(x, k, padding=k // 2)  # (B, C * k^2, H*W); channel-major, window row-major
        return win.view(B, self.heads, self.dim_head, k * k, H * W)  # (B, heads, d, k^2, N)

    def _inside(self, H: int, W: int, device: torch.device) -> Tensor:
        """(k^2, H*W) bool: which window positions fall inside the image."""
        k = self.kernel_size
        ones = torch.ones(1, 1, H, W, device=device)
        return F.unfold(ones, k, padding=k // 2)[0] > 0  # (k^2, N)

    def _relative_logits(self, q: Tensor, H: int, W: int) -> Tensor:
        """q^T r_{a-i,b-j} of Eq. 3, and -inf outside the image: (B, heads, k^2, N)."""
        half = self.dim_head // 2
        q_row, q_col = q[:, :, :half], q[:, :, half:]  # (B, heads, d/2, N) each
        row = torch.einsum("bhdn,hkd->bhkn", q_row, self.rel_row)  # q_row^T r_{a-i}: (B, heads, k, N)
        col = torch.einsum("bhdn,hkd->bhkn", q_col, self.rel_col)  # q_col^T r_{b-j}: (B, heads, k, N)
        rel = (row.unsqueeze(3) + col.unsqueeze(2)).flatten(2, 3)  # (B, heads, k, k, N) -> (B, heads, k^2, N)
        return rel.masked_fill(~self._inside(H, W, q.device), float("-inf"))

    def forward(self, x: Tensor, return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """(B, d_in, H, W) -> (B, d_out, H', W'); with ``return_attention`` also the weights
        (B, heads, H*W, k^2) each pixel gives the positions of its window (row-major, offsets -k//2..k//2)."""
        B, _, H, W = x.shape
        q = self.to_q(x).reshape(B, self.heads, self.dim_head, 1, H * W)  # (B, heads, d, 1, N)
        keys = self._gather(self.to_k(x))  # (B, heads, d, k^2, N)
        values = self._gather(self.to_v(x))  # (B, heads, d, k^2, N)
        # Eq. 3 in the unfold layout, one query per pixel over its own k^2 keys. (A batched SDPA call would need
        # (..., k^2, d)-ordered copies of keys and values and was not faster on CPU; tests/models/test_sasa.py
        # checks this path against one built on F.scaled_dot_product_attention.) einsum keeps the dot products
        # visible to torch.utils.flop_counter, so `paperzoo models` counts them.
        logits = torch.einsum("bhdxn,bhdkn->bhkn", q, keys)  # q_ij . k_ab: (B, heads, k^2, N)
        logits = logits + self._relative_logits(q.squeeze(3), H, W)  # + q_ij . r_{a-i,b-j}
        attn = (logits * self.scale).softmax(dim=2)  # softmax_ab over the window
        out = torch.einsum("bhkn,bhdkn->bhdn", attn, values)  # sum_ab attn * v_ab: (B, heads, d, N)
        out = out.reshape(B, self.out_chs, H, W)  # (B, heads, d, N) -> (B, C, H, W)
        out = self.pool(out)  # 2x2 average pooling with stride 2 when downsampling (Sec. 3.1)
        return (out, attn.transpose(2, 3)) if return_attention else out  # weights: (B, heads, N, k^2)

    def extra_repr(self) -> str:
        return (f"{self.in_chs}, {self.out_chs}, kernel_size={self.kernel_size}, heads={self.heads}, "
                f"stride={self.stride}, scale={self.scale}")
