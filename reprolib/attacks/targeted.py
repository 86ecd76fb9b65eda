"""Sample-targeted ("trigger-free") poisoning, the threat CLEAR defends against: one chosen test
image should go to the attacker's class while every other input behaves normally, and nothing is
stamped on anything at test time.

Here the simplest such attack, mislabelled augmented copies of the target image added to the
training set, what all of them return, how a chapter draws (target, attacker class) pairs and
whether an attack hit. The clean-label ones, which keep every label and move
images by at most ε, are `feature_collision` (transfer learning) and `gradient_matching` (training
from scratch).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import ParameterError, check_choice, check_range
from ..data import ImageSet
from ..models import model_device
from ..train import evaluating, predict

PAIRINGS = ("nearest", "random")     # how the attacker's class is drawn for a target


@dataclass(frozen=True)
class Targeted:
    data: ImageSet               # the poisoned training set
    indices: torch.Tensor        # sorted indices of the images the attack added or changed
    target: torch.Tensor         # the target test image(s), uint8 (K, C, H, W)
    true_label: torch.Tensor     # their own classes (K,)
    attacker_class: int


def check_target(train: ImageSet, target: torch.Tensor, true_label: int,
                 attacker_class: int) -> None:
    """A sample-targeted attack's target: one uint8 image shaped like `train`'s, its true class
    and another class for the attacker."""
    classes = len(train.classes)
    check_range("attacker_class", attacker_class, low=0, high=classes - 1, integer=True)
    check_range("true_label", true_label, low=0, high=classes - 1, integer=True)
    if attacker_class == true_label:
        raise ParameterError(f"attacker_class={attacker_class} is the target's own class; "
                             f"a sample-targeted attack moves it to another one")
    if target.shape != train.images.shape[1:] or target.dtype != torch.uint8:
        raise ParameterError(f"target must be one uint8 image of shape "
                             f"{tuple(train.images.shape[1:])}, got {target.dtype} "
                             f"{tuple(target.shape)}")


def quantised(base: torch.Tensor, delta: torch.Tensor, eps: float) -> torch.Tensor:
    """A clean-label attack's poisons, base + delta, as uint8 pixels: rounded towards the base
    so that no pixel moves by more than ε (the base images are exact multiples of 1/255)."""
    b = (base * 255).round()
    step = torch.trunc((delta * 255).clamp(-eps * 255, eps * 255))
    return (b + step).clamp(0, 255).to(torch.uint8)


def mislabelled_copies(train: ImageSet, target: torch.Tensor, true_label: int,
                       attacker_class: int, *, copies: int = 50, shift: int = 2,
                       seed: int = 0) -> Targeted:
    """`train` with `copies` augmented versions of the uint8 image `target` (C, H, W) appended,
    labelled `attacker_class`: each shifted by up to `shift` pixels (zero fill) and flipped
    horizontally with probability ½, so the model learns a small region around the target."""
    check_target(train, target, true_label, attacker_class)
    check_range("copies", copies, low=1, integer=True)
    check_range("shift", shift, low=0, high=8, integer=True)
    g = torch.Generator().manual_seed(seed)
    h, w = target.shape[1:]
    padded = F.pad(target.cpu(), (shift, shift, shift, shift))
    offsets = torch.randint(2 * shift + 1, (copies, 2), generator=g)
    flips = torch.rand(copies, generator=g) < 0.5
    made = torch.stack([padded[:, r:r + h, c:c + w] for r, c in offsets.tolist()])
    made[flips] = made[flips].flip(-1)
    n = len(train)
    images = torch.cat([train.images, made.to(train.images.device)])
    labels = torch.cat([train.labels, torch.full((copies,), attacker_class,
                                                 dtype=train.labels.dtype,
                                                 device=train.labels.device)])
    return Targeted(train.with_images(images, labels), torch.arange(n, n + copies),
                    target[None].cpu(), torch.tensor([true_label]), attacker_class)


@torch.no_grad()
def top_two(model: torch.nn.Module, test: ImageSet, batch_size: int = 1000) -> torch.Tensor:
    """Per test image, the two classes `model` scores highest (N × 2, on the CPU)."""
    on = test.to(model_device(model))
    with evaluating(model):
        return torch.cat([model(x).topk(2, 1).indices.cpu()
                          for x in on.normalize(on.images).split(batch_size)])


def draw_target(ranked: torch.Tensor, labels: torch.Tensor, classes: int, *, pairing: str,
                seed: int) -> tuple[int, int, int]:
    """A sample-targeted attack's draw from `seed`: a test image the clean model classifies
    correctly (its top class, `ranked[:, 0]`, is its label), its class, and the attacker's class:
    the clean model's runner-up for it with `pairing="nearest"`, any other class at random with
    `pairing="random"`."""
    check_choice("pairing", pairing, PAIRINGS)
    correct = (ranked[:, 0] == labels.cpu()).nonzero().flatten()
    if len(correct) == 0:
        raise ParameterError("the clean model classifies no test image correctly; there is no "
                             "target to draw")
    g = torch.Generator().manual_seed(seed)
    idx = int(correct[torch.randint(len(correct), (1,), generator=g)])
    true = int(labels[idx])
    if pairing == "nearest":
        return idx, true, int(ranked[idx, 1])
    return idx, true, (true + 1 + int(torch.randint(classes - 1, (1,), generator=g))) % classes


def hits(model: torch.nn.Module, test: ImageSet, idx: int, attacker_class: int) -> bool:
    """Whether `model` sends test image `idx` to `attacker_class`: the attack succeeded."""
    return int(predict(model, test.subset(torch.tensor([idx])))[0]) == attacker_class
