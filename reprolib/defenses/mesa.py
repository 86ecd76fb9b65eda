"""MESA, max-entropy staircase approximation (Qiao, Yang, Li, NeurIPS 2019), as the official code
(`superrrpotato/Defending-Neural-Backdoors-via-Generative-Distribution-Modeling`) builds it.

A generator G maps noise z ~ U[0, 1)^64 to 3×3 triggers; it is trained to make the backdoored
model answer the target class (a hinge at β on the target's softmax) while keeping the entropy
of G(z) high. For a deterministic G that entropy equals the mutual information I(z; G(z)), which
MINE estimates with a statistics network T through the Donsker–Varadhan bound

    I(z; y) ≥ E_joint[T(z, y)] − log E_marginal[e^{T(z', y)}]

(z' an independent noise batch paired with the same triggers). T ascends the bound with MINE's
bias-corrected gradient: the denominator of ∇ log E[e^T] is a moving average of E[e^T].

Pieces so far: the generator, the MINE estimator, stamping, and the search that trains one
generator per β on the same batches.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ParameterError, check_range
from ..data import ImageSet
from ..train import evaluating

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


SIZE = 3            # the trigger is SIZE × SIZE pixels


def stamp(x: torch.Tensor, triggers: torch.Tensor, row: int, col: int, mean: torch.Tensor,
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


@dataclass(frozen=True)
class Settings:
    """The code's search: α = 0.1, β ∈ {0.9, 0.8, 0.5}, 10 epochs of batch 128 (drop_last),
    Adam lr 2e-4 for G and T, N(0, 0.1²) noise on the triggers of the classification term."""
    betas: tuple[float, ...] = (0.9, 0.8, 0.5)
    alpha: float = 0.1
    epochs: int = 10
    batch_size: int = 128
    lr: float = 2e-4
    noise: float = 0.1
    hidden: int = 512

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
    device = next(model.parameters()).device
    c, h, w = data.images.shape[1:]
    if len(data) < s.batch_size:
        raise ParameterError(f"data has {len(data)} images; the search needs at least "
                             f"batch_size={s.batch_size}")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)                   # batch order and location
    draw = torch.Generator(device).manual_seed(seed)            # noise, drawn where it is used
    mean = torch.tensor(data.mean, device=device)
    std = torch.tensor(data.std, device=device)
    images = data.to(device)
    gs = {b: Generator(s.hidden, out=SIZE * SIZE * c).to(device) for b in s.betas}
    mines = {b: Mine(Statistics(NOISE, SIZE * SIZE * c, s.hidden).to(device), lr=s.lr)
             for b in s.betas}
    opts = {b: torch.optim.Adam(g.parameters(), lr=s.lr, betas=(0.5, 0.999)) for b, g in gs.items()}
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
                xs = stamp(x.repeat(len(s.betas), 1, 1, 1), noisy, row, col, mean, std)
                p = model(xs).float().softmax(1)[:, target].view(len(s.betas), s.batch_size)
                loss = 0
                for i, b in enumerate(s.betas):
                    hinge = p[i].clamp(max=b).mean()
                    mi = dv_bound(mines[b].t, z[b][0], z[b][1], triggers[b])
                    loss = loss - hinge - s.alpha * mi
                    sums[b][0] += hinge.item()
                    sums[b][1] += mi.item()
                for o in opts.values():
                    o.zero_grad(set_to_none=True)
                loss.backward()
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
    device = next(generator.parameters()).device
    z = torch.rand(n, NOISE, generator=torch.Generator().manual_seed(seed)).to(device)
    return generator.eval()(z)
