"""RoI pooling (Fast R-CNN) and RoIAlign (Mask R-CNN): a fixed-size feature per box, cut from a shared map.

* :func:`roi_pool` — Fast R-CNN (Girshick 2015, arXiv:1504.08083), Sec. 2.1 "The RoI pooling layer": the box is
  split into an ``H x W`` grid of sub-windows and each is max-pooled.
* :func:`roi_align` — Mask R-CNN (He et al. 2017, arXiv:1703.06870), Sec. 3 "RoIAlign": no quantization of the
  box or of its bins; the features at regularly sampled points of each bin are computed by bilinear
  interpolation and averaged (the paper also allows max; like Detectron and torchvision we average).

Both follow torchvision's CPU kernels (``roi_pool_kernel.cpp``, ``roi_align_kernel.cpp``) detail for detail, so
that its detection checkpoints see the same features:

* ``rois`` is ``(K, 5)``: ``(batch_index, x1, y1, x2, y2)`` in image pixels; ``spatial_scale`` (e.g. 1/16) maps
  them onto the feature map. The batch index is truncated to an integer.
* RoI pooling: the scaled corners are rounded (half away from zero, C's ``round``), the box is
  ``x2 - x1 + 1`` pixels wide (at least 1), bin ``i`` covers ``[floor(i * w / W), ceil((i + 1) * w / W))``
  relative to the box, clipped to the map; an empty bin gives 0 (and no gradient). In a tie the first maximum
  in row-major order takes the gradient, as the kernel's argmax does.
* RoIAlign: ``aligned=False`` (Mask R-CNN as published) forces the box to be at least 1 x 1 pixel;
  ``aligned=True`` shifts it by -0.5 pixel so that a pixel's centre sits at integer + 0.5 (Detectron2's
  correction) and keeps its true size. A sampling point with ``y < -1`` or ``y > H`` (likewise x) contributes 0;
  inside that band, coordinates are clamped to ``[0, H - 1]``.
* No gradient flows to ``rois`` (torchvision's ops give none either; the detectors detach their proposals).
* bf16 / fp16 features (autocast): coordinates and arithmetic in float32, the output in the features' dtype, as
  torchvision's autocast wrappers do.

Vectorization: no Python loop over boxes, bins or sampling points, only over a few chunks of RoIs.

* RoI pooling gathers, for a chunk of RoIs of similar size at once, their bins' pixels padded to the chunk's
  largest bin, and finds each channel's first maximum without autograd; only those maxima are then read with a
  gradient, so the backward pass costs ``K * C * out_h * out_w``.
* RoIAlign is linear in the features, so it is one sparse matrix (the bilinear weights of every sampling
  point, divided by the bin's number of points) times the ``(B * H * W, C)`` channels-last map; the backward
  pass multiplies by its transpose. The matrix has ``4 * Gh * Gw`` entries per bin, ``G`` the largest number of
  points per bin along an axis (adaptive sampling pads every RoI to the largest box's count); it is built a
  chunk of RoIs at a time, so memory stays bounded.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["roi_pool", "roi_align", "RoIPool", "RoIAlign"]

# RoIAlign builds its sparse interpolation matrix for this many nonzeros at a time (~100 MB of indices, weights
# and temporaries), so that adaptive sampling on large boxes, or R-CNN's warp of thousands of regions, stays bounded.
_MAX_MATRIX_ENTRIES = 1 << 22
# RoI pooling finds its maxima for this many RoIs (sorted by size) at a time.
_ROI_POOL_CHUNK = 64


def _pair(output_size: int | Sequence[int]) -> tuple[int, int]:
    size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    if len(size) != 2 or any(int(s) < 1 for s in size):
        raise ValueError(f"output_size must be a positive int or a pair of them, got {output_size!r}")
    return int(size[0]), int(size[1])


def _prepare(features: Tensor, rois: Tensor, output_size: int | Sequence[int]
             ) -> tuple[tuple[int, int], Tensor, Tensor]:
    """Checked shapes; the output size, the RoIs as constants (no gradient flows to them, as in torchvision) in the
    kernels' floating type, and their batch indices (truncated, like the kernels' int cast).

    The floating type is the features' (float32 or float64), or float32 for bf16/fp16 features, as torchvision's
    autocast wrappers do: bf16 cannot even hold pixel coordinates (steps of 4 between 512 and 1024)."""
    if features.dim() != 4:
        raise ValueError(f"features must be (B, C, H, W), got shape {tuple(features.shape)}")
    if rois.dim() != 2 or rois.shape[1] != 5:
        raise ValueError(f"rois must be (K, 5) as (batch_index, x1, y1, x2, y2), got shape {tuple(rois.shape)}")
    if not features.is_floating_point():
        raise ValueError(f"features must be floating point, got {features.dtype}")
    rois = rois.detach().to(features.dtype if features.dtype in (torch.float32, torch.float64) else torch.float32)
    return _pair(output_size), rois, rois[:, 0].long()


def _round_half_away(x: Tensor) -> Tensor:
    """C's ``round``: halves go away from zero (``torch.round`` rounds them to even)."""
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def _quantized_bins(start: Tensor, length: Tensor, bins: int, size: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Fast R-CNN's quantized bin edges along one axis: ``(K, bins)`` starts and ends, clipped to ``[0, size]``.

    ``start``/``length`` are the RoI's integer start and length in pixels, ``(K,)`` long. Bin ``i`` covers
    ``[floor(i * length / bins), ceil((i + 1) * length / bins))`` after ``start``; the bin size is a ``dtype``
    value, as the reference kernel computes it in its floating template type.
    """
    bin_size = length.to(dtype) / bins  # (K,)
    i = torch.arange(bins, device=start.device, dtype=dtype)  # (bins,)
    lo = torch.floor(i * bin_size[:, None]).long() + start[:, None]  # (K, bins)
    hi = torch.ceil((i + 1) * bin_size[:, None]).long() + start[:, None]
    return lo.clamp(0, size), hi.clamp(0, size)


def _first_max_rows(padded: Tensor, batch: Tensor, h_lo: Tensor, h_hi: Tensor, w_lo: Tensor, w_hi: Tensor,
                    shape: tuple[int, int, int]) -> Tensor:
    """For every bin and channel, the row of ``padded`` (the ``(B * H * W + 1, C)`` channels-last map, whose last
    row is -inf) holding the bin's first maximum: ``(K, out_h, out_w, C)`` long; the -inf row for an empty bin.

    Bins are padded to the tallest / widest one of these RoIs (at least 1, so that an all-empty call still has a
    dimension to reduce); padding reads the -inf row.
    """
    B, H, W = shape
    Lh = max(int((h_hi - h_lo).max()), 1)
    Lw = max(int((w_hi - w_lo).max()), 1)
    ys = h_lo[:, :, None] + torch.arange(Lh, device=h_lo.device)  # (K, out_h, Lh)
    xs = w_lo[:, :, None] + torch.arange(Lw, device=w_lo.device)  # (K, out_w, Lw)
    inside = (ys < h_hi[:, :, None])[:, :, None, :, None] & (xs < w_hi[:, :, None])[:, None, :, None, :]
    rows = (batch[:, None, None, None, None] * H + ys[:, :, None, :, None]) * W + xs[:, None, :, None, :]
    rows = torch.where(inside, rows, B * H * W).flatten(3)  # (K, out_h, out_w, Lh * Lw)
    # torch.max returns the first maximum of a row, so flattening (Lh, Lw) row-major reproduces the kernel's
    # argmax (scan rows, then columns, strict >) and hence its gradient in a tie.
    first = padded[rows].max(dim=3).indices  # (K, out_h, out_w, C)
    return rows.gather(3, first)


def roi_pool(features: Tensor, rois: Tensor, output_size: int | Sequence[int], spatial_scale: float = 1.0) -> Tensor:
    """Fast R-CNN's RoI max pooling (Sec. 2.1): ``(B, C, H, W)``, ``(K, 5)`` -> ``(K, C, out_h, out_w)``."""
    (out_h, out_w), rois, batch = _prepare(features, rois, output_size)
    B, C, H, W = features.shape
    if len(rois) == 0:
        return features.new_zeros(0, C, out_h, out_w)
    # Sec. 2.1: the RoI is snapped to the feature-map grid (rounded), then divided into out_h x out_w bins.
    x1, y1, x2, y2 = _round_half_away(rois[:, 1:] * spatial_scale).long().unbind(1)
    roi_w = (x2 - x1 + 1).clamp(min=1)  # a malformed box becomes 1 x 1
    roi_h = (y2 - y1 + 1).clamp(min=1)
    h_lo, h_hi = _quantized_bins(y1, roi_h, out_h, H, rois.dtype)  # (K, out_h)
    w_lo, w_hi = _quantized_bins(x1, roi_w, out_w, W, rois.dtype)  # (K, out_w)

    pixels = features.permute(0, 2, 3, 1).reshape(B * H * W, C)  # (B*H*W, C)
    argmax = torch.empty(len(rois), out_h, out_w, C, dtype=torch.long, device=rois.device)
    with torch.no_grad():  # find the maxima without keeping the large padded gather for the backward pass
        padded = torch.cat((pixels, pixels.new_full((1, C), float("-inf"))))  # (B*H*W + 1, C)
        # RoIs of similar size together: each chunk pads to its own largest bin (and memory stays bounded).
        largest_bin = (h_hi - h_lo).amax(1) * (w_hi - w_lo).amax(1)  # (K,)
        for k in largest_bin.argsort().split(_ROI_POOL_CHUNK):
            argmax[k] = _first_max_rows(padded, batch[k], h_lo[k], h_hi[k], w_lo[k], w_hi[k], (B, H, W))
    empty = argmax == B * H * W  # an empty bin (only padding); the kernel defines it as 0
    # Differentiable read of the maxima: the backward pass sends each output's gradient to its argmax pixel only.
    pooled = pixels.gather(0, argmax.masked_fill(empty, 0).flatten(0, 2)).view(argmax.shape)
    pooled = pooled.masked_fill(empty, 0.0)  # (K, out_h, out_w, C)
    return pooled.permute(0, 3, 1, 2).contiguous()  # (K, C, out_h, out_w)


def _sample_axis(
    start: Tensor, bin_size: Tensor, grid: Tensor, bins: int, size: int
) -> tuple[Tensor, Tensor]:
    """RoIAlign's sampling points along one axis, as the pixels they read and the weights they read them with.

    ``start``, ``bin_size`` (floating) and ``grid`` (points per bin, long) are ``(K,)``. Point ``g`` of bin ``i``
    sits at ``start + i * bin_size + (g + 0.5) * bin_size / grid`` (Mask R-CNN Fig. 3: regularly spaced points
    inside each bin, none on its border). All RoIs share a padded count ``G = max(grid)``; a padded point has
    weight 0. Returns ``(taps, weights)``, each ``(K, bins, 2G)``: for every point its two neighbouring pixels
    (linear interpolation) and their weights divided by ``grid``, so that summing a bin's taps averages its
    points (0 for a point outside ``[-1, size]`` or in the padding).
    """
    dtype = start.dtype
    G = max(int(grid.max()), 1)
    i = torch.arange(bins, device=start.device, dtype=dtype)[None, :, None]  # (1, bins, 1)
    g = torch.arange(G, device=start.device)  # (G,)
    step = bin_size[:, None, None]
    points = grid.clamp(min=1).to(dtype)[:, None, None]  # (K, 1, 1); an empty box has no valid point anyway
    # The kernel's order of operations: (start + i * bin) + (g + 0.5) * bin / grid.
    coord = start[:, None, None] + i * step + (g.to(dtype) + 0.5) * step / points  # (K, bins, G)
    # Written as "not outside" so that a NaN coordinate is invalid, as in the kernel.
    valid = (coord >= -1.0) & (coord <= size) & (g < grid[:, None])[:, None, :]  # (K, bins, G)
    coord = torch.where(valid, coord, 0.0).clamp(min=0.0)  # points in [-1, 0) read pixel 0
    lo = coord.floor().long()
    edge = lo >= size - 1  # points in [size - 1, size] read the last pixel
    lo = torch.where(edge, size - 1, lo)
    hi = torch.where(edge, size - 1, lo + 1)
    frac = torch.where(edge, 0.0, coord - lo.to(dtype))
    zero = torch.zeros((), dtype=dtype, device=start.device)
    weights = torch.cat((torch.where(valid, 1.0 - frac, zero), torch.where(valid, frac, zero)), dim=2) / points
    return torch.cat((lo, hi), dim=2), weights


def _interpolation_matrix(batch: Tensor, y: tuple[Tensor, Tensor], x: tuple[Tensor, Tensor],
                          shape: tuple[int, int, int]) -> Tensor:
    """RoIAlign as a matrix: row ``(k, i, j)`` holds bin ``(i, j)`` of RoI ``k``'s weights on the ``B * H * W``
    pixels, a sparse CSR ``(K * out_h * out_w, B * H * W)`` tensor.

    ``y = (taps, weights)`` are ``(K, out_h, Ty)`` from :func:`_sample_axis`, ``x`` likewise ``(K, out_w, Tx)``.
    Bilinear interpolation is separable, so a tap ``(ty, tx)`` weighs ``wy * wx``; every row has ``Ty * Tx``
    entries (points outside the map or in the padding with weight 0; a pixel read by several points appears
    several times, and the product sums them).
    """
    (y_taps, y_weights), (x_taps, x_weights) = y, x
    B, H, W = shape
    K, out_h, out_w = len(batch), y_taps.shape[1], x_taps.shape[1]
    # (K, out_h, out_w, Ty, Tx): pixel (y, x) of image b is row (b * H + y) * W + x of the channels-last map.
    cols = (batch[:, None, None, None, None] * H + y_taps[:, :, None, :, None]) * W + x_taps[:, None, :, None, :]
    values = y_weights[:, :, None, :, None] * x_weights[:, None, :, None, :]
    rows, per_row = K * out_h * out_w, y_taps.shape[2] * x_taps.shape[2]
    # CSR, not COO: the rows come out in order, so nothing is sorted (COO's product coalesces first, 2-4x slower).
    crow = torch.arange(rows + 1, device=batch.device) * per_row  # row pointers: equal-length rows
    with warnings.catch_warnings():  # torch flags its sparse CSR layout as beta on first use; it is what we want
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, cols.flatten(), values.flatten(), (rows, B * H * W),
                                       check_invariants=False)


def roi_align(
    features: Tensor,
    rois: Tensor,
    output_size: int | Sequence[int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """Mask R-CNN's RoIAlign (Sec. 3): ``(B, C, H, W)``, ``(K, 5)`` -> ``(K, C, out_h, out_w)``.

    ``sampling_ratio > 0`` samples ``sampling_ratio x sampling_ratio`` points per bin; ``<= 0`` samples
    ``ceil(roi_h / out_h) x ceil(roi_w / out_w)`` of them, a count that differs from RoI to RoI. That adaptive
    count is vectorized by padding every RoI to the largest count and giving the padded points weight 0; the
    average divides by each RoI's own count.

    The output is linear in the features: ``out = A @ F`` with ``F`` the ``(B * H * W, C)`` channels-last map
    and ``A`` the sparse matrix of bilinear weights (:func:`_interpolation_matrix`), so forward and backward
    (``A^T @ grad``) are two sparse products. Low-precision features (bf16, fp16, e.g. under autocast) are
    interpolated in float32, as torchvision's kernel does, and the result is cast back.
    """
    (out_h, out_w), rois, batch = _prepare(features, rois, output_size)
    B, C, H, W = features.shape
    if len(rois) == 0:
        return features.new_zeros(0, C, out_h, out_w)
    # No rounding of the box (the point of RoIAlign); aligned=True moves pixel centres to integer + 0.5.
    x1, y1, x2, y2 = (rois[:, 1:] * spatial_scale - (0.5 if aligned else 0.0)).unbind(1)
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)  # malformed boxes become 1 x 1
    bin_h, bin_w = roi_h / out_h, roi_w / out_w
    if sampling_ratio > 0:
        grid_h = grid_w = torch.full_like(batch, sampling_ratio)
    else:  # adaptive; an empty or inverted box (possible when aligned) gets no points and outputs 0
        grid_h = torch.ceil(roi_h / out_h).long().clamp(min=0)
        grid_w = torch.ceil(roi_w / out_w).long().clamp(min=0)
    y_taps, y_weights = _sample_axis(y1, bin_h, grid_h, out_h, H)  # (K, out_h, 2 Gh)
    x_taps, x_weights = _sample_axis(x1, bin_w, grid_w, out_w, W)  # (K, out_w, 2 Gw)

    with torch.autocast(features.device.type, enabled=False):  # sparse products in the weights' dtype
        pixels = features.permute(0, 2, 3, 1).reshape(B * H * W, C).to(rois.dtype)  # (B*H*W, C)
        # Bounded memory: the matrix has out_h * out_w * 2 Gh * 2 Gw entries per RoI; build it a chunk at a time.
        step = max(_MAX_MATRIX_ENTRIES // (out_h * out_w * y_taps.shape[2] * x_taps.shape[2]), 1)
        pooled = []
        for start in range(0, len(rois), step):
            k = slice(start, start + step)
            A = _interpolation_matrix(batch[k], (y_taps[k], y_weights[k]), (x_taps[k], x_weights[k]), (B, H, W))
            pooled.append(torch.sparse.mm(A, pixels))  # (k * out_h * out_w, C)
    pooled = pooled[0] if len(pooled) == 1 else torch.cat(pooled)  # (K * out_h * out_w, C); one chunk: no copy
    return pooled.view(-1, out_h, out_w, C).permute(0, 3, 1, 2).to(features.dtype).contiguous()


class RoIPool(nn.Module):
    """Fast R-CNN's RoI max-pooling layer (arXiv:1504.08083, Sec. 2.1); see :func:`roi_pool`."""

    def __init__(self, output_size: int | Sequence[int], spatial_scale: float) -> None:
        super().__init__()
        self.output_size = _pair(output_size)
        self.spatial_scale = float(spatial_scale)

    def forward(self, features: Tensor, rois: Tensor) -> Tensor:
        return roi_pool(features, rois, self.output_size, self.spatial_scale)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}, spatial_scale={self.spatial_scale}"


class RoIAlign(nn.Module):
    """Mask R-CNN's RoIAlign layer (arXiv:1703.06870, Sec. 3); see :func:`roi_align`."""

    def __init__(
        self, output_size: int | Sequence[int], spatial_scale: float, sampling_ratio: int = -1, aligned: bool = False
    ) -> None:
        super().__init__()
        self.output_size = _pair(output_size)
        self.spatial_scale = float(spatial_scale)
        self.sampling_ratio = int(sampling_ratio)
        self.aligned = bool(aligned)

    def forward(self, features: Tensor, rois: Tensor) -> Tensor:
        return roi_align(features, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned)

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}"
        )
