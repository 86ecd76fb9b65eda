"""Blended (Chen et al., 2017): every poisoned image becomes (1 − α)·x + α·t for one fixed image t.

BackdoorBench blends a Hello-Kitty picture, which we cannot ship. What makes it a strong trigger
is its look: a white field with thick black outlines and a red bow, far from any natural image.
Our default t, `image="cartoon"`, is a cartoon cat face of that kind, drawn here with Pillow at
256×256 and shrunk to 32×32 (Lanczos). `image="chelsea"` is scikit-image's `data.chelsea()` (a
cat photograph, CC0), its centre 300×300 square resized to 32×32 with anti-aliasing and stored as
`chelsea32.png`: a natural picture is a much weaker trigger (on the CIFAR-10 JPEG copy at `quick`,
seed 0: ASR 77.5 % where the cartoon's is 99.4 %). For one-channel datasets t is converted to grey with the ITU-R 601
luma weights.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..config import check_choice, check_range
from .base import Attack, to_uint8

IMAGES = ("cartoon", "chelsea")
LUMA = (0.299, 0.587, 0.114)


def cartoon() -> Image.Image:
    """A white cartoon cat face with black outlines and a red bow, 32×32."""
    s = 8                                       # drawn at 8× and shrunk
    picture = Image.new("RGB", (32 * s, 32 * s), "white")
    draw = ImageDraw.Draw(picture)
    black, red, yellow = (0, 0, 0), (230, 30, 60), (245, 200, 0)

    def at(*xy):
        return [v * s for v in xy]

    draw.polygon(at(6, 12, 7, 3, 14, 8), fill="white", outline=black, width=s)          # ears
    draw.polygon(at(26, 12, 25, 3, 18, 8), fill="white", outline=black, width=s)
    draw.ellipse(at(3, 6, 29, 27), fill="white", outline=black, width=s)                # head
    draw.ellipse(at(10, 14, 12, 18), fill=black)                                        # eyes
    draw.ellipse(at(20, 14, 22, 18), fill=black)
    draw.ellipse(at(15, 18, 17, 20), fill=yellow, outline=black, width=s // 2)          # nose
    for left, right in ((16, 15), (18, 18), (20, 21)):                                  # whiskers
        draw.line(at(0, left, 7, right), fill=black, width=s // 2)
        draw.line(at(32, left, 25, right), fill=black, width=s // 2)
    draw.polygon(at(19, 4, 24, 1, 24, 8), fill=red, outline=black, width=s // 2)        # bow
    draw.polygon(at(29, 4, 24, 1, 24, 8), fill=red, outline=black, width=s // 2)
    draw.ellipse(at(22, 3, 26, 6), fill=red, outline=black, width=s // 2)
    return picture.resize((32, 32), Image.LANCZOS)


@cache
def blend_image(channels: int, image: str = "cartoon") -> torch.Tensor:
    """The blend image `image` as float (channels, 32, 32) in [0, 255]."""
    check_choice("channels", channels, (1, 3))
    check_choice("image", image, IMAGES)
    if image == "cartoon":
        picture = cartoon()
    else:
        with Image.open(Path(__file__).with_name("chelsea32.png")) as f:
            picture = f.convert("RGB")
    rgb = torch.from_numpy(np.array(picture)).permute(2, 0, 1).float()
    if channels == 3:
        return rgb
    return (torch.tensor(LUMA).view(3, 1, 1) * rgb).sum(0, keepdim=True)


@dataclass(frozen=True)
class Blended(Attack):
    alpha: float = 0.2
    image: str = "cartoon"

    name = "blended"

    def __post_init__(self):
        check_range("alpha", self.alpha, low=0, high=1, low_open=True)
        check_choice("image", self.image, IMAGES)

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        t = blend_image(images.shape[1], self.image).to(images.device)
        return to_uint8((1 - self.alpha) * images.float() + self.alpha * t)
