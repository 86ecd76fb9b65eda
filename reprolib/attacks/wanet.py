"""WaNet (Nguyen & Tran, ICLR 2021): the trigger is a small, smooth warp of the whole image.

The warp field is drawn once: a k×k grid of random offsets, scaled to mean |offset| 1, upsampled
bicubically to the image size and applied with strength s through `grid_sample`, as in the
original code. With k = 4 and s = 0.5 on 32×32 images a pixel moves about a quarter of a pixel.

Training follows the original's noise ("cross") mode: cross_ratio × (number poisoned) further
images get the warp plus fresh random noise in every batch and keep their label, which teaches
the model that only this exact warp means "target". Two choices are ours, both so that the
poisoned images are ground truth a defense can be scored against: the poisoned and cross images
are fixed sets drawn once (the original re-draws them in every batch), and the poisoned images
are warped once in uint8 (rounded to the nearest level), while the cross noise is applied per
batch, on the device.

`recipe` gives BackdoorBench's way of training under WaNet: its lr stays at 0.01 (MultiStepLR with
milestones from epoch 100 on), no augmentation before the warp, and after it a random crop from a
5-px padding, a rotation of up to 10° and a flip (`data.crop_rotate_flip`), so that the poisoned
and the cross images are both warped before they are augmented. Under the shared recipe instead,
the poisoned images are warped before the crop and flip and the cross images after them.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from ..config import ParameterError, Recipe, check_range
from ..data import ImageSet
from .base import Attack, Poisoned


def warp_field(k: int, s: float, size: int, seed: int) -> torch.Tensor:
    """The sampling grid (1, size, size, 2) in grid_sample's [-1, 1] coordinates."""
    g = torch.Generator().manual_seed(seed)
    offsets = torch.rand(1, 2, k, k, generator=g) * 2 - 1
    offsets = offsets / offsets.abs().mean()
    noise = F.interpolate(offsets, size=size, mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
    line = torch.linspace(-1, 1, size)
    rows, cols = torch.meshgrid(line, line, indexing="ij")
    identity = torch.stack((cols, rows), dim=2)[None]
    return (identity + s * noise / size).clamp(-1, 1)


def warp(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Float images (N, C, H, W) resampled bilinearly at `grid` (1 or N, H, W, 2); the grid stays
    inside the image, so every output pixel is a convex mix of input pixels."""
    return F.grid_sample(x, grid.expand(len(x), -1, -1, -1), align_corners=True)


@dataclass(frozen=True)
class WaNet(Attack):
    k: int = 4
    s: float = 0.5
    cross_ratio: float = 2
    grid_seed: int = 0       # draws the warp field: part of the trigger, not of the poisoning

    name = "wanet"

    def __post_init__(self):
        check_range("k", self.k, low=2, integer=True)
        check_range("s", self.s, low=0, low_open=True)
        check_range("cross_ratio", self.cross_ratio, low=0)
        check_range("grid_seed", self.grid_seed, low=0, integer=True)

    def recipe(self, base: Recipe) -> Recipe:
        return base.replace(lr=0.01, schedule="constant", milestones=(), augment=False,
                            post_augment=True)

    def grid(self, size: int, device=None) -> torch.Tensor:
        return warp_field(self.k, self.s, size, self.grid_seed).to(device)

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        if len(images) == 0:
            return images.clone()
        out = warp(images.float(), self.grid(images.shape[-1], images.device))
        return out.round().clamp(0, 255).to(torch.uint8)

    def poison(self, data: ImageSet, ratio: float, target: int, seed: int) -> Poisoned:
        poisoned = super().poison(data, ratio, target, seed)
        n_cross = round(self.cross_ratio * len(poisoned.indices))
        clean = torch.ones(len(data), dtype=torch.bool)
        clean[poisoned.indices.cpu()] = False
        pool = clean.nonzero().flatten()
        if n_cross > len(pool):
            raise ParameterError(f"cross_ratio={self.cross_ratio} with ratio={ratio} asks for "
                                 f"{n_cross} cross images but only {len(pool)} are not poisoned")
        order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed + 1))
        cross = pool[order[:n_cross]].sort().values.to(data.device)
        return replace(poisoned, cross=cross, per_batch=self._noise(cross, len(data),
                                                                     data.images.shape[-1]))

    def _noise(self, cross: torch.Tensor, n: int, size: int):
        """The per-batch step: the cross images in the batch get the warp plus uniform noise of
        up to one pixel per coordinate, fresh each time."""
        is_cross = torch.zeros(n, dtype=torch.bool)
        is_cross[cross.cpu()] = True
        on_device = {}  # the mask and base grid, copied once to each device that trains

        def per_batch(x, y, idx, generator):
            if x.device not in on_device:
                on_device[x.device] = (is_cross.to(x.device), self.grid(size, x.device))
            mask, base = on_device[x.device]
            pick = mask[idx].nonzero().flatten()
            if len(pick):
                noise = torch.rand(len(pick), size, size, 2, generator=generator,
                                   device=x.device) * 2 - 1
                grid = (base + noise / size).clamp(-1, 1)
                x = x.index_copy(0, pick, warp(x[pick].float(), grid).to(x.dtype))
            return x, y
        return per_batch
