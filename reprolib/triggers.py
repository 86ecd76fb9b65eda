"""The building blocks of triggers, shared by attacks and defenses.

Two ways to put a trigger on an image:
- `blend`: a mask trigger x ⊕ (m, Δ) = (1 − m)·x + m·Δ on uint8 images (Neural Cleanse's form,
  and the bounded REASR scan's);
- `paste`: a 3×3 patch written over a window of normalised images (MESA's attack and search).

And the set-up that Neural Cleanse and the REASR scan share for inverting K mask triggers at once:
masks and patterns in tanh space, optimised by one Adam (`MaskSearch`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import ParameterError

SIZE = 3            # a patch is SIZE × SIZE pixels


def blend(images: torch.Tensor, mask: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    """(1 − m)·x + m·Δ on uint8 images, with m and Δ in [0, 1]; returns uint8 (rounded)."""
    x = images.float() / 255
    return (255 * ((1 - mask) * x + mask * pattern)).round().clamp(0, 255).to(torch.uint8)


def paste(x: torch.Tensor, triggers: torch.Tensor, row: int, col: int, mean: torch.Tensor,
          std: torch.Tensor) -> torch.Tensor:
    """Normalised images `x` (B×C×H×W) with image i's 3×3 window at (row, col) overwritten by
    trigger i (B × 9C values in [0, 1], channel-major), normalised like the images."""
    b, c, h, w = x.shape
    if not (0 <= row <= h - SIZE and 0 <= col <= w - SIZE):
        raise ParameterError(f"(row, col)=({row}, {col}) is not allowed; the 3×3 window must fit "
                             f"in {h}×{w}: 0 ≤ row ≤ {h - SIZE}, 0 ≤ col ≤ {w - SIZE}")
    patch = (triggers.view(b, c, SIZE, SIZE) - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
    out = x.clone()
    out[:, :, row:row + SIZE, col:col + SIZE] = patch.to(x.dtype)
    return out


def decode(param: torch.Tensor) -> torch.Tensor:
    """A tanh-space parameter as values in [0, 1]."""
    return (torch.tanh(param) + 1) / 2


@dataclass
class MaskSearch:
    """K mask triggers under optimisation: their tanh-space masks (K×1×H×W) and patterns
    (K×C×H×W), the Adam that moves them, and the generator that also draws the batches."""
    mask_param: torch.Tensor
    pattern_param: torch.Tensor
    optimizer: torch.optim.Optimizer
    generator: torch.Generator

    def triggers(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The current masks and patterns, in [0, 1]."""
        return decode(self.mask_param), decode(self.pattern_param)

    def blended(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every trigger on every image of `x` (B×C×H×W in [0, 1]): K×B×C×H×W, with the masks
        and patterns it used."""
        mask, pattern = self.triggers()
        return (1 - mask[:, None]) * x[None] + (mask * pattern)[:, None], mask, pattern

    def step(self, loss: torch.Tensor) -> None:
        """One Adam step on the triggers alone: the model's weights get no gradient."""
        self.mask_param.grad, self.pattern_param.grad = torch.autograd.grad(
            loss, [self.mask_param, self.pattern_param])
        self.optimizer.step()


def mask_search(k: int, shape: tuple[int, int, int], *, mask_start: float, lr: float, seed: int,
                device: torch.device) -> MaskSearch:
    """K triggers for C×H×W images: masks all at tanh-space `mask_start`, patterns uniform at
    random from `seed`; Adam with betas (0.5, 0.9), as Neural Cleanse's code."""
    c, h, w = shape
    generator = torch.Generator(device).manual_seed(seed)
    mask_param = torch.full((k, 1, h, w), mask_start, device=device, requires_grad=True)
    pattern_param = (torch.rand((k, c, h, w), generator=generator, device=device) * 2
                     - 1).requires_grad_()
    optimizer = torch.optim.Adam([mask_param, pattern_param], lr=lr, betas=(0.5, 0.9))
    return MaskSearch(mask_param, pattern_param, optimizer, generator)
