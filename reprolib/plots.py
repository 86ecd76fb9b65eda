"""One figure style for the whole book, and the figures more than one chapter draws."""
from __future__ import annotations

import matplotlib.pyplot as plt
import torch

from .attacks import Attack
from .data import ImageSet

STYLE = {
    "figure.dpi": 110,
    "savefig.dpi": 110,
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "legend.frameon": False,
}


def use_style() -> None:
    plt.rcParams.update(STYLE)


def _show(ax, image: torch.Tensor) -> None:
    """A uint8 (C, H, W) image, grey when it has one channel."""
    pixels = image.permute(1, 2, 0).cpu().numpy()
    if pixels.shape[-1] == 1:
        ax.imshow(pixels[..., 0], cmap="gray", vmin=0, vmax=255)
    else:
        ax.imshow(pixels)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)


def trigger_grid(data: ImageSet, attacks: list[Attack], n: int = 4, seed: int = 0):
    """A figure: `n` clean images from `data` in the first row, then one row per attack with
    the same images triggered, and a last column with the trigger's footprint on the first
    image (|triggered − clean|, stretched to full contrast so a faint trigger shows)."""
    chosen = data.sample(n, seed).images
    size = (1.1 * (n + 1), 1.15 * (1 + len(attacks)))
    fig, axes = plt.subplots(1 + len(attacks), n + 1, figsize=size, squeeze=False)
    rows = [("clean", chosen)] + [(a.name, a.apply(chosen)) for a in attacks]
    for r, (name, images) in enumerate(rows):
        for c in range(n):
            _show(axes[r, c], images[c])
        axes[r, 0].set_ylabel(name, rotation=0, ha="right", va="center")
        diff = (images[0].float() - chosen[0].float()).abs()
        stretched = (255 * diff / diff.max().clamp(min=1)).to(torch.uint8)
        _show(axes[r, n], stretched)
    axes[0, n].set_title("|trigger|", fontsize=8)
    fig.tight_layout(pad=0.3)
    return fig
