"""CLEAR (Zhu, Ning, Xin, Wang, Wu, ICCV 2021): clean up a sample-targeted backdoor by wrapping
its "pocket" in a tight convex hull in feature space, relabelling and fine-tuning.

Only the abstract is public, so this is our reconstruction of the method, and every step and
number below is a choice of that reconstruction, not the paper's:

1. features: the penultimate features of every training image, L2-normalised, projected on
   their leading principal directions;
2. candidates (Deep k-NN, Peri et al. 2020, also the baseline): an image whose label differs
   from the majority of its k nearest neighbours (cosine), when that majority holds ≥ ρ;
3. pockets: candidates of one (label t, majority s) pair, grouped by single linkage at
   α × the median nearest-neighbour distance inside class s;
4. the hull: the class-s images nearest the pocket, shrunk (farthest first) while at least
   e_min of the pocket stays inside, or grown when it is not enclosed; membership is an LP;
5. the model-level score: the highest pocket score, enclosure × |P|^β / tightness, against a
   threshold calibrated on clean models;
6. the mitigation: the wrapped pockets' images relabelled to the hull's class, then fine-tuning
   (or, as a baseline, deleted).

With a linear head, class regions are convex in penultimate-feature space, so the pocket is read
from the labels (poisons labelled t among class-s features), not from the model's predictions.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.optimize import linprog

from ..config import ParameterError, Recipe, check_range
from ..data import Batches, ImageSet
from ..models import model_device
from ..train import evaluating, linear_transfer
from .fine_tuning import fine_tune


@torch.no_grad()
def features(model: torch.nn.Module, data: ImageSet, dim: int | None = None,
             batch_size: int = 1000) -> torch.Tensor:
    """Every image's penultimate features (`model.features`), L2-normalised, in eval mode and
    without augmentation; with `dim`, projected on their top `dim` principal directions (in
    d dimensions n ≤ d + 1 points are always a simplex's vertices, which makes hull membership
    degenerate)."""
    device = model_device(model)
    with evaluating(model):
        z = torch.cat([model.features(x) for x, _, _ in Batches(data.to(device), batch_size)])
    z = F.normalize(z.float(), dim=1)
    if dim is None:
        return z
    check_range("dim", dim, low=1, high=z.shape[1], integer=True)
    centred = z - z.mean(0)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    return centred @ v[:dim].T


def inside_hull(vertices: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Per point, whether it lies in the convex hull of `vertices` (m × d): whether some λ ≥ 0
    with Σλ = 1 has Wᵀλ = p, a feasibility LP (zero objective) solved by HiGHS."""
    w, p = np.atleast_2d(np.asarray(vertices, float)), np.atleast_2d(np.asarray(points, float))
    if w.shape[1] != p.shape[1]:
        raise ParameterError(f"vertices have {w.shape[1]} dimensions and points {p.shape[1]}")
    a_eq = np.vstack([w.T, np.ones(len(w))])
    zero = np.zeros(len(w))
    return np.array([linprog(zero, A_eq=a_eq, b_eq=np.append(q, 1.0), bounds=(0, None),
                             method="highs").status == 0 for q in p])


@dataclass
class Neighbourhood:
    majority: torch.Tensor     # per image, the most common label among its k neighbours
    share: torch.Tensor        # the share of the neighbours that carry it
    flagged: torch.Tensor      # label ≠ majority and share ≥ ρ: the candidates (Deep k-NN)


def neighbourhood(z: torch.Tensor, labels: torch.Tensor, k: int = 50, rho: float = 0.5,
                  chunk: int = 2048) -> Neighbourhood:
    """Deep k-NN's test on features `z` (N × d): the k nearest neighbours of every point by
    cosine similarity (itself excluded), computed `chunk` rows at a time."""
    n = len(z)
    check_range("k", k, low=1, high=n - 1, integer=True)
    check_range("rho", rho, low=0, high=1)
    unit = F.normalize(z.float(), dim=1)
    classes = int(labels.max()) + 1
    majority, share = [], []
    for start in range(0, n, chunk):
        sims = unit[start:start + chunk] @ unit.T
        rows = torch.arange(len(sims), device=z.device)
        sims[rows, rows + start] = -float("inf")
        near = labels[sims.topk(k, dim=1).indices]                     # rows × k
        counts = F.one_hot(near, classes).sum(1)
        top = counts.max(1)
        majority.append(top.indices)
        share.append(top.values.float() / k)
    majority, share = torch.cat(majority), torch.cat(share)
    return Neighbourhood(majority, share, (labels != majority) & (share >= rho))


def pockets(z: torch.Tensor, labels: torch.Tensor, hood: Neighbourhood, alpha: float = 2.0,
            min_size: int = 1) -> list[torch.Tensor]:
    """The candidates cut into pockets: per (label t, majority s) pair, single-linkage clusters
    at α × the median nearest-neighbour distance among class s's images. Each pocket is the
    sorted indices of its images."""
    check_range("alpha", alpha, low=0, low_open=True)
    check_range("min_size", min_size, low=1, integer=True)
    found = []
    flagged = hood.flagged.nonzero().flatten()
    pairs = torch.stack([labels[flagged], hood.majority[flagged]], 1).unique(dim=0)
    for t, s in pairs.tolist():
        members = flagged[(labels[flagged] == t) & (hood.majority[flagged] == s)]
        scale = alpha * median_nearest(z[labels == s])
        if len(members) == 1:
            groups = np.ones(1, int)
        else:
            groups = fcluster(linkage(z[members].double().cpu().numpy(), "single"), scale,
                              criterion="distance")
        for g in np.unique(groups):
            pocket = members[torch.as_tensor(groups == g, device=members.device)]
            if len(pocket) >= min_size:
                found.append(pocket.sort().values)
    return found


def median_nearest(z: torch.Tensor) -> float:
    """The median distance from a point of `z` to its nearest other point."""
    if len(z) < 2:
        raise ParameterError(f"a class has {len(z)} image(s); its scale needs at least 2")
    d = torch.cdist(z.float(), z.float())
    d.fill_diagonal_(float("inf"))
    return d.min(1).values.median().item()


@dataclass
class Hull:
    vertices: torch.Tensor     # indices (into the pool) of the hull's class-s images
    enclosure: float           # share of the pocket inside the hull
    tightness: float           # the farthest vertex from the pocket's centre, in class radii


def nearest(z: torch.Tensor, pocket: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    """The `pool` indices in order of distance from the pocket's centre."""
    centre = z[pocket].mean(0)
    return pool[torch.cdist(centre[None], z[pool])[0].argsort()]


def enclosed_share(z: torch.Tensor, pocket: torch.Tensor, vertices: torch.Tensor) -> float:
    """The share of the pocket's points inside the hull of the `vertices`' points."""
    return float(inside_hull(z[vertices].double().cpu().numpy(),
                             z[pocket].double().cpu().numpy()).mean())


def wrap(z: torch.Tensor, pocket: torch.Tensor, pool: torch.Tensor, *, most: int,
         enclosure: float = 0.8) -> Hull | None:
    """The tightest hull of `pool` images (class s) around `pocket`: the fewest of the pool
    images nearest the pocket's centre (at most `most`) whose hull holds at least `enclosure` of
    the pocket. The spec's search drops the farthest vertex while the pocket stays enclosed and
    adds the next-nearest while it does not; as the candidate hulls are nested, the enclosure
    only grows with their size, so a bisection finds the same hull. None when even `most`
    images do not enclose the pocket."""
    check_range("most", most, low=1, integer=True)
    check_range("enclosure", enclosure, low=0, high=1, low_open=True)
    order = nearest(z, pocket, pool)
    radius = (z[pool] - z[pool].mean(0)).norm(dim=1).median().item()
    share = {}

    def enough(size):
        share[size] = enclosed_share(z, pocket, order[:size])
        return share[size] >= enclosure

    low, high = 0, min(most, len(order))            # enough(low) fails, enough(high) holds
    if not enough(high):
        return None
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if enough(mid) else (mid, high)
    vertices = order[:high]
    return Hull(vertices, share[high],
                (z[vertices] - z[pocket].mean(0)).norm(dim=1).max().item() / max(radius, 1e-12))


@dataclass
class Found:
    pocket: torch.Tensor       # indices of the pocket's images (label t)
    label: int                 # t, the label they carry
    hull_class: int            # s, the class whose images wrap them: the label they should have
    hull: Hull | None          # None: no hull of class-s images encloses them
    score: float               # e × |P|^β / τ, 0 without a hull


def detect(z: torch.Tensor, labels: torch.Tensor, *, k: int = 50, rho: float = 0.5,
           alpha: float = 2.0, enclosure: float = 0.8, beta: float = 0.5,
           hood: Neighbourhood | None = None) -> list[Found]:
    """Every pocket of the labelled features `z`, wrapped and scored, highest score first. The
    hull has at most 8·d of the surrounding class's unflagged images (the spec starts its
    search from 2·d). `hood`: the neighbourhood step's result when already computed (Deep
    k-NN's flags), instead of `k` and `rho`."""
    check_range("beta", beta, low=0)
    hood = hood or neighbourhood(z, labels, k=k, rho=rho)
    d = z.shape[1]
    found = []
    for pocket in pockets(z, labels, hood, alpha=alpha):
        t, s = int(labels[pocket[0]]), int(hood.majority[pocket[0]])
        pool = ((labels == s) & ~hood.flagged).nonzero().flatten()
        hull = wrap(z, pocket, pool, most=8 * d, enclosure=enclosure) if len(pool) else None
        score = 0.0 if hull is None else (hull.enclosure * len(pocket) ** beta
                                          / max(hull.tightness, 1e-12))
        found.append(Found(pocket, t, s, hull, score))
    return sorted(found, key=lambda f: -f.score)


def model_score(found: list[Found]) -> float:
    """The model-level score: the highest pocket score (0 without a wrapped pocket)."""
    return max((f.score for f in found), default=0.0)


@dataclass
class Examined:
    """CLEAR run over one training set."""
    z: torch.Tensor            # the features it worked on
    hood: Neighbourhood        # the neighbourhood step: CLEAR's candidates
    knn: Neighbourhood         # Deep k-NN, the baseline, on the full normalised features
    found: list[Found]         # every pocket, highest score first
    score: float               # the model-level score
    seconds: float             # the wall time of all of it


def examine(model: torch.nn.Module, data: ImageSet, *, k: int, dim: int) -> Examined:
    """CLEAR's detection on the set `model` was trained on: features in `dim` dimensions, the
    k-neighbourhood test, every pocket wrapped and scored, timed; and Deep k-NN's test with the
    same k on the penultimate features themselves (L2-normalised, not projected), as Peri et
    al. take it."""
    start = time.perf_counter()
    z = features(model, data, dim=dim)
    labels = data.labels.to(z.device)
    hood = neighbourhood(z, labels, k=k)
    found = detect(z, labels, hood=hood)
    seconds = time.perf_counter() - start
    knn = neighbourhood(features(model, data), labels, k=k)
    return Examined(z, hood, knn, found, model_score(found), seconds)


def widest_hull_share(z: torch.Tensor, labels: torch.Tensor, poisons: torch.Tensor,
                      true_class: int) -> float:
    """A diagnosis: the share of the `poisons` inside the widest hull CLEAR may use around
    them, that of the 8·d images of `true_class` (the poisons excluded) nearest their centre.
    It bounds what the hull test could accept even if the pocket were found perfectly."""
    z, labels, poisons = z.cpu(), labels.cpu(), poisons.cpu()
    pool = (labels == true_class).nonzero().flatten()
    pool = pool[~torch.isin(pool, poisons)]
    return enclosed_share(z, poisons, nearest(z, poisons, pool)[:8 * z.shape[1]])


def flagged(found: list[Found]) -> torch.Tensor:
    """CLEAR's sample-level flags: the images of every wrapped pocket, sorted."""
    parts = [f.pocket.cpu() for f in found if f.hull is not None]
    return torch.cat(parts).sort().values if parts else torch.empty(0, dtype=torch.long)


def fine_tuned(model: torch.nn.Module, data: ImageSet, recipe: Recipe, *, head_only: bool,
               seed: int = 0) -> torch.nn.Module:
    """A copy of `model` fine-tuned on `data`: the head alone on frozen features (the transfer
    setting), or the whole network by `recipe` (from scratch)."""
    if head_only:
        return linear_transfer(model, data, epochs=recipe.epochs, lr=recipe.lr,
                               batch_size=recipe.batch_size, weight_decay=recipe.weight_decay,
                               seed=seed, reset=False)
    return fine_tune(model, data, recipe, seed=seed, progress=False)


@torch.no_grad()
def decision_slice(model: torch.nn.Module, data: ImageSet, origin: torch.Tensor,
                   toward: torch.Tensor, across: torch.Tensor, *, extent: float = 1.5,
                   steps: int = 41) -> torch.Tensor:
    """The predicted class on a `steps` × `steps` grid of the plane through the uint8 image
    `origin` spanned by the directions to `toward` and to `across` (both scaled to
    `origin`'s distance to `toward`), from −extent to +extent along each: rows follow `across`,
    columns `toward`. The pixels are not clipped, so the plane is exact."""
    check_range("extent", extent, low=0, low_open=True)
    check_range("steps", steps, low=2, integer=True)
    o, u, v = (t.float() for t in (origin, toward, across))
    u, v = u - o, v - o
    v = v * (u.norm() / v.norm().clamp_min(1e-12))
    a = torch.linspace(-extent, extent, steps)
    grid = o + a[None, :, None, None, None] * u + a[:, None, None, None, None] * v
    device = model_device(model)
    with evaluating(model):
        preds = [model(data.normalize(x.to(device))).argmax(1) for x in grid.flatten(0, 1).split(1000)]
    return torch.cat(preds).view(steps, steps).cpu()


def relabelled(data: ImageSet, found: list[Found]) -> ImageSet:
    """CLEAR's mitigation set: every wrapped pocket's images given the hull's class."""
    labels = data.labels.clone()
    for f in found:
        if f.hull is not None:
            labels[f.pocket.to(labels.device)] = f.hull_class
    return data.with_images(data.images, labels)


def deleted(data: ImageSet, found: list[Found]) -> ImageSet:
    """The "delete and fine-tune" baseline's set: the wrapped pockets' images removed."""
    keep = torch.ones(len(data), dtype=torch.bool, device=data.labels.device)
    keep[flagged(found).to(keep.device)] = False
    return data.subset(keep.nonzero().flatten())
