"""Anchors: reference boxes tiled over each feature map, the RPN's regression targets are relative to them.

Faster R-CNN: Towards Real-Time Object Detection with Region Proposal Networks (Ren et al. 2015, arXiv:1506.01497),
Sec. 3.1.1 "Anchors": at every sliding-window position, k = (scales x aspect ratios) anchors centred there.
Feature Pyramid Networks for Object Detection (Lin et al. 2017, arXiv:1612.03144), Sec. 4.1: one scale per level
({32, 64, 128, 256, 512} pixels on P2..P6) and the three ratios {1:2, 1:1, 2:1} everywhere.

Deviations from the papers, all so that torchvision's checkpoints see exactly the anchors they were trained with:

* the cell anchors are computed in float32 as ``w = size * (1 / sqrt(ratio))``, ``h = size * sqrt(ratio)``
  (ratio = height / width) and their half-extents are rounded with ``torch.round`` (half to even), so an anchor
  is not exactly ``size**2`` in area;
* an anchor is centred on the top-left corner of its feature-map cell, ``(x * stride, y * stride)``, not on the
  cell's centre;
* the stride of a level is ``padded image size // feature size`` per axis, so it can differ between height and
  width, and is not the backbone's nominal stride when the image is not a multiple of it.
"""

from collections.abc import Sequence

import torch
from torch import Tensor, nn

# FPN Sec. 4.1: areas 32^2 .. 512^2 on P2..P6, ratios {1:2, 1:1, 2:1} at every level.
FPN_SIZES: tuple[tuple[int, ...], ...] = ((32,), (64,), (128,), (256,), (512,))
FPN_ASPECT_RATIOS: tuple[tuple[float, ...], ...] = ((0.5, 1.0, 2.0),) * 5


def cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> Tensor:
    """Zero-centred anchors of one level, ``(len(aspect_ratios) * len(sizes), 4)`` xyxy, ratio-major.

    Faster R-CNN Sec. 3.1.1: each (scale, ratio) pair gives a box of area ~scale^2 and height / width = ratio.
    The arithmetic (float32, reciprocal of the square root, round half to even) is torchvision's, so the
    anchors match its checkpoints to the pixel.
    """
    scales = torch.as_tensor(sizes, dtype=torch.float32)
    h_ratios = torch.sqrt(torch.as_tensor(aspect_ratios, dtype=torch.float32))
    w_ratios = 1 / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)  # (R * S,), ratio-major
    hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
    return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()


def grid_anchors(cell: Tensor, grid_size: tuple[int, int], stride: tuple[int, int]) -> Tensor:
    """Shift the ``(A, 4)`` cell anchors to every position of an ``(H, W)`` grid: ``(H * W * A, 4)``.

    Row-major over positions (y outer, x inner), the A anchors of a position contiguous, which is the order
    of the RPN head's output ``(B, A * 4, H, W)`` once permuted to ``(B, H, W, A, 4)``.
    """
    (grid_h, grid_w), (stride_h, stride_w) = grid_size, stride
    shifts_x = torch.arange(grid_w, device=cell.device) * stride_w  # (W,)
    shifts_y = torch.arange(grid_h, device=cell.device) * stride_h  # (H,)
    shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")  # (H, W) each
    shifts = torch.stack([shift_x, shift_y, shift_x, shift_y], dim=-1).reshape(-1, 1, 4)  # (H * W, 1, 4)
    return (shifts + cell[None]).reshape(-1, 4)  # (H * W * A, 4), the integer shifts promoted to cell's dtype


class AnchorGenerator(nn.Module):
    """Anchors for a batch of padded images and their feature maps, one (sizes, aspect_ratios) pair per level.

    Args:
        sizes: per level, the anchor scales in pixels (sqrt of the area). FPN uses one per level.
        aspect_ratios: per level, the ratios height / width.

    It holds no parameters or buffers (like torchvision's), so state dicts are unaffected.
    """

    def __init__(
        self,
        sizes: Sequence[Sequence[float]] = FPN_SIZES,
        aspect_ratios: Sequence[Sequence[float]] = FPN_ASPECT_RATIOS,
    ) -> None:
        super().__init__()
        if len(sizes) != len(aspect_ratios):
            raise ValueError(f"sizes has {len(sizes)} levels but aspect_ratios has {len(aspect_ratios)}")
        self.sizes = tuple(tuple(s) for s in sizes)
        self.aspect_ratios = tuple(tuple(r) for r in aspect_ratios)
        self.cell_anchors = [cell_anchors(s, r) for s, r in zip(self.sizes, self.aspect_ratios)]

    def num_anchors_per_location(self) -> list[int]:
        """A = len(sizes) * len(aspect_ratios) per level: the RPN head's number of outputs per position."""
        return [len(s) * len(r) for s, r in zip(self.sizes, self.aspect_ratios)]

    def forward(self, images: Tensor, feature_maps: Sequence[Tensor]) -> list[Tensor]:
        """Anchors of each image: a list of B tensors ``(sum_l H_l * W_l * A_l, 4)`` xyxy, level by level.

        Args:
            images: the padded batch ``(B, C, H, W)``; only its shape is read.
            feature_maps: one ``(B, C_l, H_l, W_l)`` map per level, finest first.
        """
        if len(feature_maps) != len(self.cell_anchors):
            raise ValueError(f"got {len(feature_maps)} feature maps for {len(self.cell_anchors)} anchor levels")
        image_h, image_w = images.shape[-2:]
        dtype, device = feature_maps[0].dtype, feature_maps[0].device
        per_level = []
        for cell, fmap in zip(self.cell_anchors, feature_maps):
            grid_h, grid_w = fmap.shape[-2:]
            stride = (image_h // grid_h, image_w // grid_w)
            per_level.append(grid_anchors(cell.to(device=device, dtype=dtype), (grid_h, grid_w), stride))
        anchors = torch.cat(per_level)
        # Every image of a padded batch shares the same grid, hence the same anchors; a copy each, so that a
        # caller editing one image's anchors in place does not move the others'.
        return [anchors.clone() for _ in range(images.shape[0])]
