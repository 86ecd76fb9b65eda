"""Gradient matching ("Witches' Brew", Geiping et al., ICLR 2021): poisons for a model trained from
scratch. A budget of attacker-class training images, each moved by at most ε per pixel and keeping
its correct label, is optimised so that the training gradient they produce points the same way as
the gradient that would send the target test image to the attacker's class:

    min_δ  1 − cos( ∇θ L(f(x_t), y_attacker), ∇θ Σ_i L(f(x_i + δ_i), y_i) )

on a clean surrogate model, with signed Adam (step 0.1·ε, divided by 10 at 3/8, 5/8 and 7/8 of the
steps), random flips and shifts of the poisons at every step (the paper's differentiable
augmentation; optional) and the best of several restarts. Ours: the surrogate is in eval mode,
and all poisons are one batch.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ParameterError, check_range
from ..data import ImageSet
from ..models import model_device
from ..train import evaluating
from .targeted import Targeted, check_target, quantised


def gradient_matching(model: nn.Module, train: ImageSet, target: torch.Tensor, true_label: int,
                      attacker_class: int, *, budget: float = 0.01, eps: float = 8 / 255,
                      steps: int = 240, restarts: int = 1, augment: bool = True,
                      seed: int = 0) -> Targeted:
    """`train` with round(`budget` × N) of its `attacker_class` images (drawn from `seed`)
    replaced by poisons crafted on `model` (a clean surrogate) against the uint8 image `target`
    (C, H, W). Labels are unchanged. `augment`: flip and shift the poisons at every step."""
    check_target(train, target, true_label, attacker_class)
    check_range("budget", budget, low=0, high=1, low_open=True)
    check_range("eps", eps, low=0, high=1, low_open=True)
    check_range("steps", steps, low=1, integer=True)
    check_range("restarts", restarts, low=1, integer=True)
    bases = (train.labels == attacker_class).nonzero().flatten()
    n = round(budget * len(train))
    if not 1 <= n <= len(bases):
        raise ParameterError(f"budget={budget} gives {n} poisons; class {attacker_class} has "
                             f"{len(bases)} images, so 1/{len(train)} ≤ budget ≤ "
                             f"{len(bases)}/{len(train)}")
    g = torch.Generator().manual_seed(seed)
    chosen = bases[torch.randperm(len(bases), generator=g)[:n].to(bases.device)].sort().values
    device = model_device(model)
    base = train.images[chosen].to(device).float() / 255
    labels = train.labels[chosen].to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    with evaluating(model):
        goal = torch.autograd.grad(
            F.cross_entropy(model(train.normalize(target[None].to(device))),
                            torch.tensor([attacker_class], device=device)), params)
        best, best_loss = None, float("inf")
        for _ in range(restarts):
            delta, loss = _brew(model, params, goal, train, base, labels, eps, steps, augment, g)
            if loss < best_loss:
                best, best_loss = delta, loss
    images = train.images.clone()
    images[chosen.to(images.device)] = quantised(base, best, eps).to(images.device)
    return Targeted(train.with_images(images), chosen.cpu(), target[None].cpu(),
                    torch.tensor([true_label]), attacker_class)


def _brew(model, params, goal, train, base, labels, eps, steps, augment, g):
    """One restart: a random start in the ε-box, `steps` signed-Adam steps; the perturbation and
    its final alignment loss."""
    goal_norm = torch.sqrt(sum(t.pow(2).sum() for t in goal))
    delta = ((torch.rand(base.shape, generator=g) * 2 - 1) * eps).to(base.device)
    delta = ((base + delta).clamp(0, 1) - base).requires_grad_(True)
    optimizer = torch.optim.Adam([delta], lr=0.1 * eps)
    schedule = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, [steps * 3 // 8, steps * 5 // 8, steps * 7 // 8], gamma=0.1)
    for _ in range(steps):
        x = _augmented(base + delta, g) if augment else base + delta
        loss = _alignment(model, params, goal, goal_norm, train, x, labels)
        optimizer.zero_grad(set_to_none=True)
        delta.grad, = torch.autograd.grad(loss, delta)
        delta.grad.sign_()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            delta.clamp_(-eps, eps)
            delta.copy_((base + delta).clamp(0, 1) - base)
    delta = delta.detach()
    final = _alignment(model, params, goal, goal_norm, train, base + delta, labels,
                       graph=False).item()
    return delta, final


def _alignment(model, params, goal, goal_norm, train, x, labels, graph=True):
    """1 − cosine between the poisons' training gradient and the target's adversarial one."""
    loss = F.cross_entropy(model(train.normalize(255 * x)), labels)
    grads = torch.autograd.grad(loss, params, create_graph=graph)
    dot = sum((a * b).sum() for a, b in zip(grads, goal))
    norm = torch.sqrt(sum(a.pow(2).sum() for a in grads))
    return 1 - dot / (norm * goal_norm)


def _augmented(x: torch.Tensor, g: torch.Generator, shift: int = 4) -> torch.Tensor:
    """Every image flipped with probability ½, the batch shifted by up to `shift` pixels (zero
    fill): differentiable in the pixels."""
    flips = (torch.rand(len(x), generator=g) < 0.5).to(x.device)
    x = torch.where(flips[:, None, None, None], x.flip(-1), x)
    dy, dx = (torch.randint(-shift, shift + 1, (2,), generator=g)).tolist()
    h, w = x.shape[-2:]
    padded = F.pad(x, (shift, shift, shift, shift))
    return padded[..., shift + dy:shift + dy + h, shift + dx:shift + dx + w]
