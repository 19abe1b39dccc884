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

Vectorization: no Python loop over boxes, bins or sampling points. Each op gathers, for every RoI at once, a
tensor padded to the largest bin (RoI pooling) or to the largest number of sampling points (RoIAlign), with a
mask for the padding. Memory is therefore ``K * C * out_h * out_w * (largest bin or sample grid)``: one very
large box among small ones makes every box pay for its size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["roi_pool", "roi_align", "RoIPool", "RoIAlign"]


def _pair(output_size: int | Sequence[int]) -> tuple[int, int]:
    size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    if len(size) != 2 or any(int(s) < 1 for s in size):
        raise ValueError(f"output_size must be a positive int or a pair of them, got {output_size!r}")
    return int(size[0]), int(size[1])


def _prepare(features: Tensor, rois: Tensor, output_size: int | Sequence[int]
             ) -> tuple[tuple[int, int], Tensor, Tensor]:
    """Checked shapes; the output size, the RoIs as constants in the features' dtype (no gradient flows to them,
    as in torchvision) and their batch indices (truncated, like the kernels' int cast)."""
    if features.dim() != 4:
        raise ValueError(f"features must be (B, C, H, W), got shape {tuple(features.shape)}")
    if rois.dim() != 2 or rois.shape[1] != 5:
        raise ValueError(f"rois must be (K, 5) as (batch_index, x1, y1, x2, y2), got shape {tuple(rois.shape)}")
    if not features.is_floating_point():
        raise ValueError(f"features must be floating point, got {features.dtype}")
    rois = rois.detach().to(features.dtype)
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
    h_lo, h_hi = _quantized_bins(y1, roi_h, out_h, H, features.dtype)  # (K, out_h)
    w_lo, w_hi = _quantized_bins(x1, roi_w, out_w, W, features.dtype)  # (K, out_w)

    # Pad every bin to the tallest / widest one (at least 1 so an all-empty call still has a dimension to reduce).
    Lh = max(int((h_hi - h_lo).max()), 1)
    Lw = max(int((w_hi - w_lo).max()), 1)
    ys = h_lo[:, :, None] + torch.arange(Lh, device=rois.device)  # (K, out_h, Lh)
    xs = w_lo[:, :, None] + torch.arange(Lw, device=rois.device)  # (K, out_w, Lw)
    inside = (ys < h_hi[:, :, None])[:, :, None, :, None] & (xs < w_hi[:, :, None])[:, None, :, None, :]
    # (K, out_h, out_w, Lh, Lw): padded positions are clamped to a valid pixel, then masked out with -inf.
    values = features.permute(0, 2, 3, 1)[  # (B, H, W, C)
        batch[:, None, None, None, None],
        ys.clamp(max=H - 1)[:, :, None, :, None],
        xs.clamp(max=W - 1)[:, None, :, None, :],
    ]  # (K, out_h, out_w, Lh, Lw, C)
    values = values.masked_fill(~inside[..., None], float("-inf"))
    # torch.max returns the first maximum of a row, so flattening (Lh, Lw) row-major reproduces the kernel's
    # argmax (scan rows, then columns, strict >) and hence its gradient in a tie.
    pooled = values.flatten(3, 4).max(dim=3).values  # (K, out_h, out_w, C)
    empty = ((h_hi <= h_lo)[:, :, None] | (w_hi <= w_lo)[:, None, :])[..., None]  # (K, out_h, out_w, 1)
    pooled = pooled.masked_fill(empty, 0.0)  # the kernel defines an empty bin as 0
    return pooled.permute(0, 3, 1, 2).contiguous()  # (K, C, out_h, out_w)


def _sample_axis(
    start: Tensor, bin_size: Tensor, grid: Tensor, bins: int, size: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """RoIAlign's sampling points along one axis and their linear-interpolation taps.

    ``start``, ``bin_size`` (floating) and ``grid`` (points per bin, long) are ``(K,)``. Point ``g`` of bin ``i``
    sits at ``start + i * bin_size + (g + 0.5) * bin_size / grid`` (Mask R-CNN Fig. 3: regularly spaced points
    inside each bin, none on its border). All RoIs share a padded count ``G = max(grid)``; a padded point has
    weight 0. Returns ``(lo, hi, w_lo, w_hi)``, each ``(K, bins, G)``: the two neighbouring pixels and their
    weights (0 for a point outside ``[-1, size]`` or in the padding).
    """
    dtype = start.dtype
    G = max(int(grid.max()), 1)
    i = torch.arange(bins, device=start.device, dtype=dtype)[None, :, None]  # (1, bins, 1)
    g = torch.arange(G, device=start.device)  # (G,)
    step = bin_size[:, None, None]
    # The kernel's order of operations: (start + i * bin) + (g + 0.5) * bin / grid.
    coord = start[:, None, None] + i * step + (g.to(dtype) + 0.5) * step / grid.clamp(min=1).to(dtype)[:, None, None]
    # Written as "not outside" so that a NaN coordinate is invalid, as in the kernel.
    valid = (coord >= -1.0) & (coord <= size) & (g < grid[:, None])[:, None, :]  # (K, bins, G)
    coord = torch.where(valid, coord, 0.0).clamp(min=0.0)  # points in [-1, 0) read pixel 0
    lo = coord.floor().long()
    edge = lo >= size - 1  # points in [size - 1, size] read the last pixel
    lo = torch.where(edge, size - 1, lo)
    hi = torch.where(edge, size - 1, lo + 1)
    frac = torch.where(edge, 0.0, coord - lo.to(dtype))
    zero = torch.zeros((), dtype=dtype, device=start.device)
    return lo, hi, torch.where(valid, 1.0 - frac, zero), torch.where(valid, frac, zero)


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

    y_lo, y_hi, wy_lo, wy_hi = _sample_axis(y1, bin_h, grid_h, out_h, H)  # (K, out_h, Gh)
    x_lo, x_hi, wx_lo, wx_hi = _sample_axis(x1, bin_w, grid_w, out_w, W)  # (K, out_w, Gw)
    # Bilinear interpolation is separable: each of the four neighbours has weight (y weight) * (x weight).
    channels_last = features.permute(0, 2, 3, 1)  # (B, H, W, C)
    b = batch[:, None, None, None, None]
    total = features.new_zeros(len(rois), out_h, out_w, C)
    for ys, wy in ((y_lo, wy_lo), (y_hi, wy_hi)):  # a loop over the 4 neighbours, not over boxes or bins
        for xs, wx in ((x_lo, wx_lo), (x_hi, wx_hi)):
            # (K, out_h, Gh, out_w, Gw, C): one neighbour of every sampling point of every bin of every RoI.
            values = channels_last[b, ys[:, :, :, None, None], xs[:, None, None, :, :]]
            total = total + torch.einsum("kpiqjc,kpi,kqj->kpqc", values, wy, wx)
    count = (grid_h * grid_w).clamp(min=1).to(features.dtype)  # average pooling over the bin's points
    return (total / count[:, None, None, None]).permute(0, 3, 1, 2).contiguous()  # (K, C, out_h, out_w)


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
