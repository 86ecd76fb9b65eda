"""Neural Cleanse (Wang et al., IEEE S&P 2019): for every label, reverse-engineer the smallest
trigger that sends clean images there, then flag labels whose trigger is abnormally small.

A trigger is a mask m ∈ [0, 1]^{H×W} and a pattern Δ ∈ [0, 1]^{C×H×W} in pixel space, applied as
x ⊕ (m, Δ) = (1 − m)·x + m·Δ. For label k it minimises CE(f(x ⊕ (m, Δ)), k) + c_k·‖m‖₁ with
Adam, m and Δ parametrised through tanh as in the reference code. Every label is optimised at
once: each step pushes the same batch of defender images through all K triggers, so one forward
pass of K·B images does the work of NC's K separate runs. The cost c_k follows NC's schedule per
label: raised ×1.5 after `patience` evaluation rounds in which the trigger works (attack accuracy
≥ `threshold`), lowered ÷1.5^1.5 after `patience` rounds in which it does not. It starts at
`init_cost`; with `hold_cost`, as in the reference code, it stays at 0 until the label's trigger
has worked for `patience` rounds, and only then takes `init_cost`. The trigger kept for each
label is the one with the smallest ‖m‖₁ among those that worked. With `early_stop`, a label
stops once its cost has gone both up and down and its best ‖m‖₁ has not shrunk by 1 % for that
many rounds; the search ends when every label has stopped. `budget` gives the reference's:
a round is an epoch over the defender's images, up to 1000 of them, early stop after 25.

Outliers: the anomaly index of label k is (median − ‖m_k‖₁) / (1.4826 · MAD) over the labels;
NC flags labels with an index above 2 (only small triggers count).

Mitigation (`unlearn`, NC's §VI-C as BackdoorBench's nc.py runs it): fine-tune the model on the
defender's clean images, a fifth of them replaced by copies carrying each flagged label's
reversed trigger and keeping their true labels, so that the model learns to ignore the trigger.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..config import ParameterError, Recipe, check_range
from ..data import ImageSet
from ..models import model_device
from ..train import evaluating
from ..triggers import blend, mask_search
from .fine_tuning import fine_tune

MAD_CONSISTENCY = 1.4826   # makes the MAD a consistent estimator of a normal's σ
FLAG_INDEX = 2.0


@dataclass(frozen=True)
class Reversal:
    """Reversed triggers, one per label in `labels`, and NC's outlier test over them."""
    labels: torch.Tensor     # K labels reversed
    masks: torch.Tensor      # K×1×H×W in [0, 1]
    patterns: torch.Tensor   # K×C×H×W in [0, 1]
    l1: torch.Tensor         # K: ‖m‖₁ in pixels
    success: torch.Tensor    # K: share of defender images the kept trigger sends to its label
    costs: torch.Tensor | None = None   # rounds×K: each label's cost at the end of every round

    @property
    def anomaly(self) -> torch.Tensor:
        """NC's anomaly index per label; positive when the trigger is smaller than the median."""
        return anomaly_index(self.l1)

    @property
    def flagged(self) -> list[int]:
        return [int(k) for k, a in zip(self.labels, self.anomaly) if a > FLAG_INDEX]

    @property
    def suspect(self) -> int:
        """The label with the largest anomaly index: the defender's guess of the target."""
        return int(self.labels[self.anomaly.argmax()])

    def trigger(self, label: int) -> tuple[torch.Tensor, torch.Tensor]:
        where = (self.labels == label).nonzero().flatten()
        if len(where) == 0:
            raise ParameterError(f"label={label} was not reversed; reversed labels: "
                                 f"{self.labels.tolist()}")
        return self.masks[where[0]], self.patterns[where[0]]

    def stamp(self, images: torch.Tensor, label: int) -> torch.Tensor:
        """uint8 `images` carrying the reversed trigger of `label` (rounded to uint8)."""
        mask, pattern = self.trigger(label)
        return blend(images, mask.to(images.device), pattern.to(images.device))


def anomaly_index(values: torch.Tensor) -> torch.Tensor:
    """(median − v) / (1.4826 · MAD) per entry: NC's robust outlier score (small values high)."""
    values = values.float()
    median = values.median()
    mad = MAD_CONSISTENCY * (values - median).abs().median()
    return (median - values) / mad.clamp(min=1e-12)


def budget(steps: int | None, n_images: int, batch_size: int = 32) -> dict:
    """`reverse`'s optimisation budget: `steps` Adam steps with the cost adjusted every 10; or,
    with None, the reference code's: a round is an epoch over the `n_images` defender images,
    the cost held at 0 until a trigger works, up to 1000 epochs, early stop after 25."""
    if steps is not None:
        return {"steps": steps, "batch_size": batch_size}
    epoch = -(-n_images // batch_size)
    return {"steps": 1000 * epoch, "batch_size": batch_size, "round_steps": epoch,
            "hold_cost": True, "early_stop": 25}


def reverse(model: torch.nn.Module, data: ImageSet, labels: list[int] | None = None, *,
            steps: int = 600, batch_size: int = 32, lr: float = 0.1, init_cost: float = 1e-3,
            threshold: float = 0.99, round_steps: int = 10, patience: int = 5,
            hold_cost: bool = False, early_stop: int = 0, seed: int = 0,
            progress: bool = True) -> Reversal:
    """Reverse a trigger for each of `labels` (default: all) from the clean images `data`
    (the defender's set), optimising all of them together for up to `steps` Adam steps."""
    classes = len(data.classes)
    labels = list(range(classes)) if labels is None else list(labels)
    if not labels or any(not (0 <= k < classes) for k in labels):
        raise ParameterError(f"labels={labels} is not allowed; expected labels in 0..{classes - 1}")
    check_range("steps", steps, low=1, integer=True)
    check_range("batch_size", batch_size, low=1, integer=True)
    check_range("lr", lr, low=0, low_open=True)
    check_range("init_cost", init_cost, low=0)
    check_range("threshold", threshold, low=0, high=1)
    check_range("round_steps", round_steps, low=1, integer=True)
    check_range("patience", patience, low=1, integer=True)
    check_range("early_stop", early_stop, low=0, integer=True)

    device = model_device(model)
    cuda = device.type == "cuda"
    images = data.images.to(device)
    mean = torch.tensor(data.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(data.std, device=device).view(1, -1, 1, 1)
    k, (c, h, w) = len(labels), images.shape[1:]
    target = torch.tensor(labels, device=device)

    # masks start small (m ≈ 0.12), patterns at random
    search = mask_search(k, (c, h, w), mask_start=-1.0, lr=lr, seed=seed, device=device)

    held = torch.full((k,), hold_cost, dtype=torch.bool, device=device)
    cost = torch.where(held, 0.0, init_cost)
    worked = torch.zeros(k, dtype=torch.long, device=device)    # rounds in a row, while held
    up = torch.zeros(k, dtype=torch.long, device=device)
    down = torch.zeros(k, dtype=torch.long, device=device)
    went_up = torch.zeros(k, dtype=torch.bool, device=device)
    went_down = torch.zeros(k, dtype=torch.bool, device=device)
    stale = torch.zeros(k, dtype=torch.long, device=device)
    reference = torch.full((k,), float("inf"), device=device)
    active = torch.ones(k, dtype=torch.bool, device=device)
    best_l1 = torch.full((k,), float("inf"), device=device)
    best_mask = torch.zeros((k, 1, h, w), device=device)
    best_pattern = torch.zeros((k, c, h, w), device=device)
    best_success = torch.zeros(k, device=device)
    hits = torch.zeros(k, device=device)
    costs = []
    seen = 0

    with evaluating(model):
        for step in tqdm(range(steps), desc="neural cleanse", disable=not progress, mininterval=2):
            pick = torch.randint(len(images), (batch_size,), generator=search.generator,
                                 device=device)
            xt, mask, pattern = search.blended(images[pick].float() / 255)   # K×B×C×H×W
            xt = ((xt - mean) / std).flatten(0, 1)
            if cuda:  # on the CPU the layout change costs more than it saves (bench/)
                xt = xt.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                logits = model(xt).float().view(k, batch_size, -1)
            ce = F.cross_entropy(logits.flatten(0, 1), target.repeat_interleave(batch_size),
                                 reduction="none").view(k, batch_size).mean(1)
            l1 = mask.flatten(1).sum(1)
            loss = ((ce + cost * l1) * active).sum()
            search.step(loss)

            with torch.no_grad():
                hits += (logits.argmax(2) == target[:, None]).float().mean(1)
                seen += 1
                if (step + 1) % round_steps == 0:
                    works = hits / seen >= threshold
                    better = works & (l1 < best_l1) & active
                    best_l1 = torch.where(better, l1, best_l1)
                    best_mask[better] = mask[better]
                    best_pattern[better] = pattern[better]
                    best_success = torch.where(better, hits / seen, best_success)
                    if early_stop:
                        known = torch.isfinite(best_l1)
                        stale = torch.where(known & (best_l1 >= 0.99 * reference), stale + 1,
                                            torch.where(known, 0, stale))
                        reference = torch.minimum(reference, best_l1)
                        active &= ~(went_up & went_down & (stale >= early_stop))
                    worked = torch.where(held & works, worked + 1, 0)
                    release = held & (worked >= patience)
                    cost = torch.where(release, init_cost, cost)
                    held &= ~release
                    up = torch.where(works & ~release, up + 1, 0)
                    down = torch.where(works | release, 0, down + 1)
                    raise_, lower = active & (up >= patience), active & (down >= patience)
                    cost = torch.where(raise_, cost * 1.5, torch.where(lower, cost / 1.5 ** 1.5,
                                                                        cost))
                    went_up |= raise_ & ~held
                    went_down |= lower & ~held
                    up[raise_], down[lower] = 0, 0
                    costs.append(cost.clone())
                    hits.zero_()
                    seen = 0
                    if not active.any():
                        break

    failed = torch.isinf(best_l1)
    if failed.any():
        # No trigger reached the threshold: keep the last one, honestly scored.
        with torch.no_grad():
            mask, pattern = search.triggers()
            best_mask[failed], best_pattern[failed] = mask[failed], pattern[failed]
            best_l1[failed] = mask[failed].flatten(1).sum(1)
    return Reversal(target.cpu(), best_mask.detach().cpu(), best_pattern.detach().cpu(),
                    best_l1.cpu(), best_success.cpu(),
                    torch.stack(costs).cpu() if costs else torch.empty(0, k))


def unlearn(model: torch.nn.Module, clean: ImageSet, reversal: Reversal, recipe: Recipe, *,
            labels: list[int] | None = None, share: float = 0.2, seed: int = 0,
            progress: bool = True) -> torch.nn.Module:
    """NC's unlearning: a copy of `model` fine-tuned by `recipe` on `clean`, whose `share`
    (drawn from `seed`) is swapped for copies stamped with the reversed trigger of every label
    in `labels` (default: the flagged ones), true labels kept. With nothing to unlearn the copy
    is `model` unchanged; the original is never touched."""
    check_range("share", share, low=0, high=1, low_open=True, high_open=True)
    labels = reversal.flagged if labels is None else list(labels)
    if not labels:
        return copy.deepcopy(model).eval()
    kept, swapped = clean.split(1 - share, seed)
    images = [kept.images] + [reversal.stamp(swapped.images, k) for k in labels]
    targets = [kept.labels] + [swapped.labels] * len(labels)
    mixed = clean.with_images(torch.cat(images), torch.cat(targets))
    return fine_tune(model, mixed, recipe, seed=seed, progress=progress)
