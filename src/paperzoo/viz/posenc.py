"""The sinusoidal positional-encoding matrix (Vaswani et al. 2017, Sec. 3.5) and what it does to attention.

Left: PE as positions x dimensions; each pair of columns is a sinusoid whose wavelength grows geometrically
from 2π to 10000·2π, so low dimensions change fast and high ones slowly. Right: the dot product PE·PEᵀ between
positions, which depends only on their distance (the property that lets attention learn relative offsets).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..layers.pos_embed import sinusoidal_position_encoding
from .common import new_figure, save_figure


def plot_positional_encoding(path: str | os.PathLike, num_positions: int = 100, dim: int = 512) -> Path:
    pe = sinusoidal_position_encoding(num_positions, dim)  # (N, d)
    sim = pe @ pe.T  # (N, N)
    fig, axes = new_figure(2, size=(13, 5))
    im = axes[0, 0].imshow(pe.numpy(), aspect="auto", cmap="RdBu", vmin=-1, vmax=1, interpolation="nearest")
    axes[0, 0].set(title=f"Sinusoidal positional encoding ({num_positions} x {dim})",
                   xlabel="embedding dimension i", ylabel="position")
    fig.colorbar(im, ax=axes[0, 0], label="PE(pos, i)")
    im = axes[0, 1].imshow(sim.numpy(), cmap="viridis", interpolation="nearest")
    axes[0, 1].set(title="Dot-product similarity PE · PEᵀ", xlabel="position", ylabel="position")
    fig.colorbar(im, ax=axes[0, 1], label="similarity")
    fig.tight_layout()
    return save_figure(fig, path)
