"""What a chapter computes: its setting resolved and checked, its jobs, its run record.

Every chapter of the book asks for its measures through `views.page.Page.measured`, which
builds a Chapter and calls the chapter's `experiments` module's `measures(ch, ...)`. A Chapter is
a `Page` too, so a notebook may compute and report in one (the tests' small chapters do):

    ch = Chapter("attacks", profile=profile, model=model, dataset=dataset, device=device,
                 results=results)
    ch.header()                      # the run record at the top of the page
    r = ch.compute(ex.results, ...)  # every experiment; its jobs computed or read from the cache
    ...tables and figures of r...
    ch.table("no_defense", frame)    # kept as data for book/results/attacks.json
    ch.compare(measured)             # paper vs reproduced, from reference/attacks.yaml
    ch.over_seeds()                  # the other seeds' runs, pooled: means and 95 % intervals
    ch.show_comparison()
    ch.finish()                      # run record with wall time; writes the JSON for `repro run`

A chapter runs at one `seed`. `repro run --seeds 0 1 2` runs it once per seed, the first last,
and hands that run the other seeds' results files (`pooled`): the page tells the story at the
first seed, and from `over_seeds` on every verdict reads the interval of all of them.
"""
from __future__ import annotations

import copy
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

from IPython.display import Markdown, display

from . import config, data, devices, jobs, models, staleness
from .provenance import code_version, library_versions
from .views import reference, seeds as seeding
from .views.page import Page


class Chapter(Page):
    """The parameters a chapter runs with, resolved and checked, and the jobs it computes; as a
    `Page`, what it reports when a notebook computes and reports in one."""

    def __init__(self, name: str, *, profile: str | None = None, model: str | None = None,
                 dataset: str = "auto", device: str = "auto", seed: int = 0,
                 pooled: list[str] = (), results: str | None = None,
                 data_dir: str | None = None):
        self.name = name
        self.profile = profile or os.environ.get("REPRO_PROFILE") or "quick"
        config.profile(self.profile)
        self.reference = reference.load(name)
        asked = model or os.environ.get("REPRO_MODEL") or "auto"
        models.choose(asked, self.profile, self.reference.setting["model"])     # checked first
        if dataset == "auto":
            self.dataset, self.dataset_why = data.default_dataset(data_dir)
        else:
            self.dataset = config.check_choice("dataset", dataset, ["auto", *data.DATASETS])
            self.dataset_why = "named by the run's parameters"
        self.model = models.choose(asked, self.profile, self.reference.setting["model"],
                                   self.dataset)
        self.model_why = {"auto": f"auto at profile {self.profile}",
                          "paper": "the paper's"}.get(asked, "named by the run's parameters")
        self.device = devices.resolve(device)
        self.seed = config.check_range("seed", seed, low=0, high=2**32 - 1, integer=True)
        self.data_dir = data_dir
        self.dataset_source, self.lossy_copy = self._copy()
        self.results = Path(results) if results else None
        self.rendered = False
        self.show_jobs = True                   # each round's jobs said on the page
        self._init_page()
        self.by_seed = seeding.read_pooled(   # the other seeds' tables and measures, each
            pooled, self.run_setting | {"chapter": name,       # read from the same copy
                                        "dataset_source": self.dataset_source}, self.seed)
        self.seeds = [self.seed, *self.by_seed]
        self.jobs: dict[str, int] = {}          # the chapter's jobs: how many, cached, computed
        self._keys: set[str] = set()
        self._computed: set[str] = set()
        self.started = datetime.now(timezone.utc)
        self._clock = time.perf_counter()

    def record(self) -> dict:
        return {"chapter": self.name, "profile": self.profile, "dataset": self.dataset,
                "dataset_why": self.dataset_why, "dataset_source": self.dataset_source,
                "lossy_copy": self.lossy_copy,
                "model": self.model, "model_why": self.model_why,
                "device": devices.name(self.device),
                "seeds": self.seeds,                 # the page is the first seed's
                "code_version": code_version(),
                "started": self.started.isoformat(timespec="seconds"),
                "wall_time_s": round(time.perf_counter() - self._clock, 1),
                "jobs": self.all_jobs(), "executor": os.environ.get("REPRO_EXECUTOR") or "local",
                "libraries": library_versions(), "executed": self.executed()}

    def all_jobs(self) -> dict[str, int]:
        """The jobs of this run and of the seeds it pools: how many, computed, cached."""
        counts = [self.jobs, *(r["jobs"] for r in self.by_seed.values())]
        return {k: sum(c.get(k, 0) for c in counts) for k in ("jobs", "computed", "cached")}

    def executed(self) -> dict[str, str]:
        """The content hash of every file this run executed, the other seeds' runs included
        (`staleness.fingerprint`): what tells later whether the page is stale."""
        found = staleness.fingerprint(self.name)
        for r in self.by_seed.values():
            found.update(r["executed"])
        return dict(sorted(found.items()))

    def _copy(self) -> tuple[str, str | None]:
        """Which copy of the dataset the run reads (`data.source_of`), and the name its verdicts
        carry if that copy is lossy (`Copy.lossy_name`)."""
        try:
            copy = data.copy_of(self.dataset, self.data_dir)
        except data.DatasetNotFound:
            return "not found yet: the official files, once downloaded", None
        if copy is None:
            return data.official_source(self.dataset), None
        return copy.describe(), copy.lossy_name

    @property
    def paper_recipe(self) -> bool:
        """Whether models train by the paper's recipe: the recipe goes with the model. The
        small CNN of `smoke` and `quick` trains by its profile's recipe; any other model by the
        reference code's (BackdoorBench's, or the chapter's own code's), over the profile's
        epochs below `paper`."""
        p = config.profile(self.profile, self.dataset)
        return self.profile == "paper" or self.model != p.model

    @property
    def reference_recipe(self) -> config.Recipe:
        """How the reference code trains the paper's model: BackdoorBench's recipe with the
        changes reference/<chapter>.yaml lists for the chapter's own code."""
        return config.profile("paper").recipe.replace(**self.reference.recipe)

    @property
    def recipe(self) -> config.Recipe:
        """The recipe of this chapter's models (see `paper_recipe`)."""
        p = config.profile(self.profile, self.dataset)
        if not self.paper_recipe:
            return p.recipe
        paper = self.reference_recipe
        return paper if self.profile == "paper" else paper.rescaled(p.recipe.epochs)

    def model_and_recipe(self, wanet: bool = False) -> str:
        """What the chapter's Setting says of its models at each profile, and of this run's.
        `wanet`: the chapter trains WaNet victims, whose recipe BackdoorBench changes."""
        small = {p: config.profile(p, self.dataset) for p in ("smoke", "quick")}
        small = {p: f"{x.model}, {x.recipe.describe()}" for p, x in small.items()}
        whose = "its own code's recipe" if self.reference.recipe else "BackdoorBench's recipe"
        wanet_note = (" A WaNet victim trained by the paper's recipe takes BackdoorBench's "
                      "changes for WaNet: lr 0.01 constant, no augmentation before the warp, "
                      "a 5-px crop, 10° rotation and flip after it." if wanet else "")
        return (f"**Models and recipes.** At `smoke` and `quick` the models are small CNNs, "
                f"trained by the profile's recipe (on {self.dataset}, smoke: {small['smoke']}; "
                f"quick: {small['quick']}). At `paper`, and at any profile with `model=\"paper\"`, "
                f"the model is {self.reference.setting['model']}, trained by {whose}: "
                f"{self.reference_recipe.describe()}; below `paper` over the profile's "
                f"epochs.{wanet_note} This run: **{self.model}**, {self.recipe.describe()}.")

    @property
    def setting(self) -> dict:
        """What every victim of this chapter is asked for with: profile, model, recipe (and
        whether an attack's own training changes apply), device and data."""
        return {"profile": self.profile, "model": self.model, "recipe": self.recipe,
                "attack_recipes": self.paper_recipe, "device": self.device,
                "data_dir": self.data_dir}

    def victim_args(self, attack, ratio: float = 0.1, target: int = 0, seed: int | None = None,
                    **attack_params) -> dict:
        """What the chapter asks `trained_victim` for: `attack` (None: the clean twin) at
        `ratio` in the chapter's setting and seed (or `seed`)."""
        return dict(dataset=self.dataset, attack=attack, ratio=ratio, target=target,
                    seed=self.seed if seed is None else seed, progress=False, **self.setting,
                    **attack_params)

    def at(self, seed: int) -> "Chapter":
        """This chapter at one other `seed`: what its jobs and victims are asked with."""
        other = copy.copy(self)
        other.seed, other.seeds = seed, [seed]
        return other

    def scale(self, **given) -> SimpleNamespace:
        """This chapter's scale knobs at its profile (`config.SCALES`), each replaced by its
        value in `given` unless that is None."""
        return config.scale(self.name, self.profile, **given)

    def compute(self, results, **params):
        """`results(ch, **params)` (an experiments module's `results`) at this run's first seed.
        Its jobs are found by calling it (`jobs.computed_by_rounds`) and computed together
        through the run's executor (`$REPRO_EXECUTOR`, default this process), in parallel on a
        Ray cluster."""
        return self._rounds([(results, (self,), params)])[0]

    def then(self, compute, *args, **kwargs):
        """`compute(*args, **kwargs)`, jobs found and computed as in `compute`: for jobs whose
        arguments depend on what the page computed in between."""
        return self._rounds([(compute, args, kwargs)])[0]

    def _rounds(self, calls: list) -> list:
        """The values of `calls`; the run record counts the chapter's jobs, and those this run
        computed (not another run sharing the zoo)."""
        values, keys, computed = jobs.computed_by_rounds(calls)
        self._keys |= keys
        self._computed |= computed
        self.jobs = {"jobs": len(self._keys), "computed": len(self._computed),
                     "cached": len(self._keys) - len(self._computed)}
        if self.show_jobs:
            display(Markdown(f"**Jobs:** {len(keys)}, of which {len(keys) - len(computed)} "
                             f"read from the cache and {len(computed)} computed now "
                             f"({os.environ.get('REPRO_EXECUTOR') or 'local'} executor)."))
        return values
