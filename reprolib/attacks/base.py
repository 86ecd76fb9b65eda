"""The interface every poisoning attack shares.

An attack is a trigger (`apply`, on uint8 images) plus the rule for which training images carry
it. `poison` returns the poisoned training set together with the exact indices it changed, the
ground truth that detection defenses are scored against; `triggered` builds the test set for ASR
and RA: every non-target test image with the trigger, keeping its true label.

Dirty-label attacks draw their round(ratio × N) images uniformly from the whole training set, as
BackdoorBench does (target-class images may be drawn; they get the trigger and keep their label).
Clean-label attacks draw them from the target class only and never change a label. All-to-one
attacks send every triggered image to one `target`; all-to-all attacks send class y to
(y + 1) mod K, BackdoorBench's all2all, and have no single target.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import ClassVar

import torch

from ..config import ParameterError, Recipe, check_range
from ..data import ImageSet
from ..train import PerBatch


@dataclass(frozen=True)
class Poisoned:
    """A poisoned training set and its bookkeeping."""
    data: ImageSet
    indices: torch.Tensor              # sorted indices of the images that carry the trigger
    target: int
    attack: "Attack"
    per_batch: PerBatch | None = None  # work the attack does during training (WaNet's noise)
    cross: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))


class Attack:
    """Subclasses are frozen dataclasses of the trigger's parameters; they set `name` and
    `apply`, and `clean_label` when only target-class images may be poisoned."""
    name: ClassVar[str]
    clean_label: ClassVar[bool] = False
    all_to_all: ClassVar[bool] = False

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """A triggered copy of uint8 `images` (N, C, H, W)."""
        raise NotImplementedError

    def recipe(self, base: Recipe) -> Recipe:
        """How the reference code trains a model under this attack, from the shared `base`
        recipe: unchanged unless the attack's own configuration says otherwise."""
        return base

    def settings(self) -> dict:
        """The name and every parameter: what a model cache key needs to know."""
        return {"name": self.name, **asdict(self)}

    def backdoor_labels(self, labels: torch.Tensor, target: int, classes: int) -> torch.Tensor:
        """The label the backdoor gives each triggered image of true class `labels`."""
        if self.all_to_all:
            return (labels + 1) % classes
        return torch.full_like(labels, target)

    def poison_indices(self, labels: torch.Tensor, ratio: float, target: int,
                       seed: int) -> torch.Tensor:
        """Sorted indices of round(ratio × N) images drawn at random from `seed`."""
        check_range("ratio", ratio, low=0, high=1)
        pool = ((labels == target).nonzero().flatten() if self.clean_label
                else torch.arange(len(labels), device=labels.device)).cpu()
        n = round(ratio * len(labels))
        if n > len(pool):
            raise ParameterError(
                f"ratio={ratio} asks for {n} poisoned images but {self.name} poisons only "
                f"target-class images and class {target} has {len(pool)}; allowed: ratio ≤ "
                f"{len(pool) / len(labels):.4f}")
        order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))
        return pool[order[:n]].sort().values.to(labels.device)

    def poison(self, data: ImageSet, ratio: float, target: int, seed: int) -> Poisoned:
        """The training set with the trigger on round(ratio × N) images, relabelled by
        `backdoor_labels` unless the attack is clean-label (all-to-all attacks ignore `target`)."""
        check_target_class(target, data)
        indices = self.poison_indices(data.labels, ratio, target, seed)
        images, labels = data.images.clone(), data.labels.clone()
        images[indices] = self.apply(images[indices])
        if not self.clean_label:
            labels[indices] = self.backdoor_labels(labels[indices], target, len(data.classes))
        return Poisoned(data.with_images(images, labels), indices, target, self)

    def triggered(self, test: ImageSet, target: int) -> ImageSet:
        """Every test image whose backdoor label differs from its own (for all-to-one attacks,
        every image not of class `target`), with the trigger and its true label."""
        check_target_class(target, test)
        keep = test.labels != self.backdoor_labels(test.labels, target, len(test.classes))
        return test.with_images(self.apply(test.images[keep]), test.labels[keep])


def check_target_class(target: int, data: ImageSet) -> None:
    check_range("target", target, low=0, high=len(data.classes) - 1, integer=True)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float pixel values to uint8 the way NumPy's astype does after a clip: truncation."""
    return x.clamp(0, 255).to(torch.uint8)
