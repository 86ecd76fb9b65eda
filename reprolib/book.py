"""Running chapters with papermill and building the Jupyter Book.

`run` executes notebooks/PAPER.ipynb into book/runs/PAPER.ipynb and the chapter's tables into
book/results/PAPER.json. Both are written under book/.partial first, under a name of the run's
own (two runs of one chapter at once do not share a file), and moved into place only when the
whole notebook has run, so an interrupted run leaves no half-written page; its jobs are already
in the zoo, so the next run picks up where this one stopped. `build` runs what is missing,
writes the scorecard page from every results file and builds _build/html.
"""
from __future__ import annotations

import concurrent.futures
import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

from . import config, data, devices, models, staleness
from .views import seeds as seeding

ROOT = config.ROOT
RESERVED = ("profile", "model", "dataset", "device", "results", "pooled",   # set by run() itself
            "measures")


class RunFailed(RuntimeError):
    """A chapter raised an error, or the book did not build."""


def chapters(root: Path = ROOT) -> list[str]:
    return sorted(p.stem for p in (root / "notebooks").glob("*.ipynb"))


def notebook_parameters(path: Path) -> dict[str, str]:
    """The names in a notebook's `parameters` cell, with their default as written."""
    import papermill
    return {name: p["default"] for name, p in papermill.inspect_notebook(str(path)).items()}


def parse_params(pairs: list[str], allowed: dict[str, str], paper: str) -> dict:
    """`key=value` strings into parameters; values are read as YAML (0.05, [badnets, sig], ...)."""
    params = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise config.ParameterError(f"-p {pair!r}: expected key=value")
        if key == "results":
            raise config.ParameterError(f"-p results=...: repro run always writes the tables to "
                                        f"book/results/{paper}.json")
        if key == "pooled":
            raise config.ParameterError("-p pooled=...: repro run pools the seeds it runs; "
                                        "give them with --seeds")
        if key == "measures":
            raise config.ParameterError("-p measures=...: repro run computes the measures; "
                                        "`repro book --render` draws pages from committed ones")
        if key in RESERVED:
            raise config.ParameterError(f"-p {key}=...: use --{key} instead")
        if key not in allowed and key != "seeds":      # seeds: the run's, not the notebook's
            names = ", ".join(k for k in [*allowed, "seeds"] if k not in RESERVED)
            raise config.ParameterError(f"-p {key}: {paper} has no parameter {key!r}; "
                                        f"allowed: {names}")
        params[key] = yaml.safe_load(text)
    return params


def check_run(papers: list[str], *, profile: str, dataset: str, device: str,
              pairs: list[str], model: str = "auto", root: Path = ROOT) -> dict[str, dict]:
    """Every argument of a run checked before any work; returns each paper's -p parameters,
    `seed` and `seeds` resolved into the run's `seeds` (default: the chapter's at `profile`)."""
    known = chapters(root)
    if not papers:
        raise config.ParameterError("name at least one chapter; allowed: " + ", ".join(known))
    for paper in papers:
        config.check_choice("paper", paper, known)
    config.profile(profile)
    config.check_choice("model", model, models.CHOICES)
    config.check_choice("dataset", dataset, ["auto", *data.DATASETS])
    devices.resolve(device)
    # a missing or damaged data file ends the run here, in one line, not in a kernel traceback
    data.load(data.default_dataset()[0] if dataset == "auto" else dataset)
    params = {paper: parse_params(pairs, notebook_parameters(root / "notebooks" / f"{paper}.ipynb"),
                                  paper)
              for paper in papers}
    for paper, given in params.items():
        given["seeds"] = seeding.resolve(given.pop("seed", None), given.pop("seeds", None),
                                         config.seeds(paper, profile))
        # every value, down to each job's arguments, checked by declaring the run's jobs (a
        # notebook without an experiments module has none)
        if importlib.util.find_spec(f"reprolib.experiments.{paper}"):
            planned_jobs(paper, profile=profile, model=model, dataset=dataset, device=device,
                         params=given, root=root)
    return params


def planned_jobs(paper: str, *, profile: str = "quick", model: str = "auto",
                 dataset: str = "auto", device: str = "auto", params: dict | None = None,
                 root: Path = ROOT, reading: bool = False) -> tuple[object, list]:
    """The chapter a run of `paper` would set up (at its first seed), and the jobs its first
    round would ask for: one dry declaring pass (`jobs.declared`, reading nothing) of the
    experiments module's `results(ch, **parameters)` at each of its seeds, with the notebook's
    defaults and `params`; every parameter and every job's arguments checked on the way. Jobs
    whose arguments depend on results are found only once those results exist: a `reading`
    pass reads the results the zoo holds, and so finds the jobs of every round whose
    arguments are known from them (all of a run's, once it is cached)."""
    import ast
    import inspect

    from .chapter import Chapter
    from .jobs import declared, in_order
    defaults = {k: ast.literal_eval(v)
                for k, v in notebook_parameters(root / "notebooks" / f"{paper}.ipynb").items()}
    given = {**defaults, **(params or {})}
    seeds = given.get("seeds") or seeding.resolve(given.get("seed"), None,
                                                  config.seeds(paper, profile))
    ch = Chapter(paper, profile=profile, model=model, dataset=dataset, device=device,
                 seed=seeds[0])
    results = importlib.import_module(f"reprolib.experiments.{paper}").results
    takes = inspect.signature(results).parameters        # the rest are the page's own
    asked = {k: v for k, v in given.items() if k in takes and k != "ch"}
    return ch, in_order([job for s in seeds
                         for job in declared(results, ch.at(s), dry=not reading, **asked).jobs])


def plan(paper: str, *, throughput: float | None = None, **how) -> dict:
    """Every job of a run of `paper` (see `planned_jobs`): what it is, its key, whether the zoo
    holds it, and for a missing one an estimated time, its image passes divided by `throughput`
    (images per second; default: measured now, `train.throughput` of the chapter's model on
    its device). A cached job shows the time it took (`seconds`) beside the estimate
    (`estimate_s`), and the device its card says it ran on (None for a missing one)."""
    from .train import throughput as measure
    from .victims import datasets
    ch, jobs = planned_jobs(paper, **how)
    if throughput is None:
        p = config.profile(ch.profile, ch.dataset)
        train_set = datasets(ch.dataset, ch.data_dir, p.n_train, p.n_test, ch.seed)[0]
        throughput = measure(ch.model, len(train_set.classes), train_set.images.shape[1],
                             device=ch.device)
    rows = []
    for job in jobs:
        card, estimate = job.card(), job.work() / throughput
        rows.append({"kind": job.step.kind, "what": job.describe(), "key": job.key,
                     "status": "cached" if card else "missing", "passes": job.work(),
                     "estimate_s": estimate,
                     "seconds": card.get("wall_time_s") if card else estimate,
                     "device": card.get("device") if card else None})
    return {"chapter": ch, "throughput": throughput, "rows": rows}


def duration(seconds: float) -> str:
    """`seconds` as a reader takes in a time: 42 s, 3.5 min, 2.1 h."""
    return f"{seconds:.0f} s" if seconds < 90 else (f"{seconds / 60:.1f} min" if seconds < 5400
                                                      else f"{seconds / 3600:.1f} h")


OFF = 0.3       # an estimate off the clock by more than this share asks for a better one


def against_the_clock(rows: list[dict], device: str) -> dict[str, dict]:
    """Per job kind, over the cached jobs of a plan's `rows` that ran on `device` (a job the
    zoo got from another device says nothing of this one's speed): how many, the plan's
    estimate and the wall time their cards record, their ratio, and whether the estimate is
    off by more than `OFF`. Jobs that train or search nothing (no image passes) are left out."""
    kinds: dict[str, dict] = {}
    for r in rows:
        if r["status"] != "cached" or r["device"] != device or not r["passes"] \
                or r["seconds"] is None:
            continue
        k = kinds.setdefault(r["kind"], {"jobs": 0, "estimate_s": 0.0, "took_s": 0.0})
        k["jobs"] += 1
        k["estimate_s"] += r["estimate_s"]
        k["took_s"] += r["seconds"]
    for k in kinds.values():
        k["took_over_estimate"] = round(k["took_s"] / k["estimate_s"], 2)
        k["off"] = abs(k["took_over_estimate"] - 1) > OFF
        k["estimate_s"], k["took_s"] = round(k["estimate_s"], 1), round(k["took_s"], 1)
    return kinds


def run(paper: str, *, profile: str = "quick", model: str = "auto", dataset: str = "auto",
        device: str = "auto", params: dict | None = None, root: Path = ROOT,
        progress: bool = True, together: int = 1, compiled: bool = False) -> Path:
    """Execute one chapter (arguments already checked by `check_run`) once per seed of
    `params["seeds"]` (default: the chapter's at `profile`): the other seeds first, side by side
    when the executor is Ray, then the first, whose page is the chapter's and which pools what
    they measured (the notebook's `pooled`); returns that page, made `for_reading`. With
    `progress`, what the chapter writes to stderr (its jobs' progress bars) streams to this
    terminal as it runs. `together` > 1 (or `compiled`): the victims the chapter will ask for
    first and the zoo lacks are trained beforehand, up to `together` at once
    (`together.victims`, on the local executor; `compiled`: through `torch.compile`), and the
    results file's record says how many and how long (`trained_before`), which the page's own
    wall time leaves out."""
    params = dict(params or {})
    seeds = params.pop("seeds", None) or list(range(config.seeds(paper, profile)))
    before = _victims_together(paper, together, compiled, seeds, root, progress, profile=profile,
                               model=model, dataset=dataset, device=device, params=params)
    partial, runs, results = root / "book" / ".partial", root / "book" / "runs", root / "book" / "results"
    for folder in (partial, runs, results):
        folder.mkdir(parents=True, exist_ok=True)
    sweep(partial)
    own = f"{paper}.{socket.gethostname()}.{os.getpid()}"
    common = dict(profile=profile, model=model, dataset=dataset, device=device, **params)
    others = {s: partial / f"{own}.seed{s}" for s in seeds[1:]}

    side_by_side = (os.environ.get("REPRO_EXECUTOR") or "local") == "ray" and len(others) > 1

    def at(seed: int, where: Path, pooled: list[str]) -> None:
        execute(paper, {**common, "seed": seed, "pooled": pooled}, where, root,
                 progress and (not side_by_side or seed == seeds[0]))

    with concurrent.futures.ThreadPoolExecutor(len(others) if side_by_side else 1) as pool:
        for done in [pool.submit(at, s, where, []) for s, where in others.items()]:
            done.result()
    first = partial / own
    at(seeds[0], first, [str(_files(where)[1]) for where in others.values()])
    for where in others.values():          # their pages are not the book's
        for file in _files(where) + _measures_files(where):
            file.unlink(missing_ok=True)
    page, table = _files(first)
    if before:
        result = json.loads(table.read_text())
        result["record"]["trained_before"] = before
        table.write_text(json.dumps(result, indent=1))
    name = page_name(paper, profile)
    kept = _measures_files(first)
    if kept[0].is_file():           # a chapter drawn from measures: commit them beside the page
        measures = root / "book" / "measures"
        measures.mkdir(exist_ok=True)
        for file, suffix in zip(kept, (".json", ".safetensors")):
            if file.is_file():
                os.replace(file, measures / f"{name}{suffix}")
            else:
                (measures / f"{name}{suffix}").unlink(missing_ok=True)
    return _publish(page, table, name, root)


def _publish(page: Path, table: Path, name: str, root: Path) -> Path:
    """An executed `page` and its results `table` made the book's page `name`: made for
    reading, sealed, and moved into book/runs and book/results (the results they replace set
    aside when they were measured on another dataset). Returns the page."""
    runs, results = root / "book" / "runs", root / "book" / "results"
    for_reading(page, root)
    staleness.seal(table, page)
    set_aside(results / f"{name}.json", table)
    os.replace(table, results / f"{name}.json")
    os.replace(page, runs / f"{name}.ipynb")
    return runs / f"{name}.ipynb"


def rerender(name: str, root: Path = ROOT, progress: bool = False) -> Path:
    """Draw the page `name` again from its committed measures (book/measures/NAME.json): its
    chapter's notebook executed with the parameters they were computed with, reading no model
    or dataset and computing no job; the page and results file are replaced, the measures
    kept. Returns the page."""
    from .views import measures as stored
    path = root / "book" / "measures" / f"{name}.json"
    params = stored.read(path)["params"]
    partial = root / "book" / ".partial"
    partial.mkdir(parents=True, exist_ok=True)
    sweep(partial)
    where = partial / f"{name}.{socket.gethostname()}.{os.getpid()}"
    execute(name.removesuffix("-paper"), {**params, "measures": str(path.resolve())}, where,
            root, progress)
    return _publish(*_files(where), name, root)


def measured(root: Path = ROOT) -> list[str]:
    """The pages whose measures are committed (book/measures/NAME.json), which `rerender`
    draws."""
    return sorted(p.stem for p in (root / "book" / "measures").glob("*.json"))


def page_name(paper: str, profile: str) -> str:
    """The name of the page and results file a run of `paper` at `profile` writes: a run in
    the paper's setting is a page of its own beside the chapter's (CHAPTER-paper); a run at any
    other profile replaces the chapter's page."""
    return f"{paper}-paper" if profile == "paper" else paper


def paper_pages_in_toc(root: Path = ROOT) -> bool:
    """Put each paper-profile page (book/runs/CHAPTER-paper.ipynb) in _toc.yml right after its
    chapter, titled as the scorecard titles it, where it is not listed yet (Jupyter Book
    refuses a page no table of contents lists). Returns whether _toc.yml changed."""
    from .views.scorecard import title
    path = root / "_toc.yml"
    toc = yaml.safe_load(path.read_text())
    listed = {c["file"] for part in toc["parts"] for c in part["chapters"]}
    added = False
    for page in sorted((root / "book" / "runs").glob("*-paper.ipynb")):
        entry = f"book/runs/{page.stem}"
        chapter = entry.removesuffix("-paper")
        for part in toc["parts"]:
            files = [c["file"] for c in part["chapters"]]
            if entry not in listed and chapter in files:
                part["chapters"].insert(files.index(chapter) + 1,
                                        {"file": entry, "title": title(page.stem, root)})
                listed.add(entry)
                added = True
    if added:
        path.write_text(yaml.safe_dump(toc, sort_keys=False, allow_unicode=True))
    return added


def _victims_together(paper: str, most: int, compiled: bool, seeds: list[int], root: Path,
                      progress: bool, **how) -> dict | None:
    """Before a run of `paper`: its missing first-round victims trained up to `most` at once
    (see `run`; one by one when `most` is 1, which with `compiled` is a compiled training);
    None when there are none to train, or `most` is 1 and not `compiled`."""
    config.check_range("together", most, low=1, integer=True)
    if ((most == 1 and not compiled) or (os.environ.get("REPRO_EXECUTOR") or "local") != "local"
            or not importlib.util.find_spec(f"reprolib.experiments.{paper}")):
        return None
    from . import together
    start = time.perf_counter()
    planned = planned_jobs(paper, **{**how, "params": {**how["params"], "seeds": seeds}},
                           root=root)[1]
    keys = together.victims(planned, most=most, device=how["device"], compile=compiled,
                            progress=progress)
    return {"victims": len(keys), "at_once": most, "compiled": compiled,
            "wall_time_s": round(time.perf_counter() - start, 1)} if keys else None


def set_aside(old: Path, new: Path) -> None:
    """Keep the results `old` as results/DATASET/CHAPTER.json when the run `new` replacing it ran
    on another dataset: a later run on that dataset's chapter says which verdicts changed."""
    if not old.is_file():
        return
    before = json.loads(old.read_text())["record"]["dataset"]
    if before != json.loads(new.read_text())["record"]["dataset"]:
        (old.parent / before).mkdir(exist_ok=True)
        os.replace(old, old.parent / before / old.name)


def sweep(partial: Path) -> list[Path]:
    """Remove from `partial` the files of runs on this machine whose process is gone (a failed
    or killed run's page, named PAPER.HOST.PID...); returns them. Another machine's, or a live
    run's, are left alone."""
    ours, gone = re.compile(rf"[^.]+\.{re.escape(socket.gethostname())}\.(\d+)\."), []
    for file in partial.glob("*"):
        found = ours.match(file.name)
        if not found:
            continue
        try:
            os.kill(int(found[1]), 0)
        except ProcessLookupError:
            file.unlink(missing_ok=True)
            gone.append(file)
        except PermissionError:         # alive, another user's
            pass
    return gone


def _files(where: Path) -> tuple[Path, Path]:
    """The page and the results file of an execution named `where`."""
    return where.parent / f"{where.name}.ipynb", where.parent / f"{where.name}.json"


def _measures_files(where: Path) -> tuple[Path, Path]:
    """The measures (JSON and arrays) an execution named `where` wrote beside its results file
    (`views.page.measures_path`)."""
    from .views.measures import arrays_path
    from .views.page import measures_path
    found = measures_path(_files(where)[1])
    return found, arrays_path(found)


def execute(paper: str, parameters: dict, where: Path, root: Path, progress: bool) -> None:
    """Execute the chapter's notebook with `parameters` into the page and results file named
    `where` (`_files`); its kernel listens on sockets of its own in the user's runtime folder, not
    on plain TCP (which the kernel warns about on every run), named per execution, as two runs
    (or two seeds of one) may share a working folder."""
    import papermill
    from jupyter_core.paths import jupyter_runtime_dir
    from traitlets.config import Config
    sockets = Path(jupyter_runtime_dir()) / f"repro-{where.name}"
    sockets.parent.mkdir(parents=True, exist_ok=True)
    local = Config()
    local.KernelManager.transport, local.KernelManager.ip = "ipc", str(sockets)
    page, table = _files(where)
    table.unlink(missing_ok=True)
    try:
        papermill.execute_notebook(
            str(root / "notebooks" / f"{paper}.ipynb"), str(page),
            parameters={**parameters, "results": str(table)}, cwd=str(root / "notebooks"),
            progress_bar=False, kernel_name="python3",
            stderr_file=sys.stderr if progress else None, config=local)
    except papermill.PapermillExecutionError as err:
        raise RunFailed(f"{paper} at seed {parameters['seed']} failed in cell {err.exec_count}: "
                        f"{err.ename}: {err.evalue}\nThe partly executed notebook is {page} "
                        f"(the next run removes it); nothing was written to book/runs/.") from None
    if not table.is_file():
        raise RuntimeError(f"notebooks/{paper}.ipynb ran but wrote no results: its last cell "
                           f"must call Chapter.finish()")


def for_reading(page: Path, root: Path = ROOT) -> None:
    """Make an executed notebook read as a page: its stderr outputs (progress bars, warnings),
    which went to the terminal while it ran, dropped; the parameters cell and papermill's
    injected one removed from the page; the set-up cell's code hidden, its output (the run
    record) kept; every other code cell folded, for the reader to open. The project's folder
    is cut from the paths papermill wrote into the file (`root`/book/... becomes book/...), so
    the committed page names no machine's folders. Running it twice changes nothing more."""
    import nbformat
    nb = nbformat.read(page, as_version=4)
    local = str(root.resolve()) + "/"
    nb.metadata = nbformat.from_dict(json.loads(json.dumps(nb.metadata).replace(local, "")))
    setup_seen = False
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        cell.outputs = [o for o in cell.outputs
                        if not (o.output_type == "stream" and o.name == "stderr")]
        tags = cell.metadata.setdefault("tags", [])
        if {"parameters", "injected-parameters"} & set(tags):
            cell.source = cell.source.replace(local, "")
            tag = "remove-cell"
        elif not setup_seen:
            tag = "remove-input"
            setup_seen = True
        else:
            tag = "hide-input"
        if not {tag, "remove-cell"} & set(tags):
            tags.append(tag)
    nbformat.write(nb, page)


def stale_text(paper: str, root: Path = ROOT) -> str | None:
    """Why `paper`'s committed run is stale (`staleness.stale_text`); None when it is fresh or
    has no results."""
    found = root / "book" / "results" / f"{paper}.json"
    if not found.is_file():
        return None
    return staleness.stale_text(json.loads(found.read_text())["record"], root)


def mark_stale(page: Path, text: str | None) -> None:
    """Put `text` on the page as its second cell (after the title and the claim), or take the
    note away when `text` is None. The file is rewritten only when the note changes."""
    import nbformat
    nb = nbformat.read(page, as_version=4)
    kept = [c for c in nb.cells if "stale-note" not in c.metadata.get("tags", [])]
    note = ([nbformat.v4.new_markdown_cell(staleness.note(text), id="stale-note",
                                           metadata={"tags": ["stale-note"]})] if text else [])
    cells = kept[:1] + note + kept[1:]
    if [c.source for c in cells] != [c.source for c in nb.cells]:
        nb.cells = cells
        nbformat.write(nb, page)


def build(root: Path = ROOT, *, rerun: bool = False, stale: bool = False, render: bool = False,
          profile: str = "quick", model: str = "auto", dataset: str = "auto",
          device: str = "auto", seeds: list[int] | None = None, progress: bool = True) -> Path:
    """Run every chapter whose page is missing (all with `rerun`, and the stale ones with
    `stale`) at `seeds` (default: each chapter's); with `render`, draw every page whose
    measures are committed again from them (`rerender`); mark the pages that are stale, write
    the scorecard and the verdict counts, and build the HTML book; returns _build/html."""
    # the pages' writer stays out of the chapters' kernels, so that changing it stales no page
    from . import lossy
    from .views import scorecard
    todo = [p for p in chapters(root) if rerun or not (root / "book" / "runs" / f"{p}.ipynb").is_file()
            or (stale and stale_text(p, root))]
    params = check_run(todo, profile=profile, model=model, dataset=dataset, device=device,
                       pairs=[f"seeds={seeds}"] if seeds else [], root=root) if todo else {}
    for paper in todo:
        print(f"repro book: running {paper} ({profile} profile)", flush=True)
        run(paper, profile=profile, model=model, dataset=dataset, device=device,
            params=params[paper], root=root, progress=progress)
    for name in measured(root) if render else []:
        print(f"repro book: drawing {name} from its measures", flush=True)
        rerender(name, root, progress)
    paper_pages_in_toc(root)
    found = scorecard.results(root)
    for paper, result in found.items():
        if (root / "book" / "runs" / f"{paper}.ipynb").is_file():
            mark_stale(root / "book" / "runs" / f"{paper}.ipynb",
                       result["tampered"] or result["stale"])
    (root / "book" / "scorecard.md").write_text(scorecard.scorecard(root, found))
    (root / "book" / "verdicts.md").write_text(scorecard.verdicts_page(root, found))
    (root / "book" / "jpeg.md").write_text(lossy.page(lossy.read(root)))
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    done = subprocess.run([str(jupyter_book), "build", str(root), "--warningiserror",
                           "--keep-going", "--quiet"])
    if done.returncode:
        raise RunFailed(f"jupyter-book build failed (exit {done.returncode}); its messages are above")
    return root / "_build" / "html"
