"""One figure style for the whole book, and the figures drawn from plain arrays that more than
one chapter draws."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from .tables import ATTACKS

WIDTH = 6.8     # inches: a figure this wide fills the text column with its text at full size
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
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
}


def use_style() -> None:
    plt.rcParams.update(STYLE)


def row_width(n: int, most: float = 3.3) -> float:
    """The width of a row of `n` panels, each `most` inches, or less so that the row fits."""
    return min(most * n, WIDTH)


def grid(n: int, cols: int = 3, size: tuple[float, float] = (2.2, 2.1), **options):
    """A figure for `n` panels of `size` inches, in rows of at most `cols`, no wider than the
    text column; returns it and its `n` axes (the spare ones switched off)."""
    cols = min(cols, n)
    rows = -(-n // cols)
    width = min(size[0] * cols, WIDTH)
    fig, axes = plt.subplots(rows, cols, figsize=(width, size[1] * rows), squeeze=False,
                             **options)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, list(axes.flat[:n])


def show_image(ax, pixels: np.ndarray) -> None:
    """A uint8 (C, H, W) image, grey when it has one channel."""
    pixels = np.moveaxis(np.asarray(pixels), 0, -1)
    if pixels.shape[-1] == 1:
        ax.imshow(pixels[..., 0], cmap="gray", vmin=0, vmax=255)
    else:
        ax.imshow(pixels)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)


def footprint(triggered: np.ndarray, clean: np.ndarray) -> np.ndarray:
    """Where a trigger changes an image: |triggered − clean| stretched to full contrast (uint8),
    so that a faint trigger shows."""
    diff = np.abs(triggered.astype(np.float32) - clean.astype(np.float32))
    return (255 * diff / max(float(diff.max()), 1.0)).astype(np.uint8)


def trigger_grid(rows: dict[str, np.ndarray]):
    """A figure from `rows` ({"clean" or an attack's name: uint8 images N × C × H × W}, the
    clean ones first): a row each, and a last column with the trigger's footprint on the first
    image."""
    clean = next(iter(rows.values()))
    n = len(clean)
    fig, axes = plt.subplots(len(rows), n + 1, figsize=(1.1 * (n + 1), 1.15 * len(rows)),
                             squeeze=False)
    for r, (name, images) in enumerate(rows.items()):
        for c in range(n):
            show_image(axes[r, c], images[c])
        axes[r, 0].set_ylabel(ATTACKS.get(name, name), rotation=0, ha="right", va="center")
        show_image(axes[r, n], footprint(images[0], clean[0]))
    axes[0, n].set_title("|trigger|", fontsize=8)
    fig.tight_layout(pad=0.3)
    return fig


def patch_image(values: np.ndarray, channels: int) -> np.ndarray:
    """A flat C·9 trigger in [0, 1] as a 3×3 picture (grey when it has one channel)."""
    img = np.clip(np.moveaxis(np.asarray(values, dtype=np.float32).reshape(channels, 3, 3), 0, -1),
                  0, 1)
    return img[..., 0] if channels == 1 else img


def thumbnails(ax, xy, triggers: np.ndarray, channels: int, zoom: float = 4.0,
               frame: str = "0.5", xycoords="data") -> None:
    """Each trigger (a row of `triggers`, C·9 values in [0, 1]) drawn as a small 3×3 picture at
    its point of `xy` (in `xycoords`)."""
    from matplotlib.colors import Normalize
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage
    for (x, y), t in zip(xy, triggers):
        picture = OffsetImage(patch_image(t, channels), zoom=zoom, cmap="gray",
                              norm=Normalize(0, 1), interpolation="nearest")
        ax.add_artist(AnnotationBbox(picture, (x, y), xycoords=xycoords, frameon=True, pad=0.05,
                                     annotation_clip=False,
                                     bboxprops={"edgecolor": frame, "lw": 0.6}))


def seeds_figure(comparison, ref, by_seed: dict[int, dict]):
    """One panel per checked row of `comparison` measured at two seeds or more: each seed's
    value (dots, from `by_seed`), their mean and 95 % interval (bar), and what it is checked
    against (a claim's threshold as a dashed line; the paper's number with its tolerance as a
    band)."""
    rows = comparison[(comparison.verdict != "not comparable") & (comparison.n >= 2)]
    if not len(rows):
        return None
    claims, numbers = {c.id: c for c in ref.claims}, {n.id: n for n in ref.numbers}
    fig, axes = grid(len(rows), cols=2, size=(3.3, 1.4))
    for ax, (_, r) in zip(axes, rows.iterrows()):
        key = claims[r.id].measure if r.kind == "claim" else r.id
        values = [m[key] for m in by_seed.values() if m.get(key) is not None]
        ax.plot(values, [0] * len(values), "o", color="C0", alpha=0.6, ms=4)
        ax.errorbar(r.ours, 0, xerr=[[r.ours - r.low], [r.high - r.ours]], fmt="s", ms=4,
                    color="black", capsize=4)
        if r.kind == "claim":
            ax.axvline(claims[r.id].value, color="C3", ls="--", lw=1)
        else:
            n = numbers[r.id]
            ax.axvspan(n.value - n.tolerance, n.value + n.tolerance, color="C3", alpha=0.15, lw=0)
            ax.axvline(n.value, color="C3", lw=1)
        ax.set_yticks([])
        ax.grid(False)
        ax.set_title(f"{r.id}: {r.verdict}", fontsize=8)
    fig.tight_layout(pad=0.3)
    return fig
