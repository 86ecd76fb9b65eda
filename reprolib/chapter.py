"""What every chapter notebook does around its experiments.

    ch = Chapter("attacks", profile=profile, model=model, dataset=dataset, device=device,
                 results=results)
    ch.header()                      # the run record at the top of the page
    ch.ensure(ex.jobs(ch, ...))      # every expensive step, computed or read from the cache
    ...experiments...
    ch.table("no_defense", frame)    # kept as data for book/results/attacks.json
    ch.compare(measured)             # paper vs reproduced, from reference/attacks.yaml
    ch.finish()                      # run record with wall time; writes the JSON for `repro run`
"""
from __future__ import annotations

import json
import os
import platform
import time
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
from IPython.display import Markdown, display

from . import config, data, jobs, metrics, models, reference
from .zoo import atomic_write

LIBRARIES = ("torch", "torchvision", "numpy", "pandas", "papermill", "jupyter-book")


def library_versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            found[name] = version(name)
        except Exception:  # not installed: say so rather than fail the chapter
            found[name] = "not installed"
    return found


class Chapter:
    """The parameters a chapter runs with, resolved and checked, and what it reports."""

    def __init__(self, name: str, *, profile: str | None = None, model: str | None = None,
                 dataset: str = "auto", device: str = "auto", seed: int = 0,
                 results: str | None = None, data_dir: str | None = None):
        self.name = name
        self.profile = profile or os.environ.get("REPRO_PROFILE") or "quick"
        config.profile(self.profile)
        self.reference = reference.load(name)
        asked = model or os.environ.get("REPRO_MODEL") or "auto"
        self.model = models.choose(asked, self.profile, self.reference.setting["model"])
        self.model_why = {"auto": f"auto at profile {self.profile}",
                          "paper": "the paper's"}.get(asked, "named by the run's parameters")
        if dataset == "auto":
            self.dataset, self.dataset_why = data.default_dataset(data_dir)
        else:
            self.dataset = config.check_choice("dataset", dataset, ["auto", *data.DATASETS])
            self.dataset_why = "named by the run's parameters"
        self.device = config.resolve_device(device)
        self.seed = config.check_range("seed", seed, low=0, integer=True)
        self.data_dir = data_dir
        self.results = Path(results) if results else None
        self.tables: dict[str, pd.DataFrame] = {}
        self.comparison: pd.DataFrame | None = None
        self.found: list[dict] = []             # measured findings: no paper's claims
        self.jobs: dict[str, int] = {}          # the chapter's jobs: how many, cached, computed
        self._keys: set[str] = set()
        self._computed: set[str] = set()
        self.started = datetime.now(timezone.utc)
        self._clock = time.perf_counter()

    def record(self) -> dict:
        return {"chapter": self.name, "profile": self.profile, "dataset": self.dataset,
                "dataset_why": self.dataset_why, "model": self.model, "model_why": self.model_why,
                "device": config.device_name(self.device), "seed": self.seed,
                "code_version": config.code_version(),
                "started": self.started.isoformat(timespec="seconds"),
                "wall_time_s": round(time.perf_counter() - self._clock, 1),
                "jobs": self.jobs, "executor": os.environ.get("REPRO_EXECUTOR") or "local",
                "libraries": library_versions()}

    def _record_line(self, wall: bool) -> str:
        r = self.record()
        line = (f"profile **{r['profile']}** · dataset **{r['dataset']}** ({r['dataset_why']}) · "
                f"model **{r['model']}** ({r['model_why']}) · device {r['device']} · "
                f"seed {r['seed']} · code {r['code_version']}")
        return line + (f" · wall time {r['wall_time_s']:.0f} s" if wall else "")

    @property
    def paper_recipe(self) -> bool:
        """Whether models train by the paper's recipe: the recipe goes with the model. The
        small CNN of `smoke` and `quick` trains by its profile's recipe; any other model by the
        reference code's (BackdoorBench's, or the chapter's own code's), over the profile's
        epochs below `paper`."""
        p = config.profile(self.profile)
        return self.profile == "paper" or self.model != p.model

    @property
    def reference_recipe(self) -> config.Recipe:
        """How the reference code trains the paper's model: BackdoorBench's recipe with the
        changes reference/<chapter>.yaml lists for the chapter's own code."""
        return config.profile("paper").recipe.replace(**self.reference.recipe)

    @property
    def recipe(self) -> config.Recipe:
        """The recipe of this chapter's models (see `paper_recipe`)."""
        p = config.profile(self.profile)
        if not self.paper_recipe:
            return p.recipe
        paper = self.reference_recipe
        return paper if self.profile == "paper" else paper.rescaled(p.recipe.epochs)

    def model_and_recipe(self, wanet: bool = False) -> str:
        """What the chapter's Setting says of its models at each profile, and of this run's.
        `wanet`: the chapter trains WaNet victims, whose recipe BackdoorBench changes."""
        small = {p: config.profile(p).recipe.describe() for p in ("smoke", "quick")}
        whose = "its own code's recipe" if self.reference.recipe else "BackdoorBench's recipe"
        wanet_note = (" A WaNet victim trained by the paper's recipe takes BackdoorBench's "
                      "changes for WaNet: lr 0.01 constant, no augmentation before the warp, "
                      "a 5-px crop, 10° rotation and flip after it." if wanet else "")
        return (f"**Models and recipes.** At `smoke` and `quick` the models are the small CNN, "
                f"trained by the profile's recipe (smoke: {small['smoke']}; quick: "
                f"{small['quick']}). At `paper`, and at any profile with `model=\"paper\"`, "
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

    @property
    def run_setting(self) -> dict:
        return {"profile": self.profile, "dataset": self.dataset, "model": self.model}

    def scale(self, **given) -> SimpleNamespace:
        """This chapter's scale knobs at its profile (`config.SCALES`), each replaced by its
        value in `given` unless that is None."""
        return config.scale(self.name, self.profile, **given)

    def header(self) -> None:
        display(Markdown(f"**Run record:** {self._record_line(wall=False)}"))

    def ensure(self, declared: list) -> None:
        """Compute the chapter's missing jobs through the run's executor (`$REPRO_EXECUTOR`,
        default in this process) and say how many were cached. The run record counts the
        chapter's jobs and those this run computed (not another run sharing the zoo)."""
        order = jobs.in_order(declared)
        counts = jobs.ensure(order)
        self._keys.update(j.key for j in order)
        self._computed.update(counts["keys"])
        self.jobs = {"jobs": len(self._keys), "computed": len(self._computed),
                     "cached": len(self._keys) - len(self._computed)}
        display(Markdown(f"**Jobs:** {len(order)}, of which {counts['cached']} read from the "
                         f"cache and {counts['computed']} computed now "
                         f"({os.environ.get('REPRO_EXECUTOR') or 'local'} executor)."))

    def table(self, name: str, frame: pd.DataFrame) -> pd.DataFrame:
        """Keep `frame` for the results file and return it for display."""
        self.tables[name] = frame
        return frame

    def compare(self, measured: dict[str, float]) -> pd.DataFrame:
        """The paper-vs-reproduced table for `measured` (ids of reference numbers, measures of
        claims), against reference/<chapter>.yaml."""
        self.comparison = reference.compare(self.reference, measured, self.run_setting)
        return self.comparison

    def findings(self, found: list[dict]) -> list[dict]:
        """Keep what this run found (each a "finding" sentence and its measured "value"),
        stated as ours: the scorecard lists findings apart from the papers' claims."""
        for f in found:
            if set(f) != {"finding", "value"}:
                raise config.ParameterError(f"a finding has the keys 'finding' and 'value', "
                                            f"not {sorted(f)}")
        self.found = [{"finding": f["finding"], "value": float(f["value"])} for f in found]
        return self.found

    def verdict_line(self, noun: str = "rows") -> str:
        """"Of N rows, a reproduced, b not comparable.": the comparison's verdicts counted."""
        counts = self.comparison["verdict"].value_counts()
        return (f"Of {len(self.comparison)} {noun}, "
                + ", ".join(f"{n} {v}" for v, n in counts.items()) + ".")

    def show_comparison(self) -> None:
        """The comparison as two tables, the paper's numbers and its claims."""
        c = self.comparison
        numbers = c[c.kind == "number"]
        if len(numbers):
            display(Markdown("**The paper's numbers**"))
            display(_plain(numbers[["what", "paper", "ours", "delta", "tolerance", "verdict"]]))
            reasons = sorted(set(numbers.why) - {""})
            if reasons:
                display(Markdown("Not comparable because: " + "; ".join(reasons) + "."))
        claims = c[c.kind == "claim"]
        if len(claims):
            display(Markdown("**The paper's claims**"))
            display(_plain(claims[["what", "ours", "tolerance", "verdict"]]
                           .rename(columns={"what": "claim", "tolerance": "checked as"})))

    def finish(self) -> dict:
        """Show the run record with its wall time; write everything to `results` if given."""
        display(Markdown(f"**Run record:** {self._record_line(wall=True)}"))
        payload = {"record": self.record(),
                   "tables": {k: _records(v) for k, v in self.tables.items()},
                   "comparison": _records(self.comparison) if self.comparison is not None else [],
                   "findings": self.found}
        if self.results:
            atomic_write(self.results, json.dumps(payload, indent=1).encode())
        return payload


def score_row(v, model=None, *, der: bool = True, accuracy: str = "CA %") -> dict[str, float]:
    """The scores of `model` (default: the victim `v`'s own) in percent: clean accuracy (under
    the name `accuracy`), ASR and RA, and with `der` the DER against `v`'s undefended model.
    A clean twin (no attack) has only its clean accuracy."""
    s = v.scores(model)
    if "asr" not in s:
        return {accuracy: 100 * s["ca"]}
    row = {accuracy: 100 * s["ca"], "ASR %": 100 * s["asr"], "RA %": 100 * s["ra"]}
    if der:
        before = v.scores()
        row["DER %"] = 100 * metrics.der(before["ca"], before["asr"], s["ca"], s["asr"])
    return row


def _plain(frame: pd.DataFrame):
    """A table without its index, numbers to two decimals, empty cells left empty."""
    return frame.style.hide(axis="index").format(precision=2, na_rep="")


def _records(frame: pd.DataFrame) -> list[dict]:
    """Rows as plain JSON values (NaN becomes null), named index levels kept as columns."""
    if any(name is not None for name in frame.index.names):
        frame = frame.reset_index()
    return json.loads(frame.to_json(orient="records"))
