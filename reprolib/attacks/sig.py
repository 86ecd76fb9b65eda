"""SIG (Barni, Kallas, Tondi, 2019): a clean-label attack. A horizontal sinusoid,
δ·sin(2π·j·f / W) at column j, is added to target-class training images only, which keep their
label; at test time the same signal on any image pulls it to the target."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..config import check_range
from .base import Attack, to_uint8


@dataclass(frozen=True)
class SIG(Attack):
    delta: float = 40
    frequency: float = 6

    name = "sig"
    clean_label = True

    def __post_init__(self):
        check_range("delta", self.delta, low=0, high=255, low_open=True)
        check_range("frequency", self.frequency, low=0, low_open=True)

    def signal(self, width: int) -> torch.Tensor:
        """The additive pattern along one row (the same for every row and channel)."""
        j = torch.arange(width, dtype=torch.float32)
        return self.delta * torch.sin(2 * math.pi * j * self.frequency / width)

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        return to_uint8(images.float() + self.signal(images.shape[-1]).to(images.device))
