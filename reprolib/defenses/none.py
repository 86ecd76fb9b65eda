"""NONE, non-linearity enforcement (Wang, Ding, Zhai, Ma, NeurIPS 2022), as the official code
(`RU-System-Software-and-Security/NONE`) does it after the first training phase.

A backdoor neuron answers the trigger with a near-linear, class-independent peak. For every
monitored conv channel j and class k, with S_k the training images the model is confident are k
(p_k > λ_h) and W_k those it is confident are not (p_k < λ_l):

    diff(j, k) = max_{S_k} a_j − (mean_{W_k} a_j + 3 · std_{W_k} a_j),   score(j) = max_k diff(j, k)

where a_j(x) is the spatial max of the channel's conv output before BatchNorm. Per layer the top
ceil(f · C) channels are reset (zeroed), the images that drive each layer's top channel are
split off by a 2-class Jenks break and dropped, and the model is fine-tuned with BatchNorm frozen.

Monitored layers (`UNITS`): as the code, ResNet-18's convs of layer2–layer4 with their projection
shortcuts (recorded after the shortcut's BN); the same convs of PreAct-ResNet18; for our small CNN
conv2–conv4 (its stem conv1 is left out like ResNet's stem and layer1).
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .. import metrics
from ..config import ParameterError, Recipe, check_range
from ..data import Batches, ImageSet
from ..models import architecture, model_device
from ..train import evaluating, train


@dataclass(frozen=True)
class Unit:
    """One monitored conv layer and what a reset of its channel c touches."""
    conv: str                 # the conv whose output channels are scored and whose filters reset
    bn: str | None            # the BatchNorm of exactly this output: γ_c, β_c zeroed too
    consumer: str | None      # the layer reading channel c next: its input slice c is zeroed
    watch: str                # the module whose output is recorded (the conv, or conv + BN)


def _resnet_units(preact: bool) -> list[Unit]:
    units = []
    for stage in (2, 3, 4):
        for block in (0, 1):
            p = f"layer{stage}.{block}"
            after = (f"layer{stage}.1.conv1" if block == 0 else
                     f"layer{stage + 1}.0.conv1" if stage < 4 else "head")
            # PreAct: conv1 is normalised by the block's bn2; conv2 by nothing of its own (the
            # next BN sees the residual sum)
            units.append(Unit(f"{p}.conv1", f"{p}.bn2" if preact else f"{p}.bn1", f"{p}.conv2",
                              f"{p}.conv1"))
            units.append(Unit(f"{p}.conv2", None if preact else f"{p}.bn2", after, f"{p}.conv2"))
            if block == 0:
                units.append(Unit(f"{p}.shortcut.0", None if preact else f"{p}.shortcut.1", None,
                                  f"{p}.shortcut.0" if preact else f"{p}.shortcut"))
    return units


UNITS = {
    "ResNet18": _resnet_units(preact=False),
    "PreActResNet18": _resnet_units(preact=True),
    "SmallCNN": [Unit(f"conv{k}", f"bn{k}", f"conv{k + 1}" if k < 4 else "head", f"conv{k}")
                 for k in (2, 3, 4)],
}


def units(model: nn.Module) -> list[Unit]:
    name = architecture(model)
    if name not in UNITS:
        raise ParameterError(f"model={name} has no NONE layer map; allowed: {sorted(UNITS)}")
    return UNITS[name]


@dataclass
class Activations:
    probs: torch.Tensor                   # N×K softmax outputs
    peaks: dict[str, torch.Tensor]        # per unit (conv name): N×C spatial maxima


@torch.no_grad()
def activations(model: nn.Module, data: ImageSet, batch_size: int = 500) -> Activations:
    """One eval-mode pass over `data` (no augmentation, in order): the softmax outputs and every
    monitored channel's spatial max."""
    device = model_device(model)
    layers = dict(model.named_modules())
    peaks = {u.conv: [] for u in units(model)}
    hooks = [layers[u.watch].register_forward_hook(
        lambda _, __, out, key=u.conv: peaks[key].append(out.float().amax((2, 3))))
        for u in units(model)]
    probs = []
    try:
        with evaluating(model):
            for x, _, _ in Batches(data.to(device), batch_size):
                probs.append(model(x.contiguous(memory_format=torch.channels_last))
                             .float().softmax(1))
    finally:
        for h in hooks:
            h.remove()
    return Activations(torch.cat(probs), {k: torch.cat(v) for k, v in peaks.items()})


def neuron_scores(acts: Activations, low: float = 0.1, high: float = 0.9,
                  sigmas: float = 3.0) -> dict[str, torch.Tensor]:
    """score(j) = max over classes k with confident images of max_{S_k} a_j − (mean + σ·std)
    over W_k (population std, as NumPy's), per unit (C values each); classes with S_k or W_k
    empty are skipped."""
    check_range("low", low, low=0, high=1)
    check_range("high", high, low=0, high=1)
    if low >= high:
        raise ParameterError(f"low={low} must be below high={high}")
    scores = {}
    for key, a in acts.peaks.items():
        best = torch.full((a.shape[1],), -math.inf, device=a.device)
        for k in range(acts.probs.shape[1]):
            sure, other = acts.probs[:, k] > high, acts.probs[:, k] < low
            if sure.sum() == 0 or other.sum() == 0:
                continue
            w = a[other]
            diff = a[sure].amax(0) - (w.mean(0) + sigmas * w.std(0, correction=0))
            best = torch.maximum(best, diff)
        scores[key] = best
    return scores


def select(scores: dict[str, torch.Tensor], fraction: float) -> dict[str, torch.Tensor]:
    """Per unit, the top ceil(fraction · C) channels by score."""
    check_range("fraction", fraction, low=0, high=1, low_open=True)
    return {key: s.topk(math.ceil(fraction * len(s))).indices for key, s in scores.items()}


def sample_scores(acts: Activations, scores: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per image, the sum over units of its activation at the unit's top-scored channel (raw,
    as the code sums them: the deepest layers weigh most)."""
    return sum(acts.peaks[key][:, s.argmax()] for key, s in scores.items())


def jenks_split(values: torch.Tensor) -> float:
    """The 2-class Jenks natural break: the largest value of the lower class of the split of the
    sorted values that minimises the within-class sum of squared deviations. Exact, by one
    prefix-sum scan over the n − 1 possible splits."""
    v = values.detach().double().flatten().sort().values
    if len(v) < 2:
        raise ParameterError(f"values has {len(v)} element(s); a 2-class split needs at least 2")
    n = len(v)
    s1, s2 = v.cumsum(0), (v * v).cumsum(0)
    left = torch.arange(1, n, dtype=torch.float64, device=v.device)   # sizes of the lower class
    sl, ql = s1[:-1], s2[:-1]
    sr, qr = s1[-1] - sl, s2[-1] - ql
    sse = (ql - sl * sl / left) + (qr - sr * sr / (n - left))
    return v[int(sse.argmin())].item()


def above_break(values: torch.Tensor) -> tuple[float, torch.Tensor]:
    """The Jenks break of `values` and the indices above it: the images NONE drops."""
    threshold = jenks_split(values)
    return threshold, (values > threshold).nonzero().flatten()


@torch.no_grad()
def reset(model: nn.Module, chosen: dict[str, torch.Tensor]) -> nn.Module:
    """Zero, in place, each chosen channel c of a unit: its conv filter, its BN's γ_c and β_c,
    and the consumer's input slice c (the next conv's, or the head's column)."""
    layers = dict(model.named_modules())
    by_conv = {u.conv: u for u in units(model)}
    for key, channels in chosen.items():
        if key not in by_conv:
            raise ParameterError(f"chosen has {key!r}, not a monitored layer; allowed: "
                                 f"{list(by_conv)}")
        u, c = by_conv[key], channels.to(layers[key].weight.device)
        layers[u.conv].weight[c] = 0
        if u.bn is not None:
            layers[u.bn].weight[c] = 0
            layers[u.bn].bias[c] = 0
        if u.consumer is not None:
            layers[u.consumer].weight[:, c] = 0
    return model


# The released code never clears its channel list from this layer on (a bug, §2.3 of our spec).
UNION_FROM = {"ResNet18": "layer3.1.conv2", "PreActResNet18": "layer3.1.conv2"}


def code_union(model: nn.Module, chosen: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The channels the released code resets: from the unit after `UNION_FROM` on, each unit
    resets the union of every selection since that layer (its own included), so layer4.0.conv1
    also zeroes layer3.1.conv2's indices and the head loses the union of all of layer 4's."""
    name = architecture(model)
    if name not in UNION_FROM:
        raise ParameterError(f"model={name}: the code's layer-4 reset applies to the ResNets "
                             f"only; allowed: {sorted(UNION_FROM)}")
    result, union, started = {}, None, False
    for u in units(model):
        own = chosen.get(u.conv)
        if started and own is not None:
            union = torch.cat([union, own.to(union.device)]).unique()
            result[u.conv] = union
        elif own is not None:
            result[u.conv] = own
        if u.conv == UNION_FROM[name]:
            started, union = True, own if own is not None else torch.empty(0, dtype=torch.long)
    return result


@dataclass(frozen=True)
class Settings:
    """The README's injected-backdoor command: f = 0.03, one round of 20 epochs at lr 1e-4."""
    fraction: float = 0.03       # max_reset_fraction: channels reset per layer
    low: float = 0.1             # λ_l
    high: float = 0.9            # λ_h
    sigmas: float = 3.0
    lr: float = 1e-4             # none_lr, constant
    warmup: bool = False         # ours: reach lr linearly over the first tenth of the steps
    epochs: int = 20             # epoch_num_2, per round
    rounds: int = 1
    batch_size: int = 128
    momentum: float = 0.9
    weight_decay: float = 1e-4
    drop: bool = True            # drop the images above the Jenks break
    zero: bool = True            # reset the selected channels
    code_union: bool = False     # reset as the released code does (`code_union`), an ablation

    def __post_init__(self):
        check_range("fraction", self.fraction, low=0, high=1, low_open=True)
        check_range("epochs", self.epochs, low=1, integer=True)
        check_range("rounds", self.rounds, low=1, integer=True)
        check_range("lr", self.lr, low=0, low_open=True)

    def recipe(self, augment: bool) -> Recipe:
        return Recipe(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                      momentum=self.momentum, weight_decay=self.weight_decay,
                      schedule="warmup" if self.warmup else "constant", augment=augment)


@dataclass
class Round:
    chosen: dict[str, torch.Tensor]   # reset channels per unit
    scores: torch.Tensor              # per training image, the sample score
    threshold: float                  # its Jenks break
    dropped: torch.Tensor             # indices (into the training set) left out of fine-tuning


@dataclass
class Result:
    model: nn.Module
    rounds: list[Round] = field(default_factory=list)
    seconds: float = 0.0
    diverged: bool = False            # the last round's fine-tuning diverged; `model` is then
                                      # the model before that round (the input, in round 1)


def repair(model: nn.Module, data: ImageSet, settings: Settings = Settings(), *,
           augment: bool = True, seed: int = 0, progress: bool = True) -> Result:
    """Repair a copy of the trained `model` on its own training set `data`: per round detect,
    drop the flagged images, reset the selected channels, fine-tune with BatchNorm frozen.
    The optimizer starts afresh (the code keeps phase 1's momentum buffers; we have only the
    weights). A round whose fine-tuning diverges ends the repair: the defender keeps the model
    it had before that round, and the result says `diverged`."""
    s = settings
    net = copy.deepcopy(model)
    start = time.perf_counter()
    rounds = []
    for r in range(s.rounds):
        kept = copy.deepcopy(net)
        acts = activations(net, data)
        neurons = neuron_scores(acts, s.low, s.high, s.sigmas)
        chosen = select(neurons, s.fraction)
        per_image = sample_scores(acts, neurons).cpu()
        threshold, dropped = above_break(per_image)
        if not s.drop:
            dropped = torch.empty(0, dtype=torch.long)
        if s.zero:
            reset(net, code_union(net, chosen) if s.code_union else chosen)
        keep = torch.ones(len(data), dtype=torch.bool)
        keep[dropped] = False
        rounds.append(Round({k: v.cpu() for k, v in chosen.items()}, per_image, threshold,
                            dropped))
        try:
            train(net, data.subset(keep.nonzero().flatten()), s.recipe(augment), seed=seed + r,
                  device=model_device(net), progress=progress,
                  desc=f"none round {r + 1}", frozen_bn=True)
        except FloatingPointError:
            return Result(kept.eval(), rounds, time.perf_counter() - start, diverged=True)
    return Result(net.eval(), rounds, time.perf_counter() - start)


def filtering(flagged: torch.Tensor, truth: torch.Tensor, n: int) -> dict[str, float]:
    """How well a defense's removed training images (`flagged`, indices among `n`) match the
    attack's poison indices `truth`: how many, and precision and recall in percent (precision
    NaN when nothing was removed)."""
    precision, recall = metrics.precision_recall(flagged, truth, n)
    return {"flagged": len(flagged), "poisoned": len(truth), "precision %": 100 * precision,
            "recall %": 100 * recall}


def variants(settings: Settings, fractions, model: nn.Module) -> dict[str, Settings]:
    """The ablation: `settings` with one choice changed at a time. Each reset fraction; the
    README's lr 1e-4 (unless already so); the code's constant lr; no filtering; no reset; and on
    the ResNets the released code's layer-4 union."""
    found = {f"f = {f:g}": dataclasses.replace(settings, fraction=f) for f in fractions}
    if settings.lr != 1e-4:
        found["none_lr 1e-4 (README)"] = dataclasses.replace(settings, lr=1e-4)
    found["no warm-up (code)"] = dataclasses.replace(settings, warmup=False)
    found["no filtering"] = dataclasses.replace(settings, drop=False)
    found["no reset"] = dataclasses.replace(settings, zero=False)
    if architecture(model) in UNION_FROM:
        found["code's layer-4 union"] = dataclasses.replace(settings, code_union=True)
    return found
