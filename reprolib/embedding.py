"""Triggers in two dimensions: where MESA's samples, the baseline's reversed triggers and the
original patch are drawn in one picture."""
from __future__ import annotations

import torch

from .config import check_choice

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
