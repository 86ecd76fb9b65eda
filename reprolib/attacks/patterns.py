"""MESA's 3×3 black-and-white trigger patterns (Qiao, Yang, Li, NeurIPS 2019).

A pattern id is a 9-bit number whose binary digits, most significant first, fill the 3×3 mask
row by row (1: white). Two patterns are the same trigger up to the square's 8 symmetries
(rotations and reflections) and colour inversion; the 512 ids fall into 51 such classes, and
MESA's study poisons one model per class, named by its smallest id. Pattern 170 (0/1/0, 1/0/1,
0/1/0) is the paper's running example.
"""
from __future__ import annotations

import torch

from ..config import check_range


def pattern(pattern_id: int) -> torch.Tensor:
    """The 3×3 mask of `pattern_id` (0–511), as a float tensor of 0s and 1s."""
    check_range("pattern_id", pattern_id, low=0, high=511, integer=True)
    bits = [(int(pattern_id) >> (8 - i)) & 1 for i in range(9)]
    return torch.tensor(bits, dtype=torch.float32).view(3, 3)


def pattern_id(mask: torch.Tensor) -> int:
    return int(sum(int(b) << (8 - i) for i, b in enumerate(mask.flatten().round().tolist())))


def equivalents(pattern_id_: int) -> set[int]:
    """Every id that is `pattern_id_` rotated, reflected and/or colour-inverted (16 maps)."""
    mask = pattern(pattern_id_)
    variants = set()
    for m in (mask, 1 - mask):
        for turned in (torch.rot90(m, k) for k in range(4)):
            variants.update({pattern_id(turned), pattern_id(turned.flip(1))})
    return variants


def pattern_classes() -> list[int]:
    """The smallest id of each equivalence class, in increasing order."""
    return sorted({min(equivalents(i)) for i in range(512)})
