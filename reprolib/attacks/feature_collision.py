"""Feature collision ("Poison Frogs", Shafahi et al. 2018) in the transfer-learning setting of the
poisoning benchmark (Schwarzschild et al. 2021): images of the attacker's class, each moved by at
most ε per pixel so that its features collide with those of the target test image. They keep their
own (correct) labels, so a human sees nothing wrong; a head trained on the frozen features learns
"the target's features are the attacker's class".

The benchmark's version, which we follow: an ℓ∞ bound (ε = 8/255) instead of the original ℓ2
penalty towards the base image, the perturbation found by Adam on ‖φ(x + δ) − φ(t)‖², projected
onto the ε-box and the valid pixel range after every step; all poisons in one batch.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..config import check_range
from ..data import ImageSet
from ..models import model_device
from ..train import evaluating
from .targeted import Targeted, check_target, quantised


def feature_collision(model: nn.Module, pool: ImageSet, target: torch.Tensor, true_label: int,
                      attacker_class: int, *, n: int = 25, eps: float = 8 / 255,
                      steps: int = 200, lr: float = 0.01, seed: int = 0) -> Targeted:
    """`pool` with `n` of its `attacker_class` images (drawn from `seed`) replaced by poisons
    whose features (`model.features`, the frozen extractor) approach those of the uint8 image
    `target` (C, H, W). Labels are unchanged."""
    check_target(pool, target, true_label, attacker_class)
    check_range("eps", eps, low=0, high=1, low_open=True)
    check_range("steps", steps, low=1, integer=True)
    check_range("lr", lr, low=0, low_open=True)
    bases = (pool.labels == attacker_class).nonzero().flatten()
    check_range("n", n, low=1, high=len(bases), integer=True)
    g = torch.Generator().manual_seed(seed)
    chosen = bases[torch.randperm(len(bases), generator=g)[:n].to(bases.device)].sort().values
    device = model_device(model)
    base = pool.images[chosen].to(device).float() / 255
    with evaluating(model), torch.no_grad():
        goal = model.features(pool.normalize(target[None].to(device)))
    delta = torch.zeros_like(base, requires_grad=True)
    optimizer = torch.optim.Adam([delta], lr=lr)
    model.requires_grad_(False)
    try:
        with evaluating(model):
            for _ in range(steps):
                feats = model.features(pool.normalize(255 * (base + delta)))
                loss = (feats - goal).pow(2).sum(1).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                with torch.no_grad():
                    delta.clamp_(-eps, eps)
                    delta.copy_((base + delta).clamp(0, 1) - base)
    finally:
        model.requires_grad_(True)
    poisons = quantised(base, delta.detach(), eps)
    images = pool.images.clone()
    images[chosen.to(images.device)] = poisons.to(images.device)
    return Targeted(pool.with_images(images), chosen.cpu(), target[None].cpu(),
                    torch.tensor([true_label]), attacker_class)
