"""One trainer for every model in the book, and evaluation.

The data stay on the device (`data.Batches`). The model runs in channels_last everywhere (on a
2-core CPU that alone makes the small CNN about 20 % faster) and under bf16 autocast on CUDA; on
the CPU the arithmetic is plain fp32. Losses and accuracies are summed on the device and read once
per epoch, so the loop never waits on the GPU mid-epoch.
"""
from __future__ import annotations

import copy
import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from . import metrics, models
from .config import SCHEDULES, ParameterError, Recipe, check_choice, check_range
from .devices import name as device_name, resolve as resolve_device
from .data import Batches, ImageSet, crop_rotate_flip
from .models import model_device
from .provenance import code_digest
from .zoo import Zoo


def lr_factor(schedule: str, step: int, total: int, drops: tuple[float, ...] = ()) -> float:
    """The learning rate at `step` of `total`, as a fraction of the recipe's peak lr.

    cosine: from 1 down to 0 along a half cosine. onecycle: a triangle, rising linearly over the
    first quarter of the steps, then falling linearly to 0. constant: 1 throughout. warmup:
    rising linearly over the first tenth of the steps, then 1. multistep: 1, divided by ten at
    each of `drops` (fractions of the run)."""
    check_choice("schedule", schedule, SCHEDULES)
    if schedule == "constant":
        return 1.0
    if schedule == "multistep":
        return 0.1 ** sum(step >= d * total for d in drops)
    if schedule == "warmup":
        return min(1.0, (step + 1) / (0.1 * total))
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * step / total))
    return min((step + 1) / (0.25 * total), (total - step) / (0.75 * total))


# A step that rewrites every normalised batch before the update (an attack that works during
# training, MESA's retraining): (inputs, labels, sample indices, generator) -> (inputs, labels).
PerBatch = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Generator],
                    tuple[torch.Tensor, torch.Tensor]]


@dataclass
class History:
    """Per epoch: mean training loss, accuracy (on the augmented batches) and wall time."""
    loss: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)


def train(model: nn.Module, data: ImageSet, recipe: Recipe, *, seed: int = 0,
          device: str | torch.device = "auto", compile: bool = False, progress: bool = True,
          desc: str = "train", per_batch: PerBatch | None = None,
          frozen_bn: bool = False,
          loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> History:
    """Train `model` in place on `data` with `recipe`; the batch order and augmentation are
    drawn from `seed` (the model's initial weights come from `models.build(..., seed=)`).
    `per_batch(x, y, indices, generator)`, when given, rewrites every normalised batch before
    the step (an attack that works during training); its generator is seeded from `seed` too.
    `frozen_bn`: BatchNorm layers stay in eval mode (running statistics fixed; γ, β still learn).
    `loss_fn(logits, labels)`: the objective, instead of the recipe's cross-entropy."""
    device = resolve_device(device)
    cuda = device.type == "cuda"
    data = data.to(device)
    model.to(device, memory_format=torch.channels_last)
    if cuda:
        torch.backends.cudnn.benchmark = True
    net = torch.compile(model, mode="reduce-overhead" if cuda else "default") if compile else model

    batches = Batches(data, recipe.batch_size, shuffle=True, augment=recipe.augment, seed=seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                                weight_decay=recipe.weight_decay, nesterov=recipe.nesterov)
    total = recipe.epochs * len(batches)
    drops = tuple(m / recipe.epochs for m in recipe.milestones)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(recipe.schedule, min(step, total - 1), total, drops))

    generator = torch.Generator(device).manual_seed(seed)
    history = History()
    bar = tqdm(total=total, desc=desc, unit="step", disable=not progress, mininterval=2,
               dynamic_ncols=True)
    for epoch in range(recipe.epochs):
        start = time.perf_counter()
        model.train()
        if frozen_bn:
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        for x, y, idx in batches:
            if per_batch is not None:
                x, y = per_batch(x, y, idx, generator)
            if recipe.post_augment:
                x = crop_rotate_flip(x, generator)
            x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                logits = net(x)
                loss = (loss_fn(logits.float(), y) if loss_fn else
                        F.cross_entropy(logits, y, label_smoothing=recipe.label_smoothing))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            loss_sum += loss.detach().float() * len(y)
            correct += (logits.argmax(1) == y).sum()
            bar.update()
        history.loss.append(loss_sum.item() / len(data))
        if not math.isfinite(history.loss[-1]):
            bar.close()
            raise FloatingPointError(f"{desc}: the training loss became {history.loss[-1]} in "
                                     f"epoch {epoch + 1} of {recipe.epochs}; the model diverged "
                                     f"at lr {recipe.lr:g}")
        history.accuracy.append(correct.item() / len(data))
        history.epoch_seconds.append(time.perf_counter() - start)
        bar.set_postfix(epoch=epoch + 1, loss=f"{history.loss[-1]:.3f}",
                        acc=f"{history.accuracy[-1]:.3f}")
    bar.close()
    return history


@contextmanager
def evaluating(model: nn.Module):
    """`model` in eval mode (BatchNorm reads its running statistics and never updates them),
    put back in the mode it was in afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@torch.no_grad()
def predict(model: nn.Module, data: ImageSet, batch_size: int = 1000) -> torch.Tensor:
    """Predicted classes of every image in `data`, in order (the model in eval mode), in fp32
    on every device, as BackdoorBench evaluates: bf16 would move borderline predictions."""
    device = model_device(model)
    preds = []
    with evaluating(model):
        for x, _, _ in Batches(data.to(device), batch_size):
            preds.append(model(x.contiguous(memory_format=torch.channels_last)).argmax(1))
    return torch.cat(preds, dim=0) if preds else torch.empty(0, dtype=torch.long, device=device)


def evaluate(model: nn.Module, test: ImageSet, backdoor: ImageSet | None = None,
             target: int | torch.Tensor | None = None) -> dict[str, float]:
    """CA on the clean `test` set; with a triggered `backdoor` set (true labels) and the attack's
    `target` (a class, or one per backdoor image), also ASR and RA."""
    result = {"ca": metrics.ca(predict(model, test), test.labels.to(model_device(model)))}
    if backdoor is not None:
        if target is None:
            raise ParameterError("target=None: the attack's target class is required "
                                 "with a backdoor set")
        pred, labels = predict(model, backdoor), backdoor.labels.to(model_device(model))
        result["asr"] = metrics.asr(pred, labels, target)
        result["ra"] = metrics.ra(pred, labels, target)
    return result


def _module_of(f: Callable) -> str:
    """The module that defines the function or callable object `f`."""
    return getattr(f, "__module__", None) or type(f).__module__


def trained(model_name: str, data: ImageSet, recipe: Recipe, *, seed: int = 0,
            device: str | torch.device = "auto", about: dict | None = None,
            score: Callable[[nn.Module], dict] | None = None, zoo: Zoo | None = None,
            progress: bool = True, desc: str = "train",
            per_batch: PerBatch | None = None) -> tuple[nn.Module, dict]:
    """A `model_name` trained on `data` by `recipe` from `seed`, taken from the zoo when it holds
    one. The zoo key covers the exact images and labels (their digest), the model, recipe and
    seed, and `about` (what the digest cannot tell: the dataset's name, the settings of an
    attack's `per_batch` step, ...), and the code: this trainer's and that of the module
    defining `per_batch` (`code_digest`). `score(model)` gives the metrics stored in the card.
    Returns (model, card)."""
    device = resolve_device(device)
    code = [code_digest(__name__)] + ([code_digest(_module_of(per_batch))] if per_batch else [])
    spec = {"model": model_name, "data": data.digest(), "classes": len(data.classes),
            "in_channels": data.images.shape[1], "recipe": asdict(recipe), "seed": seed,
            "about": about or {}, "code": code}

    def build():
        return models.build(model_name, len(data.classes), data.images.shape[1], seed=seed)

    def fit():
        model = build()
        history = train(model, data, recipe, seed=seed, device=device, progress=progress,
                        desc=desc, per_batch=per_batch)
        return model.state_dict(), {"history": asdict(history), "device": device_name(device),
                                    "dataset_source": data.source,
                                    "metrics": score(model) if score else {}}

    card, weights = (zoo or Zoo()).fetch(spec, fit)
    model = build()
    model.load_state_dict(weights)
    # in the layout training leaves it in, so that a model read from the zoo computes exactly
    # what the one just trained does
    return model.to(device, memory_format=torch.channels_last), card


def linear_transfer(model: nn.Module, data: ImageSet, *, epochs: int = 40, lr: float = 0.01,
                    batch_size: int = 128, weight_decay: float = 5e-4, seed: int = 0,
                    reset: bool = True) -> nn.Module:
    """A copy of `model` with only its `head` trained on `data` (SGD, momentum 0.9, cosine): the
    features are frozen and computed once, in eval mode and without augmentation, as in the
    transfer-learning setting of the poisoning benchmark. `reset`: the head starts from a fresh
    initialisation drawn from `seed`; otherwise it is fine-tuned from `model`'s."""
    check_range("epochs", epochs, low=1, integer=True)
    check_range("lr", lr, low=0, low_open=True)
    check_range("batch_size", batch_size, low=1, integer=True)
    net = copy.deepcopy(model).eval()
    device = model_device(net)
    with torch.no_grad():
        feats = torch.cat([net.features(x).float() for x, _, _ in Batches(data.to(device), 1000)])
    labels = data.labels.to(device)
    if reset:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net.head.reset_parameters()
    head = net.head
    optimizer = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    steps = epochs * math.ceil(len(labels) / batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor("cosine", min(step, steps - 1), steps))
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(labels), generator=g).to(device)
        for idx in order.split(batch_size):
            loss = F.cross_entropy(head(feats[idx]), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return net


def throughput(model_name: str, classes: int, channels: int, *, device: str | torch.device = "auto",
               batch_size: int = 128, seconds: float = 3.0) -> float:
    """Training images per second of `model_name` on `device`: SGD steps on a random batch, as
    `train` runs them (channels_last, bf16 autocast on CUDA), one warm-up step and then as many
    as fit in `seconds` (at least two). What `repro plan` divides a job's image passes by."""
    device = resolve_device(device)
    model = models.build(model_name, classes, channels).to(device,
                                                           memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch_size, channels, 32, 32, device=device).contiguous(
        memory_format=torch.channels_last)
    y = torch.randint(classes, (batch_size,), device=device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = F.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def done():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    step()
    start = done()
    n = 0
    while n < 2 or done() - start < seconds:
        step()
        n += 1
    return n * batch_size / (done() - start)
