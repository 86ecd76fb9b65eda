"""Clean accuracy (CA), attack success rate (ASR), robust accuracy (RA) and the defense
effectiveness rating (DER), as BackdoorBench defines them. All are fractions in [0, 1].

ASR and RA are computed on triggered test images whose *true* class is not the target: an image of
the target class says nothing about the backdoor. The target is one class, or one per image for
all-to-all attacks (class y goes to y + 1 mod K).
"""
from __future__ import annotations

import math

import torch

from .config import ParameterError, check_range


def _per_image(labels: torch.Tensor, target: int | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(target, device=labels.device).expand_as(labels)


def _non_target(labels: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    keep = labels != target
    if not keep.any():
        shown = target.unique().tolist()
        raise ParameterError(f"target={shown[0] if len(shown) == 1 else shown}: every image is "
                             "of its target class, so ASR and RA are undefined; pass triggered "
                             "images of other classes")
    return keep


def ca(pred: torch.Tensor, labels: torch.Tensor) -> float:
    """Clean accuracy: predictions on clean test images against their labels."""
    if len(labels) == 0:
        raise ParameterError("labels is empty: accuracy of no images is undefined")
    return (pred == labels).float().mean().item()


def asr(pred: torch.Tensor, labels: torch.Tensor, target: int | torch.Tensor) -> float:
    """Attack success rate: the share of triggered non-target images predicted as `target`.

    `pred` are predictions on triggered images, `labels` their true classes, `target` the
    class the backdoor sends them to (one, or one per image)."""
    target = _per_image(labels, target)
    keep = _non_target(labels, target)
    return (pred[keep] == target[keep]).float().mean().item()


def ra(pred: torch.Tensor, labels: torch.Tensor, target: int | torch.Tensor) -> float:
    """Robust accuracy: the share of triggered non-target images still given their true class."""
    keep = _non_target(labels, _per_image(labels, target))
    return (pred[keep] == labels[keep]).float().mean().item()


def der(ca_before: float, asr_before: float, ca_after: float, asr_after: float) -> float:
    """Defense effectiveness rating: [max(0, ΔASR) − max(0, ΔCA) + 1] / 2, with Δ = before − after.

    1 means the attack was removed at no cost in accuracy, 0.5 that nothing changed."""
    for name, value in (("ca_before", ca_before), ("asr_before", asr_before),
                        ("ca_after", ca_after), ("asr_after", asr_after)):
        check_range(name, value, low=0, high=1)
    return (max(0.0, asr_before - asr_after) - max(0.0, ca_before - ca_after) + 1) / 2


def precision_recall(flagged: torch.Tensor, truth: torch.Tensor, n: int) -> tuple[float, float]:
    """Sample-level detection among `n` samples: `flagged` and `truth` are index tensors.
    Precision is NaN when nothing is flagged; recall needs some truth."""
    if len(truth) == 0:
        raise ParameterError("truth is empty: recall of no poisons is undefined")
    marked = torch.zeros(n, dtype=torch.bool)
    marked[flagged.cpu()] = True
    hits = marked[truth.cpu()].sum().item()
    return (hits / marked.sum().item() if marked.any() else math.nan), hits / len(truth)


def auroc(clean: list[float], attacked: list[float]) -> float:
    """The area under the ROC curve of a score that should be higher on attacked models: the
    chance that a random attacked score exceeds a random clean one, ties counting ½."""
    if not clean or not attacked:
        raise ParameterError(f"auroc needs scores of both kinds; got {len(clean)} clean and "
                             f"{len(attacked)} attacked")
    c, a = torch.tensor(clean, dtype=torch.float64), torch.tensor(attacked, dtype=torch.float64)
    return ((a[:, None] > c).double() + 0.5 * (a[:, None] == c).double()).mean().item()


def score_row(v, model=None, *, with_der: bool = True) -> dict[str, float]:
    """The scores of `model` (default: the victim `v`'s own) in percent: clean accuracy, ASR
    and RA, and with `with_der` the DER against `v`'s undefended model.
    A clean twin (no attack) has only its clean accuracy."""
    s = v.scores(model)
    if "asr" not in s:
        return {"CA %": 100 * s["ca"]}
    row = {"CA %": 100 * s["ca"], "ASR %": 100 * s["asr"], "RA %": 100 * s["ra"]}
    if with_der:
        before = v.scores()
        row["DER %"] = 100 * der(before["ca"], before["asr"], s["ca"], s["asr"])
    return row
