"""Expensive steps as jobs: computed once, kept in the zoo, run wherever the executor says.

A *step* is a function of plain arguments (numbers, strings, lists, dicts, dataclasses such as a
`Recipe`, a defense's `Settings` or an `Attack`) whose result is kept in the zoo under a key of
its kind, its code and its arguments: tensors as safetensors, the rest as JSON in the card.

    @step("npd-defense", read=rebuild, work=passes)
    def defended(victim: dict, defense: str, ...) -> Kept: ...

Calling `defended(...)` computes the result under the key's claim and stores it, or reads it back
when any process sharing the zoo folder computed it before; either way `read` turns what was kept
into the value, so a computed and a cached call give the same result. `defended.job(...)` is the
same call as a *job*; `ensure(jobs)` computes the missing ones through an executor, in this
process by default, or as Ray tasks (`REPRO_EXECUTOR=ray`, `RAY_ADDRESS`; see `RayExecutor`).

A chapter's jobs are found by calling its code (`declared`): while `declaring()`, a step call
records its job and, for a job not yet computed, returns a `Pending` stand-in instead of the
result. Code that only passes a stand-in along keeps running; the first use that needs the
value itself (a truth value, a number, iteration) stops the pass. So a chapter calls its steps
before it uses their results, and marks its independent parts as sections (`section`): then
one pass finds every job whose arguments are known.
`computed_by_rounds` computes what a pass found, all at once, and calls again until a pass
finds nothing missing: that pass's value is the result.

Arguments named in `NOT_KEYED` (where the work runs, whether it shows a bar) are not part of
the key. The key covers the step's code: the module that defines it and every module of the
package that module imports, transitively (`provenance.code_digest`), so that a changed
algorithm is never served an old result and no version is bumped by hand.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import inspect
import os
import sys
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from safetensors.torch import load as load_safetensors
from tqdm import tqdm

from . import config, data, devices
from .provenance import code_digest
from .zoo import Zoo, key as zoo_key

NOT_KEYED = ("device", "data_dir", "progress", "zoo")
EXECUTORS = ("local", "ray")
STEPS: dict[str, "Step"] = {}
COMPUTED: list[str] = []       # keys computed in this process, in order
_declaring: "Pass | None" = None    # the declaring pass under way, if any


@dataclass
class Kept:
    """What a step stores: tensors (safetensors) and a JSON-able record."""
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    record: dict = field(default_factory=dict)


def pack(value: Any) -> Kept:
    """`value` (a result: dataclasses, dicts, lists, tensors, models, numbers) as what a step
    keeps: every tensor and every model's state in `tensors` under its path, the rest as JSON
    that names them. `unpack` inverts it."""
    tensors: dict[str, torch.Tensor] = {}

    def encode(v, path):
        if isinstance(v, torch.nn.Module):
            tensors.update({f"{path}/{k}": t for k, t in v.state_dict().items()})
            return {"$module": path}
        if isinstance(v, torch.Tensor):
            tensors[path] = v
            return {"$tensor": path}
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {"$dataclass": f"{type(v).__module__}:{type(v).__qualname__}",
                    "fields": {f.name: encode(getattr(v, f.name), f"{path}.{f.name}")
                               for f in dataclasses.fields(v)}}
        if isinstance(v, dict):      # as pairs, so that a float or int key stays one
            return {"$dict": [[k, encode(x, f"{path}.{k}")] for k, x in v.items()]}
        if isinstance(v, (list, tuple)):
            return [encode(x, f"{path}[{i}]") for i, x in enumerate(v)]
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        raise TypeError(f"a step's result cannot hold a {type(v).__name__} (at {path or 'top'})")

    return Kept(tensors, {"value": encode(value, "")})


def unpack(kept: Kept, modules: dict | Callable | None = None) -> Any:
    """The value `pack` kept; each model is loaded into its skeleton: `modules[path]` ("" for
    a model returned alone, ".model" for a dataclass's `model` field), or `modules(path,
    state)` when `modules` is a function of the path and the kept state."""
    def decode(v):
        if isinstance(v, list):
            return [decode(x) for x in v]
        if not isinstance(v, dict):
            return v
        if "$tensor" in v:
            return kept.tensors[v["$tensor"]]
        if "$module" in v:
            path = v["$module"]
            state = {k[len(path) + 1:]: t for k, t in kept.tensors.items()
                     if k.startswith(path + "/")}
            if callable(modules):
                model = modules(path, state)
            elif path in (modules or {}):
                model = modules[path]
            else:
                raise KeyError(f"no skeleton given for the kept model at {path!r}")
            model.load_state_dict(state)
            return model
        if "$dict" in v:
            return {k: decode(x) for k, x in v["$dict"]}
        where, name = v["$dataclass"].split(":")
        if not where.startswith("reprolib."):
            raise ValueError(f"a kept result names {where}:{name}; only reprolib's dataclasses "
                             f"are rebuilt")
        cls = getattr(importlib.import_module(where), name)
        return cls(**{k: decode(x) for k, x in v["fields"].items()})

    return decode(kept.record["value"])


def canonical(value: Any) -> Any:
    """`value` as plain JSON data for a key: dataclasses by type and fields (an Attack by its
    `settings()`), tuples as lists, tensors by their digest, and a dict that names a dataset
    read from an image-folder copy also by that copy's pixels (`_copy_of`)."""
    if hasattr(value, "settings") and dataclasses.is_dataclass(value):
        return canonical(value.settings())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"type": type(value).__name__,
                **{f.name: canonical(getattr(value, f.name)) for f in dataclasses.fields(value)}}
    if isinstance(value, dict):
        plain = {str(k): canonical(v) for k, v in value.items() if k not in NOT_KEYED}
        copy = _copy_of(value)
        return {**plain, "dataset_copy": copy} if copy else plain
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, Pending):
        raise NotReady(f"an argument is the result of {value.job.describe()}, not computed yet")
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        return {"tensor": hashlib.sha256(t.numpy().tobytes()).hexdigest()[:16],
                "shape": list(t.shape), "dtype": str(t.dtype)}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"a step argument of type {type(value).__name__} cannot be part of a key")


def _copy_of(args: dict) -> str | None:
    """The pixels' checksum of the image-folder copy that the dataset named in `args` is read
    from (None for the official files): `data_dir` is not keyed, and two copies of CIFAR-10
    with different pixels must never share a key."""
    name = args.get("dataset")
    if not isinstance(name, str) or name not in data.DATASETS:
        return None
    return data.copy_checksum(name, args.get("data_dir"))


@dataclass(frozen=True)
class Job:
    """A step with its arguments."""
    step: "Step"
    args: dict

    @property
    def key(self) -> str:
        return zoo_key(self.step.spec(self.args))

    @property
    def needs(self) -> list["Job"]:
        return self.step.needs(self.args) if self.step.needs else []

    def cached(self, zoo: Zoo | None = None) -> bool:
        return (zoo or Zoo()).get(self.step.spec(self.args)) is not None

    def card(self, zoo: Zoo | None = None) -> dict | None:
        entry = (zoo or Zoo()).get(self.step.spec(self.args))
        return entry[0] if entry else None

    def work(self) -> float:
        """Image passes (forward and backward of one image) the job costs, roughly."""
        return self.step.work(self.args) if self.step.work else 0.0

    def describe(self) -> str:
        return self.step.describe(self.args) if self.step.describe else self.step.kind

    def __call__(self):
        return self.step(**self.args)


class Step:
    """A function whose results are kept in the zoo (see the module's docstring)."""

    def __init__(self, compute: Callable[..., Kept], kind: str,
                 read: Callable[[Kept, dict], Any] | None, work, describe, needs, known,
                 memo: int, check, gpu: float, signature: Callable | None):
        self.compute, self.kind, self.read = compute, kind, read
        self.work, self.describe, self.needs, self.gpu = work, describe, needs, gpu
        self.known, self.memo, self.check = known, memo, check
        self.recent: OrderedDict[str, Any] = OrderedDict()      # the last `memo` values read
        self.signature = inspect.signature(signature or compute)
        self.module = compute.__module__
        self.__doc__ = compute.__doc__

    def spec(self, args: dict) -> dict:
        """What the key covers: the kind, the digest of its code (`code_digest`) and every
        argument, defaults filled in (so that leaving one out and giving its default are the
        same job)."""
        try:
            bound = self.signature.bind(**args)
        except TypeError as err:
            raise config.ParameterError(f"{self.kind}: {err}") from None
        bound.apply_defaults()
        return {"job": self.kind, "code": code_digest(self.module),
                "args": canonical(bound.arguments)}

    def job(self, **args) -> Job:
        return Job(self, args)

    def __call__(self, **args):
        spec = self.spec(args)              # while declaring, NotReady if an argument is pending
        k = f"{Zoo().root}/{zoo_key(spec)}"   # a value read from this zoo
        dry = _declaring is not None and _declaring.dry
        if _declaring is not None:
            _declaring.jobs.append(self.job(**args))
        if k in self.recent and not dry:     # read before, its arguments checked then
            self.recent.move_to_end(k)
            return self.recent[k]
        if self.check:
            self.check(args)
        if _declaring is None:
            kept = self.keep(**args)
        else:
            kept = None if dry else self._kept(Zoo().get(spec))
            if kept is None:
                _declaring.missing.append(_declaring.jobs[-1])
                return Pending(_declaring.jobs[-1])
        value = self.read(kept, args) if self.read else kept
        if self.memo:
            self.recent[k] = value
            while len(self.recent) > self.memo:
                self.recent.popitem(last=False)
        return value

    def keep(self, **args) -> Kept:
        """What the step keeps for `args`, as read from the zoo (`Zoo.fetch`): computed first,
        under the key's claim, if the zoo does not hold it."""
        def compute():
            made = self.compute(**args)
            return made.tensors, {**made.record, "device": _device_of(args)}
        spec = self.spec(args)
        card, tensors = Zoo().fetch(spec, compute)
        if not card.pop("cached"):
            COMPUTED.append(card["key"])
        return Kept(tensors, card)

    @staticmethod
    def _kept(entry) -> Kept | None:
        if entry is None:
            return None
        card, payload = entry
        return Kept(load_safetensors(payload), card)


def step(kind: str, *, read=None, work=None, describe=None, needs=None,
         known=None, memo: int = 0, check=None, gpu: float = 0.25,
         signature: Callable | None = None):
    """Make a function returning `Kept` a `Step` of `kind`. `read(kept, args)` turns what was
    kept into the value a call returns; `work(args)` estimates its image passes;
    `describe(args)` names it in a plan; `needs(args)` lists the jobs it reads (a victim);
    `known(args)`: attributes of the value known without computing it, which its `Pending`
    gives while declaring (a victim's `asked`); `memo`: how many values read this process
    keeps, to hand out again without reading (for a value its callers share and never change,
    as a victim); `check(args)`: raises `ParameterError` for a bad argument, at every call,
    declaring ones included, so that a bad value stops a run before any job starts; `gpu` is
    the share of a GPU a Ray task of it asks for; `signature`: the function whose parameters
    and defaults the arguments are checked against (default: the step's own)."""
    def wrap(compute):
        made = Step(compute, kind, read, work, describe, needs, known, memo, check,
                    gpu, signature)
        if kind in STEPS and STEPS[kind].module != made.module:
            raise ValueError(f"two steps are named {kind!r}")
        STEPS[kind] = made
        return made
    return wrap


def _device_of(args: dict) -> str:
    return devices.name(devices.resolve(args.get("device", "auto")))


def in_order(jobs: list[Job]) -> list[Job]:
    """`jobs` and what they need, each once, every job after the jobs it needs."""
    seen, order = set(), []

    def visit(job):
        if job.key in seen:
            return
        seen.add(job.key)
        for need in job.needs:
            visit(need)
        order.append(job)
    for job in jobs:
        visit(job)
    return order


def ensure(jobs: list[Job], executor: str | None = None, *, progress: bool = True) -> dict:
    """Compute the missing `jobs` (and what they need) through `executor` (default
    `$REPRO_EXECUTOR`, else "local"). Returns the counts of jobs cached (found in the zoo, at
    the start or computed meanwhile by another process) and computed by this call, and the keys
    it computed. A bar counts them, with the jobs running and failed."""
    name = config.check_choice("executor", executor or os.environ.get("REPRO_EXECUTOR") or "local",
                               EXECUTORS)
    order = in_order(jobs)
    missing = [j for j in order if not j.cached()]
    counts = {"cached": len(order) - len(missing), "computed": 0, "running": 0, "failed": 0}
    computed: list[str] = []
    bar = tqdm(total=len(order), desc="jobs", unit="job", disable=not progress or not missing,
               file=sys.stderr, mininterval=5)
    bar.update(counts["cached"])
    bar.set_postfix(counts)

    def finished(job: Job, here: bool) -> None:
        counts["computed" if here else "cached"] += 1
        if here:
            computed.append(job.key)
        bar.update()
        bar.set_postfix(counts)

    try:
        if name == "ray":
            RayExecutor().run(missing, counts, finished)
        else:
            for job in missing:
                counts["running"] = 1
                bar.set_description(f"jobs ({job.describe()})")
                before = len(COMPUTED)
                job.step.keep(**job.args)
                counts["running"] = 0
                finished(job, job.key in COMPUTED[before:])
    finally:
        bar.set_description("jobs")
        bar.close()
    return {**counts, "keys": computed}


class RayExecutor:
    """Missing jobs as Ray tasks: each asks for one CPU, and a share of a GPU (the step's `gpu`)
    when the cluster has GPUs; a task whose worker dies is retried (`max_retries`); a job's task
    waits for the tasks of the jobs it needs. Every worker uses the same zoo folder (the
    driver's `$REPRO_CACHE_DIR`, which must be a shared filesystem on a cluster) and reads the
    data from the driver's `$REPRO_DATA_DIR` when set. The cluster is `$RAY_ADDRESS`'s (which
    `--address` sets); without it, a Ray instance on this machine, stopped with the process."""

    max_retries = 3

    def __init__(self):
        import ray
        self.ray = ray
        if not ray.is_initialized():
            env = {"REPRO_CACHE_DIR": str(Zoo().root)}
            for name in ("REPRO_DATA_DIR", "REPRO_OFFLINE", "PYTHONPATH"):
                if os.environ.get(name):
                    env[name] = os.environ[name]
            ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False,
                     log_to_driver=False, runtime_env={"env_vars": env})

    def run(self, jobs: list[Job], counts: dict, finished: Callable[[Job, bool], None]) -> None:
        ray = self.ray
        gpus = ray.cluster_resources().get("GPU", 0) > 0
        task = ray.remote(work_on)
        refs, job_of = {}, {}
        for job in jobs:                       # in_order: a job's needs are submitted first
            after = [refs[n.key] for n in job.needs if n.key in refs]
            ref = task.options(num_cpus=1, num_gpus=job.step.gpu if gpus else 0,
                               max_retries=self.max_retries, name=job.step.kind).remote(
                job.step.module, job.step.kind, job.args, *after)
            refs[job.key], job_of[ref] = ref, job
        pending, errors = list(job_of), []
        counts["running"] = len(pending)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=5)
            counts["running"] = len(pending)
            for ref in ready:
                try:
                    here = ray.get(ref)
                except Exception as err:     # a job's own error, or a worker that kept dying
                    counts["failed"] += 1
                    errors.append(f"{job_of[ref].describe()} ({job_of[ref].key}): {err}")
                    continue
                finished(job_of[ref], here)
        if errors:
            raise RuntimeError(f"{len(errors)} of {len(jobs)} jobs failed on Ray; the first: "
                               f"{errors[0]}")


def work_on(module: str, kind: str, args: dict, *_needed) -> bool:
    """A Ray task: compute one job unless another worker did (then False), with the worker's
    own device and as many torch threads as the task was given CPUs."""
    import ray
    importlib.import_module(module)
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))
    before = len(COMPUTED)
    STEPS[kind].keep(**{**args, "device": "auto"} if "device" in args else args)
    return len(COMPUTED) > before


class NotReady(Exception):
    """A declaring pass needed the value of a job not computed yet."""


class Pending:
    """What a step call returns, while declaring, for a job not computed yet (or `section` for
    a section that waits for one, `job` None): indexing it, reading an attribute, calling it or
    computing with it gives the same stand-in, so code that passes results along keeps
    running; what needs the value (`bool`, `len`, iteration, a number, formatting) raises
    `NotReady`."""
    __slots__ = ("job",)

    def __init__(self, job: Job | None):
        object.__setattr__(self, "job", job)

    def _what(self) -> str:
        return self.job.describe() if self.job else "a section waiting for results"

    def __repr__(self) -> str:
        return f"<pending: {self._what()}>"

    def __getattr__(self, name):
        if name.startswith("__"):       # a protocol probed by a library: not there
            raise AttributeError(name)
        known = self.job.step.known(self.job.args) if self.job and self.job.step.known else {}
        return known.get(name, self)

    def _same(self, *_, **__):
        return self

    def _not_ready(self, *_):
        raise NotReady(f"needed the result of {self._what()}, not computed yet")

    __getitem__ = __call__ = __or__ = __ror__ = __and__ = __rand__ = _same
    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = __truediv__ = _same
    __rtruediv__ = __floordiv__ = __mod__ = __pow__ = __neg__ = __abs__ = __matmul__ = _same
    __lt__ = __le__ = __gt__ = __ge__ = __eq__ = __ne__ = _same
    __bool__ = __len__ = __iter__ = __contains__ = __float__ = __int__ = _not_ready
    __index__ = __format__ = __str__ = __setattr__ = __setitem__ = _not_ready
    __hash__ = object.__hash__


@dataclass
class Pass:
    """One declaring pass: the jobs its step calls asked for, those not computed yet (which
    got a `Pending`), whether it ran to its end, and what it returned (None if it did not).
    A `dry` pass reads nothing: every step call gets a `Pending`."""
    dry: bool = False
    jobs: list[Job] = field(default_factory=list)
    missing: list[Job] = field(default_factory=list)
    ended: bool = False
    value: Any = None


@contextlib.contextmanager
def declaring(dry: bool = False):
    """While the block runs, step calls are recorded in the `Pass` it yields (see the module's
    docstring)."""
    global _declaring
    outer, _declaring = _declaring, Pass(dry)
    try:
        yield _declaring
    finally:
        _declaring = outer


def section(compute: Callable, *args, **kwargs):
    """`compute(*args, **kwargs)`: one section of a chapter's `results`. While declaring, a
    section that needs a result not computed yet gives a `Pending` for its value instead, so
    that the sections after it still declare their jobs in the same pass."""
    try:
        return compute(*args, **kwargs)
    except config.ParameterError:
        raise
    except Exception:
        if _declaring is None or not _declaring.missing:
            raise
        return Pending(None)


def declared(compute: Callable, *args, dry: bool = False, **kwargs) -> Pass:
    """One declaring pass of `compute(*args, **kwargs)` (`dry`: reading nothing). A pass that
    was handed a stand-in may stop on `NotReady` or on another error a stand-in caused (a
    library that wanted a tensor); a bad parameter, or any error of a pass that had no
    stand-in, is raised."""
    with declaring(dry) as done:
        try:
            done.value, done.ended = compute(*args, **kwargs), True
        except config.ParameterError:
            raise
        except Exception:
            if not done.missing:
                raise
    return done


def computed_by_rounds(calls: list[tuple[Callable, tuple, dict]], executor: str | None = None,
                       *, progress: bool = True) -> tuple[list, set[str], set[str]]:
    """The values of `calls` (each `(compute, args, kwargs)`), their jobs computed in rounds:
    each round declares every call and computes all the missing jobs found, together; the
    round that finds none returns the values. Returns them with the keys of every job declared
    (and of what they need) and of those this process computed."""
    keys, computed = set(), set()
    while True:
        passes = [declared(f, *a, **kw) for f, a, kw in calls]
        keys.update(j.key for j in in_order([j for p in passes for j in p.jobs]))
        missing = [j for p in passes for j in p.missing]
        if not missing and all(p.ended for p in passes):
            return [p.value for p in passes], keys, computed
        computed.update(ensure(missing, executor, progress=progress)["keys"])
