"""REASR under an area bound: how strong a natural backdoor a model carries.

A lighter substitute for the ABS scanner that NONE's code runs (Liu et al., CCS 2019). For every
label k at once, a mask trigger x ⊕ (m, Δ) = (1 − m)·x + m·Δ is optimised (Adam, tanh
parametrisation as in Neural Cleanse) to send the images of the other classes to k, under ABS's
hinge penalty on the mask's size: w·max(0, ‖m‖₁ − A)/A with w = 50, doubled beyond 1.2·A, for an
area bound A = `area` · H·W pixels. The trigger is then cut to the bound (all but the A largest
mask values set to 0, so it touches at most A pixels) and its REASR measured: the share of the
check images not of class k that it sends to k. A model's score at that bound is the max over
labels, as NONE's natural-backdoor table logs it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import ParameterError, check_range
from ..data import ImageSet
from ..models import model_device
from ..train import evaluating, predict
from ..triggers import blend, mask_search

AREAS = (0.02, 0.04, 0.06, 0.08, 0.10, 0.12)   # ABS's bounds in NONE's natural setting


@dataclass(frozen=True)
class Scan:
    area: float
    masks: torch.Tensor      # K×1×H×W, at most `area`·H·W non-zero values each
    patterns: torch.Tensor   # K×C×H×W in [0, 1]
    reasr: torch.Tensor      # K: per label, the share of other-class check images sent to it

    @property
    def max(self) -> float:
        return self.reasr.max().item()

    @property
    def label(self) -> int:
        return int(self.reasr.argmax())


def bounded(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """`mask` (K×1×H×W) with all but its `pixels` largest values per label set to 0."""
    flat = mask.flatten(1)
    keep = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, flat.topk(pixels, 1).indices, True)
    return (flat * keep).view_as(mask)


def scan(model: torch.nn.Module, fit: ImageSet, check: ImageSet, area: float, *,
         steps: int = 150, batch_size: int = 24, lr: float = 0.1, penalty: float = 50.0,
         seed: int = 0) -> Scan:
    """Invert one bounded trigger per label on the clean images `fit`; measure it on `check`."""
    check_range("area", area, low=0, high=1, low_open=True)
    check_range("steps", steps, low=1, integer=True)
    check_range("batch_size", batch_size, low=1, integer=True)
    classes = len(fit.classes)
    device = model_device(model)
    cuda = device.type == "cuda"
    images, labels = fit.images.to(device), fit.labels.to(device)
    k, (c, h, w) = classes, images.shape[1:]
    pixels = max(1, math.floor(area * h * w))
    target = torch.arange(k, device=device)

    search = mask_search(k, (c, h, w), mask_start=-2.0, lr=lr, seed=seed, device=device)
    with evaluating(model):
        for _ in range(steps):
            pick = torch.randint(len(images), (batch_size,), generator=search.generator,
                                 device=device)
            y = labels[pick]
            xt, mask, pattern = search.blended(images[pick].float() / 255)
            xt = fit.normalize(255 * xt.flatten(0, 1))
            if cuda:
                xt = xt.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                logits = model(xt).float()
            ce = F.cross_entropy(logits, target.repeat_interleave(batch_size),
                                 reduction="none").view(k, batch_size)
            other = (y[None] != target[:, None]).float()      # a label's own images don't count
            ce = (ce * other).sum(1) / other.sum(1).clamp(min=1)
            size = mask.flatten(1).sum(1)
            weight = torch.where(size > 1.2 * pixels, 2 * penalty, penalty)
            loss = (ce + weight * F.relu(size - pixels) / pixels).sum()
            search.step(loss)

    with torch.no_grad():
        mask, pattern = search.triggers()
        mask, pattern = bounded(mask, pixels).cpu(), pattern.cpu()
    return Scan(area, mask, pattern, reasr(model, check, mask, pattern))


@torch.no_grad()
def reasr(model: torch.nn.Module, check: ImageSet, masks: torch.Tensor,
          patterns: torch.Tensor) -> torch.Tensor:
    """Per label k, the share of `check` images not of class k that the k-th trigger sends to k
    (triggers stamped on the uint8 images and rounded, as an attacker would)."""
    if len(masks) != len(check.classes):
        raise ParameterError(f"masks has {len(masks)} triggers; expected one per class "
                             f"({len(check.classes)})")
    rates = []
    for label, (m, p) in enumerate(zip(masks, patterns)):
        others = check.subset((check.labels != label).nonzero().flatten())
        pred = predict(model, others.with_images(blend(others.images, m.to(others.device),
                                                       p.to(others.device))))
        rates.append((pred.cpu() == label).float().mean())
    return torch.stack(rates)
