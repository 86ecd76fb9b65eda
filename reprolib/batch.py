"""One prepared command for a machine lent for minutes: chapters within a time budget, and
everything it made in one flat folder.

`repro batch CHAPTER... --budget SECONDS --out DIR` plans first (`book.plan`: each missing job's
image passes over the training throughput measured on this device, a lower bound, scaled by
`margin`), says which chapters fit the budget and which it leaves out, and only then starts: the
speed benchmark (`bench/together_speed.py`, when asked), whose best N (compiled or not) trains
the victims together (`repro run --together`, where the bench measured a gain), then each chapter
that fits,
as `repro run` in a child process stopped when the budget runs out. The folder gets each
chapter's executed page and results as `repro run` names them (`book.page_name`:
CHAPTER-paper.ipynb and .json in the paper's setting; the measures of a page drawn from them as
CHAPTER.measures.json and .safetensors, for book/measures/), and `batch.json`: the plan, the bench,
what each chapter took, and per job kind the plan's estimate beside the wall time the cache's
cards record (`book.against_the_clock`). `gpu/run.sh` is the same command on a bare offline
machine, after installing a local wheel folder.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from . import book, config, devices
from .config import ROOT

BENCH_SECONDS = 150      # what the bench's default (10,000 images, N = 1 2 4 8) is given
GAIN = 1.2               # the least bench ratio for which victims are trained together


def estimate(papers: list[str], params: dict[str, dict], margin: float, **how) -> list[dict]:
    """Per chapter: the training throughput its plan measured (`book.plan`) and the seconds its
    missing jobs should take, the plan's lower bound times `margin`. A job two chapters share
    counts in the first."""
    seen, plans = set(), []
    for paper in papers:
        found = book.plan(paper, params=params[paper], **how)
        missing = [r for r in found["rows"] if r["status"] == "missing" and r["key"] not in seen]
        seen.update(r["key"] for r in found["rows"])
        plans.append({"chapter": paper, "throughput": found["throughput"],
                      "seconds": margin * sum(r["seconds"] for r in missing)})
    return plans


def fitting(plans: list[dict], budget: float) -> tuple[list[dict], list[dict]]:
    """The chapters to run, in the order given, each only if it fits what the ones before it
    left of `budget`; and those left out."""
    run, left_out, used = [], [], 0.0
    for p in plans:
        if used + p["seconds"] <= budget:
            run.append(p)
            used += p["seconds"]
        else:
            left_out.append(p)
    return run, left_out


def child(argv: list[str], seconds: float, root: Path) -> tuple[int | None, float]:
    """`python -m <argv>` in `root`, in a process group of its own, stopped (interrupt, then
    kill) after `seconds`. Returns its exit status (None if stopped) and its wall time."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(root), *filter(None, [os.environ.get("PYTHONPATH")])])}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", *argv], cwd=root, env=env,
                            start_new_session=True)
    try:
        return proc.wait(timeout=max(1.0, seconds)), time.perf_counter() - start
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGINT)          # the run says what it kept and exits
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        return None, time.perf_counter() - start


def best_together(bench: dict | None) -> tuple[int, bool]:
    """The N, and whether compiled, of the stacked training (what `repro run --together` does)
    whose last epoch the bench measured fastest against one after another, if by at least
    `GAIN`; else (1, False)."""
    rows = [r for r in (bench or {}).get("rows", [])
            if r["way"] in ("stacked", "stacked_compiled") and (r.get("epoch_ratio") or 0) >= GAIN]
    if not rows:
        return 1, False
    best = max(rows, key=lambda r: r["epoch_ratio"])
    return best["jobs"], best["way"] == "stacked_compiled"


def run(papers: list[str], *, budget: float, out: Path, profile: str, model: str,
        dataset: str, device: str, pairs: list[str], bench: list[str] | None = None,
        margin: float = 1.5, root: Path = ROOT, say=print) -> dict:
    """See the module's docstring; `bench`: None for no bench, else its arguments (beyond
    --device and --json). Returns what batch.json holds."""
    config.check_range("--budget", budget, low=0, low_open=True)
    config.check_range("--margin", margin, low=1)
    deadline = time.monotonic() + budget
    out.mkdir(parents=True, exist_ok=True)
    how = dict(profile=profile, model=model, dataset=dataset, device=device)
    params = book.check_run(papers, pairs=pairs, root=root, **how)
    plans = estimate(papers, params, margin, root=root, **how)
    benching = bench is not None
    chosen, left_out = fitting(plans, deadline - time.monotonic()
                               - (BENCH_SECONDS if benching else 0))
    say(f"batch: {budget:.0f} s in all, {deadline - time.monotonic():.0f} s left after planning"
        f"{f', {BENCH_SECONDS} s of it for the bench' if benching else ''}; each chapter's plan "
        f"× {margin:g}:")
    for p in plans:
        say(f"  {p['chapter']:<17} ~{book.duration(p['seconds']):>9}  "
            f"{'runs' if p in chosen else 'left out: over what the budget leaves'}")
    summary = {"budget_s": budget, "margin": margin, **how, "pairs": pairs,
               "left_out": [p["chapter"] for p in left_out], "chapters": [], "bench": None}

    def write():
        (out / "batch.json").write_text(json.dumps(summary, indent=1) + "\n")

    if benching:
        status, _ = child(["bench.together_speed", *bench, "--device", device, "--json",
                           str(out / "bench.json")], min(BENCH_SECONDS, budget), root)
        if status == 0:
            summary["bench"] = json.loads((out / "bench.json").read_text())
            (out / "bench.json").unlink()
        else:
            say(f"batch: the bench {'ran out of time' if status is None else 'failed'}; "
                f"victims are trained one by one")
    together, compiled = best_together(summary["bench"])
    for p in chosen:
        paper, left = p["chapter"], deadline - time.monotonic()
        argv = ["reprolib.cli", "run", paper, "--profile", profile, "--model", model,
                "--dataset", dataset, "--device", device, "--together", str(together),
                *(["--compiled"] if compiled else []),
                *[a for pair in pairs for a in ("-p", pair)]]
        say(f"batch: {paper}, {left:.0f} s left")
        status, took = child(argv, left, root)
        done = {"chapter": paper, "estimate_s": round(p["seconds"], 1),
                "wall_time_s": round(took, 1), "together": together, "compiled": compiled,
                "status": {0: "done", None: "stopped: out of time"}.get(status,
                                                                         f"failed ({status})")}
        if status == 0:
            name = book.page_name(paper, profile)
            for kind, folder in ((".ipynb", "runs"), (".json", "results")):
                shutil.copy(root / "book" / folder / f"{name}{kind}", out / f"{name}{kind}")
            for kind in (".json", ".safetensors"):     # a page drawn from measures: them too
                kept = root / "book" / "measures" / f"{name}{kind}"
                if kept.is_file():
                    shutil.copy(kept, out / f"{name}.measures{kind}")
            try:        # the page is safe in `out`; a clock that fails says why and no more
                rows = book.plan(paper, params=params[paper], throughput=p["throughput"],
                                 reading=True, root=root, **how)["rows"]
                done["clock"] = book.against_the_clock(rows, devices.name(devices.resolve(device)))
            except Exception as err:
                done["clock"] = {"error": f"{type(err).__name__}: {err}"[:300]}
        summary["chapters"].append(done)
        write()
        say(f"batch: {paper} {done['status']} in {book.duration(took)} (planned "
            f"~{book.duration(p['seconds'])})")
    write()
    return summary
