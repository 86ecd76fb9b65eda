"""A chapter's page: what it shows of a run, drawn from plain data.

    page = Page.measured("attacks", measures=measures, results=results, pooled=pooled,
                         profile=profile, ..., attacks=attacks, ratio=ratio)
    m = page.values                  # the chapter's measures: tables' rows, figures' arrays
    page.header()                    # the run record at the top of the page
    ...tables and figures of m...
    page.table("no_defense", frame)  # kept as data for book/results/attacks.json
    page.compare(m["claims"])        # paper vs reproduced, from reference/attacks.yaml
    page.over_seeds()                # the other seeds' runs, pooled: means and 95 % intervals
    page.show_comparison()
    page.finish()                    # run record; writes the JSON the scorecard reads

`Page.measured` computes the measures (through `reprolib.chapter.Chapter` and the chapter's
`experiments` module, every job through the zoo) unless it is handed committed ones
(`measures`, which `repro book --render` sets): then nothing imports torch, reads a model or
a dataset, and the page is drawn again from the same data. Either way the page is drawn from the
measures as read back from their file format, so a computed page and a re-rendered one are the
same. `Chapter` is a Page too, for a notebook that computes and reports in one (the tests'
small chapters do; the book's chapters are drawn from measures).
"""
from __future__ import annotations

import ast
import importlib
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from IPython.display import Markdown, display

from .. import config, staleness
from ..atomic import atomic_write
from . import display as shown, glue, measures as stored, reference, seeds as seeding
from ..provenance import code_version

SETTING = ("profile", "model", "dataset", "device", "seed", "data_dir")   # Chapter's own
KEPT_OUT = ("pooled", "results", "measures")     # where a run reads and writes, not what it is


def notebook_defaults(name: str, root: Path = config.ROOT) -> dict:
    """The values chapter `name`'s notebook gives its parameters (its `parameters` cell), where
    they are written as literals."""
    cells = json.loads((root / "notebooks" / f"{name}.ipynb").read_text())["cells"]
    source = next("".join(c["source"]) for c in cells
                  if "parameters" in c.get("metadata", {}).get("tags", []))
    found = {}
    for node in ast.parse(source).body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)):
            try:
                found[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    return found


def measures_path(results: Path) -> Path:
    """Where a run writing its results to `results` (PAGE.json) writes its measures
    (PAGE.measures.json)."""
    return Path(results).with_name(f"{Path(results).stem}.measures.json")


class Page:
    """A chapter's page drawn from `values` (its measures), the `record` of the run that
    computed them and what the other seeds measured (`by_seed`)."""

    def __init__(self, name: str, record: dict, values: dict, by_seed: dict[int, dict],
                 results: str | None = None, rendered: bool = False, changed: dict = ()):
        self.name, self.values = name, values
        self.changed = dict(changed)   # the parameters set otherwise than the notebook's defaults
        self.reference = reference.load(name)
        self._record = record
        self.profile, self.dataset, self.model = record["profile"], record["dataset"], record["model"]
        self.lossy_copy = record.get("lossy_copy")
        self.seed, self.seeds = record["seeds"][0], record["seeds"]
        self.by_seed = by_seed
        self.results = Path(results) if results else None
        self.rendered = rendered       # drawn from committed measures, computing nothing
        self._init_page()

    def _init_page(self) -> None:
        self.tables: dict[str, pd.DataFrame] = {}
        self.comparison: pd.DataFrame | None = None
        self.found: list[dict] = []             # measured findings: no paper's claims
        self.measured: dict[str, float | None] = {}   # this seed's, for the comparison
        self._pooled_shown = False
        self.figures = 0                        # numbered on the page in their order
        self._drawn = time.perf_counter()

    @classmethod
    def measured(cls, name: str, *, measures: str | None = None, results: str | None = None,
                 pooled: list[str] = (), **params) -> "Page":
        """The page of chapter `name` for `params` (the notebook's parameters): drawn from the
        committed `measures` file if given (the parameters it was computed with win), else from
        measures computed now by `reprolib.experiments.<name>.measures`, which are written
        beside `results` (`measures_path`) when that is given."""
        asked = {k: v for k, v in params.items() if k not in KEPT_OUT}
        if measures is not None:
            kept = stored.read(Path(measures))
            differ = {k: (v, kept["params"].get(k)) for k, v in asked.items()
                      if kept["params"].get(k) != v}
            if differ:
                raise config.ParameterError(
                    f"measures={measures!r} were computed with other parameters than these "
                    f"({', '.join(f'{k}={v[1]!r}, not {v[0]!r}' for k, v in differ.items())}): "
                    f"`repro run {name}` computes them for these")
            return cls(name, kept["record"], kept["values"], _seeds(kept["by_seed"]), results,
                       rendered=True, changed=kept["changed"])
        from ..chapter import Chapter           # compute: torch, models, data
        setting = {k: v for k, v in params.items() if k in SETTING}
        ch = Chapter(name, pooled=pooled, results=results, **setting)
        ch.show_jobs = False                    # the page says it from the record, as rendered
        module = importlib.import_module(f"reprolib.experiments.{name}")
        values = ch.compute(module.measures, **{k: v for k, v in params.items()
                                                 if k not in SETTING})
        defaults = notebook_defaults(name)
        kept = {"params": asked, "record": ch.record(), "values": values,
                "changed": {k: v for k, v in asked.items() if k not in SETTING
                            and k in defaults and defaults[k] != v},
                "by_seed": {str(s): {k: r[k] for k in ("tables", "measured", "wall_time_s",
                                                        "jobs")}
                            for s, r in ch.by_seed.items()}}
        arrays: dict = {}
        kept = stored.decode(stored.encode(kept, arrays), arrays)    # as a render reads them
        if results:
            stored.write(measures_path(Path(results)), kept)
        return cls(name, kept["record"], kept["values"], _seeds(kept["by_seed"]), results,
                   changed=kept["changed"])

    def record(self) -> dict:
        """The run record of the measures, with the files this page's kernel executed merged in
        (the views' hashes now, so that a change to a view stales this page's look and a change
        to compute code its numbers); with `rendered`, when and by which code it was drawn."""
        r = dict(self._record)
        r["measures"] = True
        r["executed"] = dict(sorted({**r["executed"], **staleness.fingerprint(self.name)}.items()))
        if self.rendered:
            r["rendered"] = {"code_version": code_version(),
                             "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                             "wall_time_s": round(time.perf_counter() - self._drawn, 1)}
        return r

    @property
    def run_setting(self) -> dict:
        return {"profile": self.profile, "dataset": self.dataset, "model": self.model}

    def header(self) -> None:
        """The run record at the top of the page, and how many jobs the run took."""
        r = self.record()
        display(Markdown(f"**Run record:** {shown.record_line(r, wall=False)}"))
        if self.changed:
            display(Markdown(shown.changed_line(self.changed)))
        if r.get("measures"):
            display(Markdown(shown.jobs_line(r)))

    def table(self, name: str, frame: pd.DataFrame) -> pd.DataFrame:
        """Keep `frame` for the results file and return it for display."""
        self.tables[name] = frame
        return frame

    def compare(self, measured: dict[str, float]) -> pd.DataFrame:
        """The paper-vs-reproduced table for `measured` (ids of reference numbers, measures of
        claims) at this run's seed, against reference/<chapter>.yaml; `over_seeds` adds the
        other seeds' measures."""
        for c in self.reference.claims:
            if c.premise and c.measure in measured and c.premise["measure"] not in measured:
                raise RuntimeError(f"claim {c.id!r} is measured but not its premise "
                                   f"{c.premise['measure']!r}: its verdict would be "
                                   f"inconclusive for want of a measurement")
        self.measured = {k: (None if v is None else float(v)) for k, v in measured.items()}
        return self._compare()

    def _compare(self) -> pd.DataFrame:
        runs = self.seed_measures().values()
        pooled = {k: [r.get(k) for r in runs] for k in self.measured}
        self.comparison = reference.compare(self.reference, pooled, self.run_setting,
                                            self.lossy_copy)
        return self.comparison

    def over_seeds(self) -> pd.DataFrame:
        """Say which seeds the comparison pools (this run's and those `repro run --seeds` ran
        before it); returns the comparison over all of them."""
        self._pooled_shown = True
        others = self.seeds[1:]
        if not others:
            default = config.seeds(self.name, self.profile)
            why = (f"the default at `{self.profile}` for this chapter, for its cost (this run's "
                   f"wall time is in the run record below)" if default == 1 else
                   f"as asked; `repro run` runs {default} at `{self.profile}` by default")
            display(Markdown(f"**Seeds:** one, seed {self.seed} ({why}): every number on this "
                             f"page is that run's, and a verdict reads the one value (\"1 "
                             f"seed\"). `repro run {self.name} --seeds 0 1 2` runs three and "
                             f"gives intervals."))
            return self.comparison
        spent = sum(r["wall_time_s"] for r in self.by_seed.values())
        display(Markdown(
            f"**Seeds:** {len(self.seeds)} ({', '.join(map(str, self.seeds))}). The page above "
            f"is seed {self.seed}'s run; {shown.seeds_text(others)} ran the same notebook with the "
            f"same parameters before it (`repro run --seeds`), each with its own victims and "
            f"draws, in {spent:.0f} s. From here on a number is the mean over seeds with its "
            f"95 % Student's t interval."))
        return self._compare()

    def seed_tables(self) -> dict[str, pd.DataFrame]:
        """Each kept table over every seed (`seeds.tables_over`); empty with one seed."""
        return seeding.tables_over({self.seed: {k: _records(v) for k, v in self.tables.items()},
                                    **{s: r["tables"] for s, r in self.by_seed.items()}})

    def show_seed_tables(self) -> None:
        shown.tables_over_seeds(self.seed_tables(), len(self.seeds))

    def findings(self, found: list[dict]) -> list[dict]:
        """Keep what this run found (each a "finding" sentence and its measured "value"),
        stated as ours: the scorecard lists findings apart from the papers' claims."""
        for f in found:
            if set(f) != {"finding", "value"}:
                raise config.ParameterError(f"a finding has the keys 'finding' and 'value', "
                                            f"not {sorted(f)}")
        self.found = [{"finding": f["finding"], "value": float(f["value"])} for f in found]
        return self.found

    def figure(self, fig, caption: str) -> None:
        """Show `fig` as the page's next numbered figure, with its `caption`."""
        self.figures += 1
        shown.figure(fig, self.figures, caption)

    def show_comparison(self) -> None:
        """The comparison over seeds (`display.comparison`), its values glued for the page's
        prose (`glue.comparison`)."""
        self.figures += shown.comparison(self.comparison, self.reference, self.seed_measures(),
                                         self.figures + 1)     # numbered only if drawn
        for before in self.runs_on_other_datasets():
            display(Markdown(shown.verdict_changes(self.comparison, before)))
        glue.comparison(self.comparison, self.seeds)

    def runs_on_other_datasets(self, root: Path = config.ROOT) -> list[dict]:
        """The book's last results of this chapter at this profile on another dataset: the
        committed one, if it ran on another, and those `book.run` set aside when a run on a new
        dataset replaced them (book/results/DATASET/CHAPTER.json); one a dataset, the committed
        one first."""
        results = root / "book" / "results"
        found = {}
        for path in [results / f"{self.name}.json", *sorted(results.glob(f"*/{self.name}.json"))]:
            if path.is_file():
                before = json.loads(path.read_text())
                r = before["record"]
                if r["dataset"] != self.dataset and r["profile"] == self.profile:
                    found.setdefault(r["dataset"], before)
        return list(found.values())

    def seed_measures(self) -> dict[int, dict]:
        """What each seed measured, by seed."""
        return {self.seed: self.measured, **{s: r["measured"] for s, r in self.by_seed.items()}}

    def finish(self) -> dict:
        """Show the run record with its wall time; write everything to `results` if given:
        the first seed's tables, the comparison over seeds, and each seed's own tables and
        measures."""
        if self.by_seed and not self._pooled_shown:
            raise RuntimeError(f"the run pooled {shown.seeds_text(self.seeds)} but over_seeds() "
                               f"did not pool them: its comparison would be seed {self.seed}'s "
                               f"alone")
        if self.rendered and "torch" in sys.modules:
            raise RuntimeError(f"{self.name}: torch was imported while the page was drawn "
                               f"from its measures: a view computed")
        display(Markdown(f"**Run record:** {shown.record_line(self.record(), wall=True)}"))
        first = {"tables": {k: _records(v) for k, v in self.tables.items()},
                 "measured": self.measured}
        payload = {"record": self.record(), **first,
                   "comparison": _records(self.comparison) if self.comparison is not None else [],
                   "findings": self.found,
                   "seeds": {str(self.seed): first,
                             **{str(s): {"tables": r["tables"], "measured": r["measured"]}
                                for s, r in self.by_seed.items()}},
                   "over_seeds": {k: _records(v) for k, v in self.seed_tables().items()}}
        if self.results:
            atomic_write(self.results, json.dumps(payload, indent=1).encode())
        return payload




def _seeds(by_seed: dict) -> dict[int, dict]:
    """The other seeds' tables and measures as the measures file keeps them (by seed as text)."""
    return {int(s): r for s, r in by_seed.items()}


def _records(frame: pd.DataFrame) -> list[dict]:
    """Rows as plain JSON values (NaN becomes null), named index levels kept as columns."""
    if any(name is not None for name in frame.index.names):
        frame = frame.reset_index()
    return json.loads(frame.to_json(orient="records"))
