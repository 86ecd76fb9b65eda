"""Figures drawn from tensors (embeddings of triggers, thumbnails of patches), in the book's
style (`views.plots`), for the chapters whose figures are not yet drawn from their measures."""
from __future__ import annotations

import torch

from .config import check_choice
from .views.plots import WIDTH, grid, row_width, use_style   # noqa: F401  the chapters' style

EMBEDDINGS = ("svd", "tsne")


def embed(points: torch.Tensor, method: str = "svd", seed: int = 0):
    """2-D coordinates of `points` (N × D), fitted on all of them together: the top two singular
    directions of the uncentred data (what MESA's code draws with scikit-learn's TruncatedSVD),
    or t-SNE (what its paper names)."""
    check_choice("embedding", method, EMBEDDINGS)
    x = points.detach().float().cpu()
    if method == "svd":
        _, _, v = torch.linalg.svd(x, full_matrices=False)
        return (x @ v[:2].T).numpy()
    from sklearn.manifold import TSNE
    return TSNE(2, perplexity=min(30, len(x) - 1), random_state=seed).fit_transform(x.numpy())


def patch_image(values: torch.Tensor, channels: int):
    """A flat C·9 trigger in [0, 1] as a 3×3 picture (grey when it has one channel)."""
    img = values.detach().float().cpu().view(channels, 3, 3).permute(1, 2, 0).clamp(0, 1)
    return img[..., 0].numpy() if channels == 1 else img.numpy()


def thumbnails(ax, xy, triggers: torch.Tensor, channels: int, zoom: float = 4.0,
               frame: str = "0.5", xycoords="data") -> None:
    """Each trigger drawn as a small 3×3 picture at its point of `xy` (in `xycoords`)."""
    from matplotlib.colors import Normalize
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage
    for (x, y), t in zip(xy, triggers):
        picture = OffsetImage(patch_image(t, channels), zoom=zoom, cmap="gray",
                              norm=Normalize(0, 1), interpolation="nearest")
        ax.add_artist(AnnotationBbox(picture, (x, y), xycoords=xycoords, frameon=True, pad=0.05,
                                     annotation_clip=False,
                                     bboxprops={"edgecolor": frame, "lw": 0.6}))
