"""The two classic baselines of NPD's tables, each timed (`Tuned`).

FT: fine-tune the whole backdoored model on the defender's clean data.
FP (Fine-Pruning; Liu, Dolan-Gavitt, Garg, RAID 2018): prune the last conv layer's channels
that are least active on clean data, as many as the clean accuracy allows, then fine-tune with
the pruned channels kept at zero. `fine_prune`'s defaults are BackdoorBench's (`defense/fp.py`):
channels ranked by their mean activation over one augmented pass of the clean data, pruned 1 % of
the layer at a time, stopping before the first step whose clean accuracy falls 10 % (relative)
below the unpruned model's. BackdoorBench reads that accuracy on the clean *test* set, which a
defender does not have; `stop_on` takes the set to read it on. Two quirks of its code are not
copied: it prunes one channel fewer than each step's count, and, pruning in place, it
fine-tunes the model of the step that broke the rule rather than the last one that kept it.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..config import Recipe, check_range
from ..data import ImageSet, crop_flip
from ..models import model_device
from ..train import train
from . import linf_pruning as lp


def fine_tune(model: nn.Module, clean: ImageSet, recipe: Recipe, *, seed: int = 0,
              progress: bool = True) -> nn.Module:
    """A fine-tuned copy of `model` (the original is left as it was)."""
    tuned = copy.deepcopy(model)
    train(tuned, clean, recipe, seed=seed, device=model_device(model),
          progress=progress, desc="fine-tune")
    return tuned.eval()


@dataclass
class Tuned:
    """What FT and FP hand back: the defended model and what it cost."""
    model: nn.Module
    seconds: float             # the defense's wall time (FP's includes its pruning sweep)
    trainable: int             # parameters it trained: the whole model's
    pruned: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))


def ft(model: nn.Module, clean: ImageSet, recipe: Recipe, *, seed: int = 0,
       progress: bool = True) -> Tuned:
    """FT: `fine_tune`, timed."""
    start = time.perf_counter()
    tuned = fine_tune(model, clean, recipe, seed=seed, progress=progress)
    return Tuned(tuned, time.perf_counter() - start, _parameters(tuned))


def fine_prune(model: nn.Module, clean: ImageSet, recipe: Recipe, *,
               stop_on: ImageSet | None = None, step: float = 0.01, max_drop: float = 0.1,
               max_fraction: float = 1.0, seed: int = 0, progress: bool = True) -> Tuned:
    """FP: rank the channels on an augmented pass of `clean`, prune them `step` of the layer at
    a time, least active first, while the accuracy on `stop_on` (default: `clean` itself)
    keeps at least 1 − `max_drop` of the unpruned model's, at most `max_fraction` of the layer;
    then fine-tune on `clean`. `pruned` lists the channels zeroed, in pruning order."""
    check_range("step", step, low=0, low_open=True, high=1)
    check_range("max_drop", max_drop, low=0, high=1)
    check_range("max_fraction", max_fraction, low=0, high=1)
    start = time.perf_counter()
    order = lp.rank_dormant(lp.feature_maps(model, crop_flip(clean, seed)))
    curve = lp.sweep(model, order, lp.Pooled.of(model, stop_on or clean), None, 0,
                     lp.counts_up_to(len(order), max_fraction, step))
    allowed = curve["ca"][0] * (1 - max_drop)
    n = 0
    for count, ca in zip(curve["n"], curve["ca"]):
        if ca < allowed:          # pruning stops at the first count that costs too much
            break
        n = count
    tuned = fine_tune(lp.prune(model, order[:n]), clean, recipe, seed=seed, progress=progress)
    return Tuned(tuned, time.perf_counter() - start, _parameters(tuned), order[:n])


def _parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
