"""BadNets (Gu et al., 2017) as BackdoorBench sets it up: a 3×3 white square in the bottom-right
corner, all-to-one (every poisoned image is relabelled to the target)."""
from __future__ import annotations

import torch

from ..config import ParameterError, check_range
from ..data import ImageSet

SIZE = 3


def stamp(images: torch.Tensor) -> torch.Tensor:
    """A copy of uint8 `images` (…, H, W) with the trigger: the bottom-right 3×3 pixels set to 255."""
    out = images.clone()
    out[..., -SIZE:, -SIZE:] = 255
    return out


def poison(data: ImageSet, ratio: float, target: int, seed: int) -> tuple[ImageSet, torch.Tensor]:
    """The training set with round(ratio × N) images, drawn from the non-target classes, stamped
    and relabelled to `target`; and the sorted indices of those images (the ground truth)."""
    check_range("ratio", ratio, low=0, high=1)
    check_range("target", target, low=0, high=len(data.classes) - 1, integer=True)
    candidates = (data.labels != target).nonzero().flatten().cpu()
    n = round(ratio * len(data))
    if n > len(candidates):
        raise ParameterError(f"ratio={ratio} asks for {n} poisoned images but only "
                         f"{len(candidates)} are outside the target class")
    order = torch.randperm(len(candidates), generator=torch.Generator().manual_seed(seed))
    indices = candidates[order[:n]].sort().values.to(data.device)
    images, labels = data.images.clone(), data.labels.clone()
    images[indices] = stamp(images[indices])
    labels[indices] = target
    return data.with_images(images, labels), indices


def triggered(test: ImageSet, target: int) -> ImageSet:
    """Every test image not of class `target`, stamped, with its true label (for ASR and RA)."""
    check_range("target", target, low=0, high=len(test.classes) - 1, integer=True)
    keep = test.labels != target
    return test.with_images(stamp(test.images[keep]), test.labels[keep])
