"""Several trainings at once on one device, each exactly what it would be alone.

One batch-128 training of a CIFAR network leaves most of a GPU idle: the step is a few hundred
small kernels, and launching them costs more than running them. N models of one architecture
are trained here as one stacked network: their parameters and BatchNorm buffers are stacked
along a new first dimension (`torch.func.stack_module_state`) and the forward pass is vmapped
over it, so each kernel is launched once for all N (a vmapped convolution is one grouped
convolution). Everything else stays per model: its training set, its batch order and
augmentation draws (its own `Batches` and generator, from its own seed), its attack's per-batch
step, its learning rate and schedule, its BatchNorm statistics and its loss, whose gradient
reaches its parameters alone. SGD is elementwise, so one update of the stacked parameters, each
model's slices at its own rate (`StackedSGD`), makes the N updates `train.train` would make.
Each model thus comes out as it does alone, up to the order of float additions.

`victims` trains the missing victims of a chapter's run this way before its notebook executes,
in the groups that can share a stack (`groups`), and stores each in the zoo under its own key,
so the notebook reads them as if it had trained them one by one.
"""
from __future__ import annotations

import contextlib
import copy
import math
import time
import warnings
from dataclasses import asdict

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap
from tqdm import tqdm

from . import devices, victims as victims_module
from .config import ParameterError, Recipe, check_range
from .data import Batches, ImageSet, crop_rotate_flip
from .jobs import Job
from .train import History, PerBatch, lr_factor
from .zoo import Zoo, key as zoo_key


# vmap runs the 1×1 average pooling's in-place view model by model (PyTorch warns of it): N tiny
# kernels in a step of hundreds, no slower than the batched rule on the CPU
warnings.filterwarnings("ignore", message=".*batching rule for aten::as_strided_")

# What models trained together share; each has its own lr, schedule and augmentation.
SHARED = ("epochs", "batch_size", "momentum", "weight_decay", "nesterov", "label_smoothing")


def train_together(nets: list[nn.Module], sets: list[ImageSet], recipes: Recipe | list[Recipe],
                   *, seeds: list[int], per_batch: list[PerBatch | None] | None = None,
                   device: str | torch.device = "auto", compile: bool = False,
                   progress: bool = True, desc: str = "train together") -> list[History]:
    """Train each of `nets` in place on its `sets[i]` by `recipes[i]` (or one recipe for all)
    from `seeds[i]`, with `per_batch[i]` (or none), all at once: the N models
    `train.train(nets[i], sets[i], recipes[i], seed=seeds[i], per_batch=per_batch[i])` would
    give. The nets share an architecture, the sets a size (each step takes one batch of the same
    size from every set) and the recipes their `SHARED` fields. `compile`: the stacked network
    goes through `torch.compile`, which fuses its small kernels (half a minute to compile a
    small CNN on a CPU, whose steps it then runs about twice as fast)."""
    n = len(nets)
    check_range("nets", n, low=1, integer=True)
    per_batch = per_batch or [None] * n
    recipes = [recipes] * n if isinstance(recipes, Recipe) else list(recipes)
    for name, given in (("sets", sets), ("seeds", seeds), ("per_batch", per_batch),
                        ("recipes", recipes)):
        if len(given) != n:
            raise ParameterError(f"{name}: {len(given)} given for {n} nets; one per net")
    shapes = {tuple((k, tuple(v.shape)) for k, v in net.state_dict().items()) for net in nets}
    if len({type(net) for net in nets}) > 1 or len(shapes) > 1:
        raise ParameterError(f"nets: {sorted({type(x).__name__ for x in nets})} of "
                             f"{len(shapes)} shapes; trained together, nets share one "
                             f"architecture")
    if len({len(s) for s in sets}) > 1:
        raise ParameterError(f"sets: {sorted({len(s) for s in sets})} images; trained "
                             f"together, every set has the same size")
    differ = [f for f in SHARED if len({getattr(r, f) for r in recipes}) > 1]
    if differ:
        raise ParameterError(f"recipes: they differ in {', '.join(differ)}; trained together, "
                             f"models share their {', '.join(SHARED)}")
    shared = recipes[0]
    device = devices.resolve(device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    for net in nets:
        net.to(device, memory_format=torch.channels_last).train()
    params, buffers = stack_module_state(nets)
    skeleton = copy.deepcopy(nets[0]).to("meta")

    def forward(p, b, x):
        return functional_call(skeleton, (p, b), (x,))

    stacked = torch.compile(vmap(forward)) if compile else vmap(forward)
    batches = [Batches(s.to(device), shared.batch_size, shuffle=True, augment=r.augment,
                       seed=seed) for s, r, seed in zip(sets, recipes, seeds)]
    generators = [torch.Generator(device).manual_seed(seed) for seed in seeds]
    total = shared.epochs * len(batches[0])
    sgd = StackedSGD(list(params.values()), lrs(recipes, total), shared)

    histories = [History() for _ in nets]
    size = len(sets[0])
    bar = tqdm(total=total, desc=f"{desc} ({n})", unit="step", disable=not progress,
               mininterval=2, dynamic_ncols=True)
    for epoch in range(shared.epochs):
        start = time.perf_counter()
        loss_sum = torch.zeros(n, device=device)
        correct = torch.zeros(n, device=device, dtype=torch.long)
        for step in zip(*batches):
            xs, ys = [], []
            for (x, y, idx), attack, g, r in zip(step, per_batch, generators, recipes):
                if attack is not None:
                    x, y = attack(x, y, idx, g)
                if r.post_augment:
                    x = crop_rotate_flip(x, g)
                xs.append(x)
                ys.append(y)
            x, y = torch.stack(xs), torch.stack(ys)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                logits = stacked(params, buffers, x)
                losses = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none",
                                         label_smoothing=shared.label_smoothing
                                         ).view(n, -1).mean(1)
            sgd.zero_grad()
            losses.sum().backward()
            sgd.step()
            loss_sum += losses.detach().float() * y.shape[1]
            correct += (logits.argmax(2) == y).sum(1)
            bar.update()
        seconds = time.perf_counter() - start
        for i, (h, loss, right) in enumerate(zip(histories, loss_sum.tolist(), correct.tolist())):
            h.loss.append(loss / size)
            h.accuracy.append(right / size)
            h.epoch_seconds.append(seconds)
            if not math.isfinite(h.loss[-1]):
                bar.close()
                raise FloatingPointError(f"{desc}: the training loss of net {i} became "
                                         f"{h.loss[-1]} in epoch {epoch + 1} of {shared.epochs}; "
                                         f"it diverged at lr {recipes[i].lr:g}")
        bar.set_postfix(epoch=epoch + 1, loss=f"{loss_sum.mean().item() / size:.3f}")
    bar.close()
    with torch.no_grad():
        for i, net in enumerate(nets):
            net.load_state_dict({k: v[i] for k, v in {**params, **buffers}.items()})
    return histories


def lrs(recipes: list[Recipe], total: int) -> list[list[float]]:
    """Each model's learning rate at each of `total` steps, as `train.train`'s schedule sets
    it: one row per step."""
    return [[r.lr * lr_factor(r.schedule, step, total, tuple(m / r.epochs for m in r.milestones))
             for r in recipes] for step in range(total)]


class StackedSGD:
    """SGD over stacked parameters with a learning rate per model (`lrs`, a row per step): the
    update `torch.optim.SGD` makes (weight decay added to the gradient, then the momentum
    buffer, Nesterov's look-ahead if asked, then the step), slice by slice. A step whose rates
    are all equal is `torch.optim.SGD`'s own multi-tensor update; otherwise each parameter is
    scaled by its models' rates, read from the device."""

    def __init__(self, params: list[torch.Tensor], lrs: list[list[float]], recipe: Recipe):
        self.params, self.recipe, self.rates = params, recipe, lrs
        self.on_device = torch.tensor(lrs, dtype=params[0].dtype, device=params[0].device)
        self.buffers: list[torch.Tensor] | None = None
        self.steps = 0

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        r = self.recipe
        d = [p.grad for p in self.params]
        if r.weight_decay:
            d = torch._foreach_add(d, self.params, alpha=r.weight_decay)
        if r.momentum:
            if self.buffers is None:
                self.buffers = [g.clone() for g in d]
            else:
                torch._foreach_mul_(self.buffers, r.momentum)
                torch._foreach_add_(self.buffers, d)
            d = (torch._foreach_add(d, self.buffers, alpha=r.momentum) if r.nesterov
                 else self.buffers)
        rates = self.rates[self.steps]
        if len(set(rates)) == 1:
            torch._foreach_add_(self.params, d, alpha=-rates[0])
        else:
            lr = self.on_device[self.steps]
            torch._foreach_sub_(self.params, torch._foreach_mul(
                d, [lr.view(-1, *[1] * (p.dim() - 1)) for p in self.params]))
        self.steps += 1


def groups(jobs: list[Job], most: int) -> list[list[tuple[Job, victims_module.Setting]]]:
    """The victim jobs among `jobs`, each with its `Setting`, in groups that can be trained
    together (one architecture, number of classes, training-set size and the recipe's `SHARED`
    fields), of at most `most`, in the order first asked for."""
    check_range("most", most, low=1, integer=True)
    by_kind: dict[tuple, list] = {}
    for job in jobs:
        if job.step.kind != "victim":
            continue
        s = victims_module.setting(**victims_module._data_args(job.args))
        kind = (s.model_name, len(s.train.classes), len(s.train), tuple(s.train.images.shape[1:]),
                *(getattr(s.recipe, f) for f in SHARED))
        by_kind.setdefault(kind, []).append((job, s))
    return [same[i:i + most] for same in by_kind.values() for i in range(0, len(same), most)]


def victims(jobs: list[Job], *, most: int = 8, device: str | torch.device = "auto",
            compile: bool = False, zoo: Zoo | None = None, progress: bool = True) -> list[str]:
    """Train the victims among `jobs` that the zoo lacks, up to `most` at once (`groups`;
    `compile`: see `train_together`), and store each under its own key with the card
    `victims.trained_victim` would write (its wall time is the group's, shared out;
    `trained_together` says how many shared it). Returns the keys computed. A group of one is
    trained by `train_together` too."""
    zoo = zoo or Zoo()
    device = devices.resolve(device)
    missing = list({j.key: j for j in jobs if not j.cached(zoo)}.values())  # each key once
    computed = []
    for group in groups(missing, most):
        with contextlib.ExitStack() as claims:
            for job, _ in group:
                claims.enter_context(zoo.claim(job.key, "victim"))
            group = [(job, s) for job, s in group if not job.cached(zoo)]   # done meanwhile
            if not group:
                continue
            start = time.perf_counter()
            seeds = [job.args.get("seed", 0) for job, _ in group]
            nets = [s.skeleton(seed) for (_, s), seed in zip(group, seeds)]
            histories = train_together(
                nets, [s.train for _, s in group], [s.recipe for _, s in group], seeds=seeds,
                per_batch=[s.poisoned.per_batch if s.poisoned else None for _, s in group],
                device=device, compile=compile, progress=progress,
                desc=f"{len(group)} {group[0][1].model_name} victims")
            share = round((time.perf_counter() - start) / len(group), 2)
            for (job, s), net, history in zip(group, nets, histories):
                spec = job.step.spec(job.args)
                zoo.put(spec, net.state_dict(), {
                    "recipe": asdict(s.recipe), "history": asdict(history),
                    "dataset_source": s.train.source, "metrics": s.score(net.eval()),
                    "device": devices.name(device), "wall_time_s": share,
                    "trained_together": len(group)})
                computed.append(zoo_key(spec))
    return computed
