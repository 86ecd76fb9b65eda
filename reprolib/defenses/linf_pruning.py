"""ℓ∞-based neuron pruning (Xu et al., arXiv 2002.12162), as the spec reconstructs it.

The layer is the last convolutional feature map, the input of the model's global average pool
(`model.avgpool`): SmallCNN's post-ReLU `conv4` maps, ResNet-18's post-ReLU `layer4` output,
PreAct-ResNet18's `layer4` output (which has no final ReLU, so its maps can be negative; every
norm is taken of |A|). A neuron is one channel k of that map, A_k(x) ∈ ℝ^{H×W}.

Its norms are n₁ = Σ|A|, n₂ = √ΣA², n∞ = max|A|. A trigger's effect on channel k under norm p is
d_p(k) = mean over images of [n_p(A_k(x ⊕ trigger)) − n_p(A_k(x))]. Channels are ranked by d_p,
largest first, and pruned by zeroing their maps. Because the pool is followed directly by the
linear head in every model here, pruning channels S gives logits head(pooled ⊙ keep_S): a whole
pruning sweep costs one feature pass and a matrix product per step.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn

from .. import metrics
from ..config import ParameterError, check_range
from ..data import Batches, ImageSet
from ..models import model_device
from ..train import evaluating

NORMS = ("l1", "l2", "linf")


def _pool(model: nn.Module) -> nn.Module:
    pool = getattr(model, "avgpool", None)
    if pool is None:
        raise ParameterError(f"model={type(model).__name__} has no `avgpool`: ℓ∞ pruning needs "
                             "the last conv map to feed a global pool and then the linear head")
    return pool


@torch.no_grad()
def feature_maps(model: nn.Module, data: ImageSet, batch_size: int = 500) -> torch.Tensor:
    """The last conv maps (N×C×H×W, float32) of every image in `data`, in order."""
    device = model_device(model)
    maps = []
    hook = _pool(model).register_forward_pre_hook(lambda _, args: maps.append(args[0].float()))
    try:
        with evaluating(model):
            for x, _, _ in Batches(data.to(device), batch_size):
                model(x.contiguous(memory_format=torch.channels_last))
    finally:
        hook.remove()
    return torch.cat(maps).contiguous()


def channel_norms(maps: torch.Tensor) -> dict[str, torch.Tensor]:
    """n₁, n₂ and n∞ of every map: N×C each (maps N×C×H×W)."""
    a = maps.abs().flatten(2)
    return {"l1": a.sum(2), "l2": a.pow(2).sum(2).sqrt(), "linf": a.amax(2)}


def norm_change(clean: torch.Tensor, triggered: torch.Tensor) -> dict[str, torch.Tensor]:
    """d_p per channel (C) for each norm: the mean change that the trigger causes, the same
    images clean (maps `clean`) and triggered (maps `triggered`)."""
    if clean.shape != triggered.shape:
        raise ParameterError(f"clean maps {tuple(clean.shape)} and triggered maps "
                             f"{tuple(triggered.shape)} must come from the same images")
    before, after = channel_norms(clean), channel_norms(triggered)
    return {p: (after[p] - before[p]).mean(0) for p in NORMS}


def standardized_change(clean: torch.Tensor, triggered: torch.Tensor) -> dict[str, torch.Tensor]:
    """d_p divided by the spread across channels of the clean mean norm n_p, so the three norms
    share one scale (the spec's normalisation)."""
    change = norm_change(clean, triggered)
    scale = {p: v.mean(0).std() for p, v in channel_norms(clean).items()}
    return {p: change[p] / scale[p].clamp(min=1e-12) for p in NORMS}


# ---------------------------------------------------------------------------------------------
# Rankings: every one returns all C channels, the first to prune first.

def rank_by_change(clean: torch.Tensor, triggered: torch.Tensor, norm: str) -> torch.Tensor:
    """Channels by the trigger's increase of norm `norm`, largest first."""
    if norm not in NORMS:
        raise ParameterError(f"norm={norm!r} is not allowed; choose one of {NORMS}")
    return norm_change(clean, triggered)[norm].argsort(descending=True)


def rank_mean_gap(clean: torch.Tensor, triggered: torch.Tensor) -> torch.Tensor:
    """Neural Cleanse's pruning order: the increase of the channel's mean activation (what the
    pool passes to the head), largest first. For post-ReLU maps this is the ℓ1 order."""
    return (triggered.mean((2, 3)) - clean.mean((2, 3))).mean(0).argsort(descending=True)


def rank_dormant(clean: torch.Tensor) -> torch.Tensor:
    """Fine-Pruning's order (Liu et al., RAID 2018): least active on clean images first."""
    return clean.mean((0, 2, 3)).argsort()


def rank_random(channels: int, seed: int) -> torch.Tensor:
    return torch.randperm(channels, generator=torch.Generator().manual_seed(seed))


RANKINGS = ("linf", "l2", "l1", "nc_gap", "dormant", "random", "oracle_linf")


def rankings(clean: torch.Tensor, synthetic: torch.Tensor, real: torch.Tensor | None = None,
             seed: int = 0) -> dict[str, torch.Tensor]:
    """The chapter's channel orders from the defender's images: `clean` maps, the same images
    with the synthetic (reversed) trigger, and, for the oracle only, with the real trigger."""
    orders = {p: rank_by_change(clean, synthetic, p) for p in ("linf", "l2", "l1")}
    orders["nc_gap"] = rank_mean_gap(clean, synthetic)
    orders["dormant"] = rank_dormant(clean)
    orders["random"] = rank_random(clean.shape[1], seed)
    if real is not None:
        orders["oracle_linf"] = rank_by_change(clean, real, "linf")
    return orders


def top_k_overlap(a: torch.Tensor, b: torch.Tensor, k: int) -> float:
    """Jaccard overlap of the first `k` channels of two orders."""
    x, y = set(a[:k].tolist()), set(b[:k].tolist())
    return len(x & y) / len(x | y)


# ---------------------------------------------------------------------------------------------
# Pruning

def keep_mask(channels: int, pruned: torch.Tensor) -> torch.Tensor:
    keep = torch.ones(channels)
    keep[pruned] = 0
    return keep


def prune(model: nn.Module, pruned: torch.Tensor | list[int]) -> nn.Module:
    """A copy of `model` whose last-conv channels `pruned` are zeroed (a fixed mask on the
    pool's input, kept as the buffer `avgpool.keep`, so it survives fine-tuning)."""
    net = copy.deepcopy(model)
    pool = _pool(net)
    channels = net.head.in_features
    pruned = torch.as_tensor(pruned, dtype=torch.long)
    if len(pruned) and (pruned.min() < 0 or pruned.max() >= channels):
        raise ParameterError(f"pruned={pruned.tolist()} is not allowed; channels are "
                             f"0..{channels - 1}")
    device = model_device(net)
    pool.register_buffer("keep", keep_mask(channels, pruned).view(1, -1, 1, 1).to(device))
    pool.register_forward_pre_hook(lambda mod, args: (args[0] * mod.keep.to(args[0].dtype),))
    return net


@dataclass(frozen=True)
class Pooled:
    """Pooled last-conv features of a set of images, and their labels: enough to score any
    pruned version of the model without running it again."""
    features: torch.Tensor   # N×C
    labels: torch.Tensor     # N

    @classmethod
    def of(cls, model: nn.Module, data: ImageSet) -> "Pooled":
        maps = feature_maps(model, data)
        return cls(maps.mean((2, 3)), data.labels.to(maps.device))


def pruned_predictions(model: nn.Module, pooled: Pooled, pruned: torch.Tensor) -> torch.Tensor:
    keep = keep_mask(pooled.features.shape[1], pruned).to(pooled.features.device)
    head = model.head
    with torch.no_grad():
        logits = (pooled.features * keep) @ head.weight.float().T + head.bias.float()
    return logits.argmax(1)


def counts_up_to(channels: int, fraction: float = 0.5, step: float = 0.01) -> list[int]:
    """Numbers of channels to prune: every `step` of the layer up to `fraction` (each count
    once, so for a 64-channel layer every count from 0 to 32)."""
    check_range("fraction", fraction, low=0, high=1)
    check_range("step", step, low=0, low_open=True, high=1)
    grid = torch.arange(0, fraction + 1e-9, step)
    return sorted({round(float(f) * channels) for f in grid})


def sweep(model: nn.Module, order: torch.Tensor, clean: Pooled, triggered: Pooled | None,
          target: int, counts: list[int]) -> dict[str, list[float]]:
    """CA on `clean`, and ASR on `triggered` (non-target images with a trigger), after pruning
    the first n channels of `order`, for every n in `counts`. Values in [0, 1]."""
    out = {"n": list(counts), "ca": [], "asr": []}
    for n in counts:
        out["ca"].append(metrics.ca(pruned_predictions(model, clean, order[:n]), clean.labels))
        if triggered is not None:
            pred = pruned_predictions(model, triggered, order[:n])
            out["asr"].append(metrics.asr(pred, triggered.labels, target))
    return out


def stop_at_asr(curve: dict, below: float = 0.05) -> int | None:
    """Stopping rule (i): the smallest n whose ASR (on the defender's synthetic-trigger set) is
    below `below`; None if no n in the sweep gets there."""
    for n, a in zip(curve["n"], curve["asr"]):
        if a < below:
            return n
    return None


def stop_at_ca_drop(curve: dict, max_drop: float = 0.02) -> int:
    """Stopping rule (ii): the largest n whose CA (on the defender's clean set) is at most
    `max_drop` below the unpruned model's."""
    if curve["n"][0] != 0:
        raise ParameterError(f"the sweep starts at n={curve['n'][0]}; rule (ii) needs n=0 "
                             "(the unpruned model) as its baseline")
    base = curve["ca"][0]
    return max(n for n, c in zip(curve["n"], curve["ca"]) if base - c <= max_drop)
