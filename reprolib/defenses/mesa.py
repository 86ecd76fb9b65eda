"""MESA, max-entropy staircase approximation (Qiao, Yang, Li, NeurIPS 2019), as the official code
(`superrrpotato/Defending-Neural-Backdoors-via-Generative-Distribution-Modeling`) builds it.

A generator G maps noise z ~ U[0, 1)^64 to 3×3 triggers; it is trained to make the backdoored
model answer the target class (a hinge at β on the target's softmax) while keeping the entropy
of G(z) high. For a deterministic G that entropy equals the mutual information I(z; G(z)), which
MINE estimates with a statistics network T through the Donsker–Varadhan bound

    I(z; y) ≥ E_joint[T(z, y)] − log E_marginal[e^{T(z', y)}]

(z' an independent noise batch paired with the same triggers). T ascends the bound with MINE's
bias-corrected gradient: the denominator of ∇ log E[e^T] is a moving average of E[e^T].

The defense then fine-tunes the backdoored model on the defender's images with sampled triggers
stamped on a few of them, labels kept (`retrain`): from one β's generator, or from the staircase
ensemble (`mixture`). The baseline it is compared with reverses one trigger by pixel-space SGD
(`reverse`, several restarts at once) and retrains on it the same way.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..attacks.patch import stamping
from ..config import ParameterError, Recipe, check_range
from ..data import ImageSet
from ..models import model_device
from ..train import evaluating, train
from ..triggers import SIZE, paste

NOISE = 64          # z's dimension
TRIGGER = 27        # a 3×3×3 patch in [0, 1]


class Generator(nn.Module):
    """The code's skip-input MLP: z is cut into 4 chunks of 16 and chunk k joins the input of
    linear layer k; BatchNorm + LeakyReLU(0.2) after the three hidden layers, sigmoid output."""

    def __init__(self, hidden: int = 512, noise: int = NOISE, out: int = TRIGGER):
        super().__init__()
        check_range("noise", noise, low=4, integer=True)
        if noise % 4:
            raise ParameterError(f"noise={noise} is not allowed; expected a multiple of 4 (it "
                                 f"is cut into 4 equal chunks)")
        chunk = noise // 4
        self.fc = nn.ModuleList([nn.Linear(chunk, hidden)]
                                + [nn.Linear(hidden + chunk, hidden) for _ in range(2)]
                                + [nn.Linear(hidden + chunk, out)])
        self.bn = nn.ModuleList([nn.BatchNorm1d(hidden) for _ in range(3)])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        chunks = z.chunk(4, dim=1)
        h = chunks[0]
        for k, fc in enumerate(self.fc):
            h = fc(h if k == 0 else torch.cat([h, chunks[k]], dim=1))
            if k < 3:
                h = F.leaky_relu(self.bn[k](h), 0.2)
        return torch.sigmoid(h)


class Statistics(nn.Module):
    """MINE's T(x, y): x and y projected (no bias), summed with one learned bias, two more
    layers; LeakyReLU(0.2) after every layer, the scalar output included (as the code)."""

    def __init__(self, x_dim: int = NOISE, y_dim: int = TRIGGER, hidden: int = 512):
        super().__init__()
        self.fx = nn.Linear(x_dim, hidden, bias=False)
        self.fy = nn.Linear(y_dim, hidden, bias=False)
        self.bias = nn.Parameter(torch.zeros(hidden))
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.fx(x) + self.fy(y) + self.bias, 0.2)
        h = F.leaky_relu(self.fc2(h), 0.2)
        return F.leaky_relu(self.fc3(h), 0.2).squeeze(1)


def dv_bound(t: Statistics, x: torch.Tensor, x_marginal: torch.Tensor,
             y: torch.Tensor) -> torch.Tensor:
    """The Donsker–Varadhan lower bound on I(x; y) from one batch (the code adds 1e-8 in the
    log); differentiable, as G's step uses it."""
    return t(x, y).mean() - torch.log(t(x_marginal, y).exp().mean() + 1e-8)


class Mine:
    """T and its optimizer (Adam lr 2e-4, betas (0.5, 0.999), as the code), stepped with the
    bias-corrected gradient; `average` is the moving average of E[e^T] (rate 0.001)."""

    def __init__(self, statistics: Statistics, lr: float = 2e-4, rate: float = 0.001):
        check_range("rate", rate, low=0, high=1, low_open=True)
        self.t = statistics
        self.rate = rate
        self.optimizer = torch.optim.Adam(statistics.parameters(), lr=lr, betas=(0.5, 0.999))
        self.average: torch.Tensor | None = None

    def step(self, x: torch.Tensor, x_marginal: torch.Tensor, y: torch.Tensor) -> float:
        """One ascent step on the bound; returns the batch's (uncorrected) estimate."""
        joint = self.t(x, y).mean()
        marginal = self.t(x_marginal, y).exp().mean()
        seen = marginal.detach()
        self.average = seen if self.average is None else (
            (1 - self.rate) * self.average + self.rate * seen)
        # d/dθ of marginal / average is E[∇T e^T] / average: ∇ log E[e^T] with its biased
        # minibatch denominator replaced by the moving average
        loss = -(joint - marginal / self.average)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return (joint - torch.log(marginal + 1e-8)).item()


@dataclass(frozen=True)
class Settings:
    """The code's search: α = 0.1, β ∈ {0.9, 0.8, 0.5}, 10 epochs of batch 128 (drop_last),
    Adam lr 2e-4 for G and T, N(0, 0.1²) noise on the triggers of the classification term;
    hidden layers 512 wide, 2048 on a 100-class dataset (None: the code's for the data)."""
    betas: tuple[float, ...] = (0.9, 0.8, 0.5)
    alpha: float = 0.1
    epochs: int = 10
    batch_size: int = 128
    lr: float = 2e-4
    noise: float = 0.1
    hidden: int | None = None

    def __post_init__(self):
        for beta in self.betas:
            check_range("betas", beta, low=0, high=1, low_open=True)
        check_range("alpha", self.alpha, low=0)
        check_range("epochs", self.epochs, low=1, integer=True)
        check_range("batch_size", self.batch_size, low=2, integer=True)


@dataclass
class Search:
    generators: dict[float, Generator]                 # per β, in eval mode
    hinge: dict[float, list[float]] = field(default_factory=dict)   # per β, per epoch
    mi: dict[float, list[float]] = field(default_factory=dict)


def search(model: nn.Module, data: ImageSet, target: int, settings: Settings = Settings(), *,
           location: tuple[int, int] | None = None, seed: int = 0) -> Search:
    """Train one generator per β against the frozen `model` on the defender's images `data`.
    Each step stamps every generator's triggers on the same batch at one location (drawn per
    step, or `location`), so the three sub-models share one forward pass of the model."""
    s = settings
    device = model_device(model)
    c, h, w = data.images.shape[1:]
    if len(data) < s.batch_size:
        raise ParameterError(f"data has {len(data)} images; the search needs at least "
                             f"batch_size={s.batch_size}")
    gen = torch.Generator().manual_seed(seed)                   # batch order and location
    draw = torch.Generator(device).manual_seed(seed)            # noise, drawn where it is used
    mean = torch.tensor(data.mean, device=device)
    std = torch.tensor(data.std, device=device)
    images = data.to(device)
    hidden = s.hidden or (2048 if len(data.classes) == 100 else 512)
    with torch.random.fork_rng(devices=[]):                     # the caller's RNG is left as is
        torch.manual_seed(seed)                                 # the networks' initial weights
        gs = {b: Generator(hidden, out=SIZE * SIZE * c).to(device) for b in s.betas}
        mines = {b: Mine(Statistics(NOISE, SIZE * SIZE * c, hidden).to(device), lr=s.lr)
                 for b in s.betas}
    opts = {b: torch.optim.Adam(g.parameters(), lr=s.lr, betas=(0.5, 0.999)) for b, g in gs.items()}
    params = [p for g in gs.values() for p in g.parameters()]
    cuda = device.type == "cuda"
    result = Search(gs, {b: [] for b in s.betas}, {b: [] for b in s.betas})
    steps = len(data) // s.batch_size

    def noise_batch():
        return torch.rand(s.batch_size, NOISE, generator=draw, device=device)

    with evaluating(model):
        for _ in range(s.epochs):
            order = torch.randperm(len(data), generator=gen).to(device)
            sums = {b: [0.0, 0.0] for b in s.betas}
            for k in range(steps):
                pick = order[k * s.batch_size:(k + 1) * s.batch_size]
                x = images.normalize(images.images[pick])
                row, col = location or (int(torch.randint(h - SIZE + 1, (1,), generator=gen)),
                                        int(torch.randint(w - SIZE + 1, (1,), generator=gen)))
                z = {b: (noise_batch(), noise_batch()) for b in s.betas}
                triggers = {b: gs[b](z[b][0]) for b in s.betas}
                noisy = torch.cat([t + s.noise * torch.randn(t.shape, generator=draw,
                                                             device=device)
                                   for t in triggers.values()])
                xs = paste(x.repeat(len(s.betas), 1, 1, 1), noisy, row, col, mean, std)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                    logits = model(xs)
                p = logits.float().softmax(1)[:, target].view(len(s.betas), s.batch_size)
                loss = 0
                for i, b in enumerate(s.betas):
                    hinge = p[i].clamp(max=b).mean()
                    mi = dv_bound(mines[b].t, z[b][0], z[b][1], triggers[b])
                    loss = loss - hinge - s.alpha * mi
                    sums[b][0] += hinge.item()
                    sums[b][1] += mi.item()
                # only the generators' gradients: the frozen model and T get none
                for param, grad in zip(params, torch.autograd.grad(loss, params)):
                    param.grad = grad
                for o in opts.values():
                    o.step()
                for b in s.betas:
                    zt, zm = noise_batch(), noise_batch()
                    mines[b].step(zt, zm, gs[b](zt).detach())
            for b in s.betas:
                result.hinge[b].append(sums[b][0] / steps)
                result.mi[b].append(sums[b][1] / steps)
    for g in gs.values():
        g.eval()
    return result


@torch.no_grad()
def sample(generator: Generator, n: int, seed: int = 0) -> torch.Tensor:
    """`n` triggers (n × 9C in [0, 1]) from a trained generator, without the training noise."""
    check_range("n", n, low=1, integer=True)
    device = model_device(generator)
    z = torch.rand(n, NOISE, generator=torch.Generator().manual_seed(seed)).to(device)
    return generator.eval()(z)


# --------------------------------------------------------------------------------------------
# The defender's data, and what triggers do to a model

def split(test: ImageSet, fraction: float = 0.8, seed: int = 0) -> tuple[ImageSet, ImageSet]:
    """The test set cut by a fixed permutation into the defender's images (the code's first
    8,000 of CIFAR's 10,000: trigger modelling and retraining) and the held-out evaluation set."""
    return test.split(fraction, seed)


# n triggers (n × 9C in [0, 1]) on the generator's device, drawn from it
Sampler = Callable[[int, torch.Generator], torch.Tensor]


def from_generator(generator: Generator) -> Sampler:
    generator.eval()

    @torch.no_grad()
    def draw(n, g):
        return generator(torch.rand(n, NOISE, generator=g, device=g.device))
    return draw


def mixture(generators: Sequence[Generator]) -> Sampler:
    """The staircase ensemble with equal weights: each trigger from a sub-model drawn at random."""
    draws = [from_generator(g) for g in generators]

    def draw(n, g):
        pick = torch.randint(len(draws), (n, 1), generator=g, device=g.device)
        every = torch.stack([d(n, g) for d in draws])                  # K × n × 9C
        return every.gather(0, pick[None].expand(1, n, every.shape[2]))[0]
    return draw


def fixed(trigger: torch.Tensor) -> Sampler:
    """Always the same trigger (the baseline's reversed one, or the true one)."""
    return lambda n, g: trigger.to(g.device).expand(n, -1)


@torch.no_grad()
def trigger_asr(model: nn.Module, data: ImageSet, triggers: Sampler, target: int, *,
                batch_size: int = 500, seed: int = 0) -> float:
    """The share of `data`'s images not of class `target` that the model sends to `target`
    when each gets its own sampled trigger, at one random place per batch."""
    device = model_device(model)
    keep = data.subset((data.labels != target).nonzero().flatten()).to(device)
    if not len(keep):
        raise ParameterError(f"data has no image outside target={target}")
    gen = torch.Generator(device).manual_seed(seed)
    host = torch.Generator().manual_seed(seed)
    mean, std = torch.tensor(keep.mean, device=device), torch.tensor(keep.std, device=device)
    h, w = keep.images.shape[2:]
    hits = torch.zeros((), device=device)
    with evaluating(model):
        for start in range(0, len(keep), batch_size):
            x = keep.normalize(keep.images[start:start + batch_size])
            row = int(torch.randint(h - SIZE + 1, (1,), generator=host))
            col = int(torch.randint(w - SIZE + 1, (1,), generator=host))
            xs = paste(x, triggers(len(x), gen), row, col, mean, std)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                hits += (model(xs).argmax(1) == target).sum()
    return hits.item() / len(keep)


# --------------------------------------------------------------------------------------------
# The defense: retraining with triggers, labels kept

RETRAIN = Recipe(epochs=10, batch_size=128, lr=1e-3, momentum=0.9, weight_decay=0,
                 schedule="constant", augment=False)


def retrain(model: nn.Module, data: ImageSet, triggers: Sampler | None, recipe: Recipe = RETRAIN,
            *, rate: float = 0.01, seed: int = 0, progress: bool = False) -> nn.Module:
    """A copy of `model` fine-tuned on the defender's images `data` (the code's recipe, BN
    updating), each image of each batch getting, with probability `rate`, a trigger from
    `triggers` at one place drawn for the batch, its label kept. `triggers=None` is the
    "clean fine-tune only" control."""
    check_range("rate", rate, low=0, high=1)
    device = model_device(model)
    tuned = copy.deepcopy(model)
    train(tuned, data, recipe, seed=seed, device=device, progress=progress, desc="retrain",
          per_batch=None if triggers is None else stamping(triggers, rate, data.mean, data.std))
    return tuned.eval()


# --------------------------------------------------------------------------------------------
# The baseline: one trigger reversed by pixel-space SGD, several restarts at once

@dataclass(frozen=True)
class ReverseSettings:
    """The authors' notebook: SGD lr 0.1, momentum 0.9 on the trigger in normalised space,
    batches of 100 stamped images labelled as the target, 5 epochs of 10 batches each, the
    trigger clipped to [0, 1] pixels after every epoch; 10 random restarts ("rounds")."""
    rounds: int = 10
    epochs: int = 5
    batches: int = 10
    batch_size: int = 100
    lr: float = 0.1
    momentum: float = 0.9

    def __post_init__(self):
        for name in ("rounds", "epochs", "batches", "batch_size"):
            check_range(name, getattr(self, name), low=1, integer=True)
        check_range("lr", self.lr, low=0, low_open=True)
        check_range("momentum", self.momentum, low=0, high=1, high_open=True)


def reverse(model: nn.Module, data: ImageSet, target: int,
            settings: ReverseSettings = ReverseSettings(), *, seed: int = 0) -> torch.Tensor:
    """One reversed 3×3 trigger per round (rounds × 9C, in [0, 1]); every round starts from its
    own uniform random trigger and sees its own batches, all rounds in one model forward."""
    s = settings
    if len(data) < s.batch_size:
        raise ParameterError(f"data has {len(data)} images; the reversal needs at least "
                             f"batch_size={s.batch_size}")
    device = model_device(model)
    cuda = device.type == "cuda"
    images = data.to(device)
    c, h, w = images.images.shape[1:]
    mean, std = torch.tensor(data.mean, device=device), torch.tensor(data.std, device=device)
    m9, s9 = mean.repeat_interleave(SIZE * SIZE), std.repeat_interleave(SIZE * SIZE)
    gen = torch.Generator().manual_seed(seed)
    start = torch.rand(s.rounds, SIZE * SIZE * c, generator=gen).to(device)
    u = ((start - m9) / s9).requires_grad_()             # the trigger, normalised
    optimizer = torch.optim.SGD([u], lr=s.lr, momentum=s.momentum)
    labels = torch.full((s.rounds * s.batch_size,), target, device=device)
    with evaluating(model):
        for _ in range(s.epochs):
            for _ in range(s.batches):
                pick = torch.stack([torch.randperm(len(data), generator=gen)[:s.batch_size]
                                    for _ in range(s.rounds)]).flatten().to(device)
                row = int(torch.randint(h - SIZE + 1, (1,), generator=gen))
                col = int(torch.randint(w - SIZE + 1, (1,), generator=gen))
                x = images.normalize(images.images[pick])
                xs = paste(x, (u * s9 + m9).repeat_interleave(s.batch_size, 0), row, col,
                           mean, std)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                    logits = model(xs)
                loss = F.cross_entropy(logits.float(), labels, reduction="none")
                loss = loss.view(s.rounds, s.batch_size).mean(1).sum()   # each round its own mean
                u.grad, = torch.autograd.grad(loss, [u])
                optimizer.step()
            with torch.no_grad():
                u.copy_(((u * s9 + m9).clamp(0, 1) - m9) / s9)
    return (u * s9 + m9).detach().clamp(0, 1)


# --------------------------------------------------------------------------------------------
# Target-class detection

def detect(model: nn.Module, data: ImageSet, check: ImageSet, settings: Settings, *,
           classes: Sequence[int] | None = None, seed: int = 0) -> dict[int, float]:
    """Per candidate class, the ASR on `check` of triggers from a generator searched for that
    class on `data` (one β, the code uses 0.9): only a backdoor's target should score high."""
    if len(settings.betas) != 1:
        raise ParameterError(f"betas={settings.betas} is not allowed for detection; give one β")
    classes = range(len(data.classes)) if classes is None else classes
    found = {}
    for k in classes:
        g = search(model, data, k, settings, seed=seed).generators[settings.betas[0]]
        found[k] = trigger_asr(model, check, from_generator(g), k, seed=seed)
    return found


def entropy(samples: torch.Tensor) -> float:
    """The Kozachenko–Leonenko nearest-neighbour estimate of the differential entropy (nats) of
    the distribution `samples` (N × D) come from: what MESA's generators maximise. A distribution
    collapsed onto a few points scores far lower than one spread over a region, however far
    apart those points are (which a per-value standard deviation would reward)."""
    x = samples.detach().double().cpu()
    n, d = x.shape
    if n < 2:
        raise ParameterError(f"samples has {n} row(s); the estimate needs at least 2")
    distances = torch.cdist(x, x)
    distances.fill_diagonal_(float("inf"))
    nearest = distances.min(1).values.clamp(min=1e-12)       # identical samples: a tiny ball
    log_ball = d / 2 * math.log(math.pi) - math.lgamma(d / 2 + 1)
    euler = 0.5772156649015329
    return (d * nearest.log().mean() + math.log(n - 1) + log_ball + euler).item()
