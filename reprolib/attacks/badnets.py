"""BadNets (Gu et al., 2017) as BackdoorBench sets it up: a 3×3 white square in the bottom-right
corner, all-to-one (every poisoned image is relabelled to the target), and its all-to-all
variant (an image of class y is relabelled to y + 1 mod K)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import check_range
from .base import Attack


@dataclass(frozen=True)
class BadNets(Attack):
    size: int = 3

    name = "badnets"

    def __post_init__(self):
        check_range("size", self.size, low=1, high=32, integer=True)

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        out = images.clone()
        out[..., -self.size:, -self.size:] = 255
        return out


@dataclass(frozen=True)
class BadNetsAllToAll(BadNets):
    name = "badnets_all2all"
    all_to_all = True
