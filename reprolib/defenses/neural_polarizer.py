"""Neural Polarizer (NPD; Zhu, Wei, Zha, Wu, NeurIPS 2023), as BackdoorBench's `defense/npd.py`
implements it.

The backdoored model is frozen and one learnable linear layer, the polarizer (a 1×1 conv,
identity-initialised, then BatchNorm), is inserted at the input of one late conv layer. It is
trained on a little clean data by a bi-level objective: an inner targeted perturbation (L2 ball in
[0, 1] pixel space) stands in for the unknown trigger, and the outer step teaches the polarizer to
keep clean predictions while undoing the perturbation's pull towards the estimated target.

Insertion points (`INSERT_AT`): PreAct-ResNet18 and ResNet-18 at `layer4.1.conv1`, as in the
reference code (on PreAct-ResNet18 that input is relu(bn1(x)) of the last block, so the polarizer
filters the residual branch only and the identity shortcut passes layer4.0's output unfiltered);
for our small CNN at `conv4`, its last conv layer, which sees the whole feature path.

BatchNorm, as in the reference: during the warm-up the polarizer's BN is in train mode and its
running statistics become the clean features' statistics; afterwards it stays in eval mode, so
from then on the polarizer is "identity conv + per-channel standardisation" plus what it learns.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from ..config import ParameterError, check_range
from ..data import ImageSet
from ..models import architecture, model_device

INSERT_AT = {"PreActResNet18": "layer4.1.conv1", "ResNet18": "layer4.1.conv1",
             "SmallCNN": "conv4"}


class Polarizer(nn.Module):
    """A 1×1 conv (no bias) initialised to the identity, then BatchNorm."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        with torch.no_grad():
            self.conv.weight.copy_(torch.eye(channels).view(channels, channels, 1, 1))

    def forward(self, x):
        return self.bn(self.conv(x))


class Polarized(nn.Module):
    """A frozen copy of `model` with a polarizer feeding the layer `at`. The backbone always runs
    in eval mode; `train()` and `eval()` switch the polarizer only."""

    def __init__(self, model: nn.Module, at: str | None = None):
        super().__init__()
        at = at or INSERT_AT.get(architecture(model))
        if at is None:
            raise ParameterError(f"model={type(model).__name__} has no default insertion point; "
                                 f"pass `at`, a conv layer name (defaults: {INSERT_AT})")
        layers = dict(model.named_modules())
        if not isinstance(layers.get(at), nn.Conv2d):
            raise ParameterError(f"at={at!r} is not a conv layer of {type(model).__name__}")
        self.at = at
        self.backbone = copy.deepcopy(model).eval().requires_grad_(False)
        target = dict(self.backbone.named_modules())[at]
        device = model_device(model)
        self.polarizer = Polarizer(target.in_channels).to(device, memory_format=torch.channels_last)
        target.register_forward_pre_hook(lambda _, args: (self.polarizer(args[0]),))

    def train(self, mode: bool = True):
        self.training = mode
        self.polarizer.train(mode)
        self.backbone.eval()
        return self

    def forward(self, x):
        return self.backbone(x)


@dataclass(frozen=True)
class Settings:
    """BackdoorBench's CIFAR-10 configuration."""
    warm_epochs: int = 5
    warm_lr: float = 1e-4
    epochs: int = 50
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    radius: float = 3.0          # L2 radius of the inner perturbation, [0, 1] pixel space
    step: float = 0.1            # sign-step size per pixel
    inner_steps: int = 2
    early_exit: float = 0.6      # stop the inner loop once this share of the batch hits its target
    weights: tuple[float, float, float, float] = (1.0, 0.4, 0.4, 0.4)

    def __post_init__(self):
        for name in ("warm_epochs", "epochs", "inner_steps"):
            check_range(name, getattr(self, name), low=0, integer=True)
        check_range("batch_size", self.batch_size, low=1, integer=True)
        for name in ("warm_lr", "lr", "radius", "step"):
            check_range(name, getattr(self, name), low=0, low_open=True)
        check_range("early_exit", self.early_exit, low=0, high=1)
        if len(self.weights) != 4:
            raise ParameterError(f"weights={self.weights} must have 4 entries (λ1..λ4)")


def estimated_target(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per sample, the highest-scoring class other than the label: NPD's guess of the target."""
    return logits.detach().scatter(1, labels[:, None], float("-inf")).argmax(1)


def project_l2(delta: torch.Tensor, radius: float) -> torch.Tensor:
    """`delta` scaled back into the L2 ball of `radius`, per sample."""
    norms = delta.flatten(1).norm(dim=1).view(-1, *[1] * (delta.dim() - 1))
    return delta * (radius / norms.clamp(min=radius))


def targeted_perturbation(net: nn.Module, x: torch.Tensor, target: torch.Tensor, normalize,
                          s: Settings) -> torch.Tensor:
    """The inner step: δ with ‖δ‖₂ ≤ radius and x + δ ∈ [0, 1], from sign steps that lower the
    cross-entropy towards `target`; stops early once the batch mostly hits its targets."""
    delta = torch.zeros_like(x)
    for _ in range(s.inner_steps):
        delta.requires_grad_(True)
        logits = net(normalize(x + delta))
        if (logits.argmax(1) == target).float().mean() > s.early_exit:
            break
        loss = F.cross_entropy(logits.float(), target, reduction="none").clamp(-80, 80).mean()
        grad, = torch.autograd.grad(loss, delta)
        delta = project_l2(delta.detach() - s.step * grad.sign(), s.radius)
        delta = (x + delta).clamp(0, 1) - x
    return delta.detach()


def outer_loss(net: nn.Module, x: torch.Tensor, delta: torch.Tensor, y: torch.Tensor,
               predicted: torch.Tensor, target: torch.Tensor, normalize, s: Settings):
    """λ1·CE(f(x), y) + λ2·CE(f(x+δ), f's clean prediction) + λ3·E[−log(1 − p_ŷ2(x+δ))]
    + λ4·E[−log(1 − p_target(x+δ))], ŷ2 the most probable class on x+δ that is not y. The
    reference computes −log(1.0001 − p + 1e-12), which caps a term near 9.2; so does this."""
    clean = net(normalize(x)).float()
    perturbed = net(normalize(x + delta)).float()
    p = perturbed.softmax(1)
    top2 = perturbed.topk(2, dim=1).indices
    second = torch.where(top2[:, 0] != y, top2[:, 0], top2[:, 1])
    away = lambda k: -torch.log(1.0001 - p.gather(1, k[:, None]) + 1e-12).mean()  # noqa: E731
    l1, l2, l3, l4 = s.weights
    return (l1 * F.cross_entropy(clean, y) + l2 * F.cross_entropy(perturbed, predicted)
            + l3 * away(second) + l4 * away(target))


@dataclass
class Result:
    model: Polarized
    trainable: int                # parameters trained
    seconds: float
    loss: list[float] = field(default_factory=list)   # mean outer loss per main epoch


def npd(model: nn.Module, clean: ImageSet, settings: Settings = Settings(), *, seed: int = 0,
        at: str | None = None, progress: bool = True) -> Result:
    """Train a polarizer for the frozen `model` on the defender's `clean` images."""
    s = settings
    device = model_device(model)
    cuda = device.type == "cuda"
    net = Polarized(model, at)
    images, labels = clean.images.to(device), clean.labels.to(device)
    mean = torch.tensor(clean.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(clean.std, device=device).view(1, -1, 1, 1)

    def normalize(x):
        return ((x - mean) / std).contiguous(memory_format=torch.channels_last)

    def batches(generator):
        order = torch.randperm(len(images), generator=generator).to(device)
        for idx in order.split(s.batch_size):
            yield images[idx].float() / 255, labels[idx]

    params = list(net.polarizer.parameters())
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    total = (s.warm_epochs + s.epochs) * -(-len(images) // s.batch_size)
    bar = tqdm(total=total, desc="npd", unit="step", disable=not progress, mininterval=2)

    net.train()            # warm-up: the polarizer's BN learns the clean feature statistics
    warm = torch.optim.SGD(params, lr=s.warm_lr)
    for _ in range(s.warm_epochs):
        for x, y in batches(gen):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                loss = F.cross_entropy(net(normalize(x)).float(), y)
            warm.zero_grad(set_to_none=True)
            loss.backward()
            warm.step()
            bar.update()

    net.eval()             # from here on its BN statistics stay fixed
    optimizer = torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)
    history = []
    for _ in range(s.epochs):
        total_loss, seen = torch.zeros((), device=device), 0
        for x, y in batches(gen):      # in fp32, as the reference runs its attack and loss
            with torch.no_grad():
                logits = net(normalize(x))
            predicted, target = logits.argmax(1), estimated_target(logits, y)
            delta = targeted_perturbation(net, x, target, normalize, s)
            loss = outer_loss(net, x, delta, y, predicted, target, normalize, s)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += loss.detach() * len(y)
            seen += len(y)
            bar.update()
        history.append(total_loss.item() / seen)
    bar.close()
    return Result(net, sum(p.numel() for p in params), time.perf_counter() - start, history)
