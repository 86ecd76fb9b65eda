"""Blended (Chen et al., 2017): every poisoned image becomes (1 − α)·x + α·t for one fixed image t.

BackdoorBench blends a Hello-Kitty picture, which we cannot ship. Our t is scikit-image's
`data.chelsea()` (a cat photograph, CC0), its centre 300×300 square resized to 32×32 with
anti-aliasing (`skimage.transform.resize`, scikit-image 0.26) and stored as `chelsea32.png`.
For one-channel datasets t is converted to grey with the ITU-R 601 luma weights.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..config import check_choice, check_range
from .base import Attack, to_uint8

IMAGE = Path(__file__).with_name("chelsea32.png")
LUMA = (0.299, 0.587, 0.114)


@cache
def blend_image(channels: int) -> torch.Tensor:
    """The fixed blend image as float (channels, 32, 32) in [0, 255]."""
    check_choice("channels", channels, (1, 3))
    with Image.open(IMAGE) as picture:
        rgb = torch.from_numpy(np.array(picture.convert("RGB"))).permute(2, 0, 1).float()
    if channels == 3:
        return rgb
    return (torch.tensor(LUMA).view(3, 1, 1) * rgb).sum(0, keepdim=True)


@dataclass(frozen=True)
class Blended(Attack):
    alpha: float = 0.2

    name = "blended"

    def __post_init__(self):
        check_range("alpha", self.alpha, low=0, high=1, low_open=True)

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        t = blend_image(images.shape[1]).to(images.device)
        return to_uint8((1 - self.alpha) * images.float() + self.alpha * t)
