"""Anti-Backdoor Learning (ABL; Li, Lyu, Koren, Lyu, Li, Ma, NeurIPS 2021): the training-time
defense NONE argues against, with the official code's (`bboylyg/ABL`) default settings.

1. Isolation: a fresh model is trained on the poisoned set with local gradient ascent (LGA), the
   loss sign(ℓ − γ)·ℓ of the batch cross-entropy ℓ: it cannot fall below γ on clean data, while
   backdoor images, learned much faster, still reach a far lower loss.
2. The `isolation_ratio` of training images with the lowest loss under that model are isolated
   (the paper's rule, and the released `backdoor_isolation.py`'s, which sorts the losses in
   ascending order and takes the first).
3. The model is trained on the other images (the script's "finetuning" step, 40 epochs at lr 0.1
   and 20 at 0.01; without its Cutout), then
4. unlearns the isolated images by gradient ascent on their cross-entropy (lr 5e-4, 4 epochs:
   the script's 5, of which the first only evaluates).

The loss is the paper's LGA (the script's default is its "flooding" variant); isolation runs the
script's 10 epochs at lr 0.1, batch 64, SGD with Nesterov momentum 0.9, weight decay 1e-4.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import models
from ..config import Recipe, check_range
from ..data import Batches, ImageSet
from ..train import evaluating, train


@dataclass(frozen=True)
class Settings:
    isolation_epochs: int = 10
    gamma: float = 0.5
    isolation_ratio: float = 0.01
    lr: float = 0.1
    batch_size: int = 64
    finetune_epochs: tuple[int, int] = (40, 20)   # at lr, then at lr / 10
    unlearning_epochs: int = 4
    unlearning_lr: float = 5e-4
    weight_decay: float = 1e-4
    augment: bool = True         # random crop and flip in isolation and training, as the code

    def __post_init__(self):
        check_range("isolation_epochs", self.isolation_epochs, low=1, integer=True)
        check_range("unlearning_epochs", self.unlearning_epochs, low=0, integer=True)
        for i, epochs in enumerate(self.finetune_epochs):
            check_range(f"finetune_epochs[{i}]", epochs, low=0, integer=True)
        check_range("isolation_ratio", self.isolation_ratio, low=0, high=1, low_open=True)
        check_range("gamma", self.gamma, low=0)

    def recipe(self, epochs: int, lr: float, augment: bool | None = None) -> Recipe:
        return Recipe(epochs=epochs, batch_size=self.batch_size, lr=lr, momentum=0.9,
                      weight_decay=self.weight_decay, nesterov=True, schedule="constant",
                      augment=self.augment if augment is None else augment)


def lga(gamma: float):
    """The local-gradient-ascent objective: sign(ℓ − γ)·ℓ of the batch cross-entropy ℓ."""
    def loss(logits, labels):
        ce = F.cross_entropy(logits, labels)
        return torch.sign(ce - gamma) * ce
    return loss


def unlearning(logits, labels):
    return -F.cross_entropy(logits, labels)


@torch.no_grad()
def per_image_loss(model: nn.Module, data: ImageSet, batch_size: int = 1000) -> torch.Tensor:
    """The cross-entropy of every image in `data` (eval mode, no augmentation), in order."""
    device = models.model_device(model)
    losses = []
    with evaluating(model):
        for x, y, _ in Batches(data.to(device), batch_size):
            logits = model(x.contiguous(memory_format=torch.channels_last)).float()
            losses.append(F.cross_entropy(logits, y, reduction="none"))
    return torch.cat(losses).cpu()


@dataclass
class Result:
    model: nn.Module
    isolated: torch.Tensor        # indices into the training set, lowest loss first
    isolation_loss: torch.Tensor  # every training image's loss under the isolation model
    seconds: float


def abl(model_name: str, data: ImageSet, settings: Settings = Settings(), *, seed: int = 0,
        device: str | torch.device = "cpu", progress: bool = True) -> Result:
    """Train a `model_name` on the poisoned training set `data` with ABL."""
    s = settings
    start = time.perf_counter()
    net = models.build(model_name, len(data.classes), data.images.shape[1], seed=seed)
    net.to(device)
    common = dict(seed=seed, device=device, progress=progress)
    train(net, data, s.recipe(s.isolation_epochs, s.lr), loss_fn=lga(s.gamma),
          desc="abl isolation", **common)
    losses = per_image_loss(net, data)
    order = losses.argsort()
    isolated = order[:round(s.isolation_ratio * len(data))]
    rest = order[len(isolated):].sort().values
    for epochs, lr in zip(s.finetune_epochs, (s.lr, s.lr / 10)):
        if epochs:
            train(net, data.subset(rest), s.recipe(epochs, lr), desc="abl training", **common)
    if s.unlearning_epochs and len(isolated):
        train(net, data.subset(isolated.sort().values),
              s.recipe(s.unlearning_epochs, s.unlearning_lr, augment=False), loss_fn=unlearning,
              desc="abl unlearning", **common)
    return Result(net.eval(), isolated, losses, time.perf_counter() - start)
