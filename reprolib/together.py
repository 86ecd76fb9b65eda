"""Several trainings at once on one device, each exactly what it would be alone.

One batch-128 training of a CIFAR network leaves most of a GPU idle: the step is a few hundred
small kernels, and launching them costs more than running them. N models of one architecture
and recipe are trained here as one stacked network: their parameters and BatchNorm buffers are
stacked along a new first dimension (`torch.func.stack_module_state`) and the forward pass is
vmapped over it, so each kernel is launched once for all N (a vmapped convolution is one
grouped convolution). Everything else stays per model: its training set, its batch order and
augmentation draws (its own `Batches` and generator, from its own seed), its attack's per-batch
step, its BatchNorm statistics and its loss, whose gradient reaches its parameters alone. SGD
is elementwise, so one optimizer over the stacked parameters makes the N updates `train.train`
would make. Each model thus comes out as it does alone, up to the order of float additions.

`victims` trains the missing victims of a chapter's run this way before its notebook executes,
grouped by architecture, recipe and training-set size, and stores each in the zoo under its
own key, so the notebook reads them as if it had trained them one by one.
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


def train_together(nets: list[nn.Module], sets: list[ImageSet], recipe: Recipe, *,
                   seeds: list[int], per_batch: list[PerBatch | None] | None = None,
                   device: str | torch.device = "auto", compile: bool = False,
                   progress: bool = True, desc: str = "train together") -> list[History]:
    """Train each of `nets` in place on its `sets[i]` by `recipe` from `seeds[i]`, with
    `per_batch[i]` (or none), all at once: the N models `train.train(nets[i], sets[i], recipe,
    seed=seeds[i], per_batch=per_batch[i])` would give. The nets must share an architecture and
    the sets a size (each step takes one batch of the same size from every set). `compile`:
    the stacked network goes through `torch.compile`, which fuses its small kernels (half a
    minute to compile a small CNN on a CPU, whose steps it then runs about twice as fast)."""
    n = len(nets)
    check_range("nets", n, low=1, integer=True)
    per_batch = per_batch or [None] * n
    for name, given in (("sets", sets), ("seeds", seeds), ("per_batch", per_batch)):
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
    device = devices.resolve(device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    for net in nets:
        net.to(device, memory_format=torch.channels_last).train()
    params, buffers = stack_module_state(nets)
    # vmap runs the 1×1 average pooling's in-place view model by model (PyTorch warns of it):
    # N tiny kernels in a step of hundreds, no slower than the batched rule on the CPU
    warnings.filterwarnings("ignore", message=".*batching rule for aten::as_strided_")
    skeleton = copy.deepcopy(nets[0]).to("meta")

    def forward(p, b, x):
        return functional_call(skeleton, (p, b), (x,))

    stacked = torch.compile(vmap(forward)) if compile else vmap(forward)
    batches = [Batches(s.to(device), recipe.batch_size, shuffle=True, augment=recipe.augment,
                       seed=seed) for s, seed in zip(sets, seeds)]
    generators = [torch.Generator(device).manual_seed(seed) for seed in seeds]
    optimizer = torch.optim.SGD(list(params.values()), lr=recipe.lr, momentum=recipe.momentum,
                                weight_decay=recipe.weight_decay, nesterov=recipe.nesterov,
                                fused=cuda or None)
    total = recipe.epochs * len(batches[0])
    drops = tuple(m / recipe.epochs for m in recipe.milestones)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(recipe.schedule, min(step, total - 1), total, drops))

    histories = [History() for _ in nets]
    size = len(sets[0])
    bar = tqdm(total=total, desc=f"{desc} ({n})", unit="step", disable=not progress,
               mininterval=2, dynamic_ncols=True)
    for epoch in range(recipe.epochs):
        start = time.perf_counter()
        loss_sum = torch.zeros(n, device=device)
        correct = torch.zeros(n, device=device, dtype=torch.long)
        for step in zip(*batches):
            xs, ys = [], []
            for (x, y, idx), attack, g in zip(step, per_batch, generators):
                if attack is not None:
                    x, y = attack(x, y, idx, g)
                if recipe.post_augment:
                    x = crop_rotate_flip(x, g)
                xs.append(x)
                ys.append(y)
            x, y = torch.stack(xs), torch.stack(ys)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                logits = stacked(params, buffers, x)
                losses = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none",
                                         label_smoothing=recipe.label_smoothing
                                         ).view(n, -1).mean(1)
            optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()
            optimizer.step()
            schedule.step()
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
                                         f"{h.loss[-1]} in epoch {epoch + 1} of {recipe.epochs}; "
                                         f"it diverged at lr {recipe.lr:g}")
        bar.set_postfix(epoch=epoch + 1, loss=f"{loss_sum.mean().item() / size:.3f}")
    bar.close()
    with torch.no_grad():
        for i, net in enumerate(nets):
            net.load_state_dict({k: v[i] for k, v in {**params, **buffers}.items()})
    return histories


def groups(jobs: list[Job], most: int) -> list[list[tuple[Job, victims_module.Setting]]]:
    """The victim jobs among `jobs`, each with its `Setting`, in groups that can be trained
    together (one architecture, number of classes, recipe and training-set size), of at most
    `most`, in the order first asked for."""
    check_range("most", most, low=1, integer=True)
    by_kind: dict[str, list] = {}
    for job in jobs:
        if job.step.kind != "victim":
            continue
        s = victims_module.setting(**victims_module._data_args(job.args))
        kind = (f"{s.model_name} {len(s.train.classes)} {asdict(s.recipe)} {len(s.train)} "
                f"{s.train.images.shape[1:]}")
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
                nets, [s.train for _, s in group], group[0][1].recipe, seeds=seeds,
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
