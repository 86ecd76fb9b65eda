"""MESA, max-entropy staircase approximation (Qiao, Yang, Li, NeurIPS 2019), as the official code
(`superrrpotato/Defending-Neural-Backdoors-via-Generative-Distribution-Modeling`) builds it.

A generator G maps noise z ~ U[0, 1)^64 to 3×3 triggers; it is trained to make the backdoored
model answer the target class (a hinge at β on the target's softmax) while keeping the entropy
of G(z) high. For a deterministic G that entropy equals the mutual information I(z; G(z)), which
MINE estimates with a statistics network T through the Donsker–Varadhan bound

    I(z; y) ≥ E_joint[T(z, y)] − log E_marginal[e^{T(z', y)}]

(z' an independent noise batch paired with the same triggers). T ascends the bound with MINE's
bias-corrected gradient: the denominator of ∇ log E[e^T] is a moving average of E[e^T].

Pieces so far: the generator and the MINE estimator.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ParameterError, check_range

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
