"""MESA's attack (Qiao, Yang, Li, NeurIPS 2019): a 3×3 patch stamped at a random place.

The patch is a black-and-white pattern (`patterns.pattern`, the same on every channel) or random
pixel values. It is injected by fine-tuning a clean model (`victims.injected`) with every image of
every batch poisoned with a small probability: the patch at one place drawn for the batch, the
label set to the target (`per_batch`). For the test set, each image gets it at its own random
place (`apply`), drawn from `seed` so the triggered test set is the same on every run. Places
run 0..28 on 32-pixel images, as the code's int(U·(32 − 3)) draws them: never the last row or
column.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import ParameterError, check_range
from ..train import PerBatch
from ..triggers import SIZE, paste
from .base import Attack
from .patterns import pattern

class Constants:
    """Tensors made once per device, not on every step (a host-to-device copy each)."""

    def __init__(self, *values):
        self.values, self.made = values, {}

    def __call__(self, device: torch.device) -> list[torch.Tensor]:
        if device not in self.made:
            self.made[device] = [torch.tensor(v, dtype=torch.float32, device=device)
                                 for v in self.values]
        return self.made[device]


class Places:
    """Where each batch's window goes during training: one place per batch, drawn on the host
    from a generator seeded like the trainer's own, so that no step waits on the device."""

    def __init__(self):
        self._device = self._host = None

    def __call__(self, h: int, w: int, generator: torch.Generator) -> tuple[int, int]:
        if generator is not self._device:
            self._device = generator
            self._host = torch.Generator().manual_seed(generator.initial_seed())
        return (int(torch.randint(h - SIZE, (1,), generator=self._host)),
                int(torch.randint(w - SIZE, (1,), generator=self._host)))


@dataclass(frozen=True)
class Patch(Attack):
    values: tuple[float, ...]   # C×3×3 pixel values in [0, 1], channel-major
    seed: int = 0               # the test images' patch places

    name = "patch"

    def __post_init__(self):
        if not self.values or len(self.values) % (SIZE * SIZE):
            raise ParameterError(f"values has {len(self.values)} entries; expected 9 per channel "
                                 f"(a 3×3 patch, channel-major)")
        for v in self.values:
            check_range("values", v, low=0, high=1)
        check_range("seed", self.seed, low=0, integer=True)

    @classmethod
    def black_and_white(cls, pattern_id: int, channels: int, seed: int = 0) -> "Patch":
        """Pattern `pattern_id` (1: white), the same on every channel."""
        mask = pattern(pattern_id).flatten().repeat(channels)
        return cls(tuple(mask.tolist()), seed)

    @classmethod
    def random(cls, channels: int, draw: int, seed: int = 0) -> "Patch":
        """Uniform random pixel values (whole uint8 levels, so stamping in uint8 is exact);
        `draw` picks the pattern."""
        levels = torch.randint(256, (channels * SIZE * SIZE,),
                               generator=torch.Generator().manual_seed(draw))
        return cls(tuple((levels / 255).tolist()), seed)

    @property
    def channels(self) -> int:
        return len(self.values) // (SIZE * SIZE)

    def tensor(self, device=None) -> torch.Tensor:
        """The patch as a flat tensor of C·9 values in [0, 1] (MESA's trigger layout)."""
        return torch.tensor(self.values, dtype=torch.float32, device=device)

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        n, c, h, w = images.shape
        if c != self.channels:
            raise ParameterError(f"the patch has {self.channels} channel(s) but the images "
                                 f"have {c}")
        g = torch.Generator().manual_seed(self.seed)
        rows = torch.randint(h - SIZE, (n,), generator=g).to(images.device)
        cols = torch.randint(w - SIZE, (n,), generator=g).to(images.device)
        patch = (self.tensor(images.device).view(c, SIZE, SIZE) * 255).round().to(torch.uint8)
        out = images.clone()
        every = torch.arange(n, device=images.device)
        for i in range(SIZE):
            for j in range(SIZE):
                out[every, :, rows + i, cols + j] = patch[:, i, j]
        return out

    def per_batch(self, rate: float, target: int, mean, std) -> PerBatch:
        """The injection step: each image of a normalised batch, with probability `rate`, gets
        the patch at one place drawn for the batch and the label `target`."""
        values = Constants(self.values)
        return stamping(lambda n, g: values(g.device)[0].expand(n, -1), rate, mean, std,
                        target=target)


def stamping(triggers, rate: float, mean, std, target: int | None = None) -> PerBatch:
    """A training step that gives each image of a normalised batch, with probability `rate`, a
    trigger from `triggers(n, generator)` (n × 9C in [0, 1]) at one place drawn for the batch;
    with `target`, the stamped images are also relabelled to it (an attack), without, their
    labels are kept (MESA's retraining)."""
    check_range("rate", rate, low=0, high=1)
    places = Places()
    on_device = Constants(mean, std)

    def per_batch(x, y, idx, generator):
        row, col = places(x.shape[2], x.shape[3], generator)
        chosen = torch.rand(len(x), generator=generator, device=x.device) < rate
        m, s = on_device(x.device)
        stamped = paste(x, triggers(len(x), generator), row, col, m, s)
        x = torch.where(chosen[:, None, None, None], stamped, x)
        return x, y if target is None else torch.where(chosen, torch.full_like(y, target), y)
    return per_batch
