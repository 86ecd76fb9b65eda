"""CLEAR (Zhu, Ning, Xin, Wang, Wu, ICCV 2021): clean up a sample-targeted backdoor by wrapping
its "pocket" in a tight convex hull in feature space, relabelling and fine-tuning.

Only the abstract is public, so this is the reconstruction of `../shared/papers/clear.md` (§7),
and every step and number below is a choice of that reconstruction, not the paper's:

1. features: the penultimate features of every training image, L2-normalised;
2. candidates (Deep k-NN, Peri et al. 2020, also the baseline): an image whose label differs
   from the majority of its k nearest neighbours (cosine), when that majority holds ≥ ρ;
3. pockets: candidates of one (label t, majority s) pair, grouped by single linkage at
   α × the median nearest-neighbour distance inside class s;
4. the hull: the class-s images nearest the pocket, shrunk (farthest first) while at least
   e_min of the pocket stays inside, or grown when it is not enclosed; membership is an LP.

With a linear head, class regions are convex in penultimate-feature space, so the pocket is read
from the labels (poisons labelled t among class-s features), not from the model's predictions.

So far: steps 1–4, the pocket score (enclosure × |P|^β / tightness; its calibration on clean
models is still to come) and the relabelled or pruned training set for the mitigation.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.optimize import linprog

from ..config import ParameterError, check_range
from ..data import Batches, ImageSet
from ..train import evaluating


@torch.no_grad()
def features(model: torch.nn.Module, data: ImageSet, dim: int | None = None,
             batch_size: int = 1000) -> torch.Tensor:
    """Every image's penultimate features (`model.features`), L2-normalised, in eval mode and
    without augmentation; with `dim`, projected on their top `dim` principal directions (in
    d dimensions n ≤ d + 1 points are always a simplex's vertices, which makes hull membership
    degenerate)."""
    device = next(model.parameters()).device
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


def wrap(z: torch.Tensor, pocket: torch.Tensor, pool: torch.Tensor, *, start: int,
         most: int, enclosure: float = 0.8) -> Hull | None:
    """The tightest hull of `pool` images (class s) around `pocket`: from the `start` pool
    images nearest the pocket's centre, drop the farthest vertex while at least `enclosure` of
    the pocket stays inside; if the first hull does not enclose that much, add the next-nearest
    images up to `most`. None when even `most` images do not enclose it."""
    check_range("start", start, low=1, integer=True)
    check_range("most", most, low=start, integer=True)
    check_range("enclosure", enclosure, low=0, high=1, low_open=True)
    centre = z[pocket].mean(0)
    order = pool[torch.cdist(centre[None], z[pool])[0].argsort()]
    radius = (z[pool] - z[pool].mean(0)).norm(dim=1).median().item()
    points = z[pocket].double().cpu().numpy()

    def enclosed(vertices):
        return inside_hull(z[vertices].double().cpu().numpy(), points).mean()

    size = min(start, len(order))
    while enclosed(order[:size]) < enclosure:
        if size >= min(most, len(order)):
            return None
        size += 1
    while size > 1 and enclosed(order[:size - 1]) >= enclosure:
        size -= 1
    vertices = order[:size]
    return Hull(vertices, float(enclosed(vertices)),
                (z[vertices] - centre).norm(dim=1).max().item() / max(radius, 1e-12))


@dataclass
class Found:
    pocket: torch.Tensor       # indices of the pocket's images (label t)
    label: int                 # t, the label they carry
    hull_class: int            # s, the class whose images wrap them: the label they should have
    hull: Hull | None          # None: no hull of class-s images encloses them
    score: float               # e × |P|^β / τ, 0 without a hull


def detect(z: torch.Tensor, labels: torch.Tensor, *, k: int = 50, rho: float = 0.5,
           alpha: float = 2.0, enclosure: float = 0.8, beta: float = 0.5) -> list[Found]:
    """Every pocket of the labelled features `z`, wrapped and scored, highest score first. The
    hull starts from 2·d of the surrounding class's unflagged images and may grow to 8·d."""
    check_range("beta", beta, low=0)
    hood = neighbourhood(z, labels, k=k, rho=rho)
    d = z.shape[1]
    found = []
    for pocket in pockets(z, labels, hood, alpha=alpha):
        t, s = int(labels[pocket[0]]), int(hood.majority[pocket[0]])
        pool = ((labels == s) & ~hood.flagged).nonzero().flatten()
        hull = wrap(z, pocket, pool, start=min(2 * d, len(pool)), most=8 * d,
                    enclosure=enclosure) if len(pool) else None
        score = 0.0 if hull is None else (hull.enclosure * len(pocket) ** beta
                                          / max(hull.tightness, 1e-12))
        found.append(Found(pocket, t, s, hull, score))
    return sorted(found, key=lambda f: -f.score)


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
    for f in found:
        if f.hull is not None:
            keep[f.pocket.to(keep.device)] = False
    return data.subset(keep.nonzero().flatten())
