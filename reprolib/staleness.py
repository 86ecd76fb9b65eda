"""Whether a chapter's committed run is older than the code it executed.

A run records the content hash of every file it executed (`fingerprint`): its notebook, its
reference numbers (reference/<chapter>.yaml), every reprolib module its kernel imported, and every
other chapter's results file it read through `read_json` (or found missing, so that a later run of
that chapter stales it too). `changed` compares those hashes with the files as they are now.
Hashes, not commits: a page stays fresh across commits that leave its files alone, and goes
stale on an uncommitted edit.

Staleness tells numbers from looks (`stale_of`): a page's *numbers* are stale when a file that
computes them changed (any executed file outside `reprolib/views/`); its *look* alone is stale
when only view code changed, which re-rendering the page mends, no rerun needed.

`repro run` also seals what it wrote: the results file records its own hash and its page's
(`seal`), so that a results file or a page edited by hand after the run is seen (`tampered`).
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from .config import ROOT


ABSENT = "absent"          # the hash of a file a run looked for and did not find
_read: set[Path] = set()    # the results files this process's run has read, or looked for


PARAMETERS = "#parameters"   # a notebook's parameters cell, hashed on its own


def digest(path: Path) -> str:
    """The content hash of `path`; of a notebook's parameters cell for NOTEBOOK#parameters."""
    if path.name.endswith(PARAMETERS):
        notebook = path.with_name(path.name.removesuffix(PARAMETERS))
        if not notebook.is_file():
            return ABSENT
        cells = [c for c in json.loads(notebook.read_text())["cells"]
                 if "parameters" in c.get("metadata", {}).get("tags", [])]
        source = "".join(cells[0]["source"]) if cells else ""
        return hashlib.sha256(source.encode()).hexdigest()[:16]
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else ABSENT


def read_json(path: Path) -> dict | None:
    """Another chapter's results file, or None where it is missing; either way the run records
    it, so that a new run of that chapter stales this one."""
    _read.add(Path(path).resolve())
    return json.loads(path.read_text()) if path.is_file() else None


def executed_files(chapter: str, root: Path = ROOT) -> list[Path]:
    """The files a run of `chapter` in this process has executed so far."""
    package = root / "reprolib"
    modules = {Path(m.__file__).resolve() for m in list(sys.modules.values())
               if getattr(m, "__file__", None)}
    return sorted({p for p in modules if p.is_relative_to(package)}
                  | {p for p in _read if p.is_relative_to(root)}
                  | {root / "notebooks" / f"{chapter}.ipynb",
                     package / "reference" / f"{chapter}.yaml"})


def fingerprint(chapter: str, root: Path = ROOT) -> dict[str, str]:
    """{path relative to the project: content hash} of what `executed_files` names."""
    root = root.resolve()
    found = {p.relative_to(root).as_posix(): digest(p) for p in executed_files(chapter, root)
             if p.is_file() or p in _read}
    notebook = f"notebooks/{chapter}.ipynb"
    found[notebook + PARAMETERS] = digest(root / (notebook + PARAMETERS))
    return found


def changed(executed: dict[str, str], root: Path = ROOT) -> list[str]:
    """The files of `executed` whose content differs now, or that are gone."""
    return [name for name, h in sorted(executed.items()) if digest(root / name) != h]


def note(text: str) -> str:
    """The stale note as the page and the scorecard show it."""
    return f"**{text}**"


VIEWS = "reprolib/views/"     # the files whose change stales a page's look, not its numbers


def is_view(name: str, measured: bool = False) -> bool:
    """Whether the executed file `name` (relative to the project) draws pages rather than
    computes their numbers: the views, and for a page drawn from its measures (`measured`)
    also its notebook (its parameters cell apart, which says what is computed) and the papers'
    numbers it is set against."""
    return name.startswith(VIEWS) or measured and (
        name.startswith("notebooks/") and name.endswith(".ipynb")
        or name.startswith("reprolib/reference/"))


def stale_of(record: dict, root: Path = ROOT) -> str | None:
    """"numbers" when a file that computes the run's numbers changed since (or the run did not
    record its files), "look" when only view files did, None when the run is fresh."""
    return _staleness(record, root)[0]


def _staleness(record: dict, root: Path) -> tuple[str | None, list[str]]:
    """`stale_of`, and the files that changed."""
    executed = record.get("executed")
    if executed is None:
        return "numbers", []
    files = changed(executed, root)
    if not files:
        return None, []
    measured = bool(record.get("measures"))
    return ("look" if all(is_view(f, measured) for f in files) else "numbers"), files


def _listed(files: list[str]) -> str:
    return ", ".join(f"`{f}`" for f in files[:4]) + (f" and {len(files) - 4} more"
                                                     if len(files) > 4 else "")


def rerun_command(record: dict) -> str:
    """The command that runs the page of `record` again: `repro book --stale` reruns the
    chapters' own pages; a page in the paper's setting is run on its own."""
    if record.get("profile") == "paper" and record.get("chapter"):
        return f"`repro run {record['chapter']} --profile paper`"
    return "`repro book --stale`"


def stale_text(record: dict, root: Path = ROOT) -> str | None:
    """One sentence saying why the run of `record` is stale, numbers or look; None when it is
    not."""
    kind, files = _staleness(record, root)
    if kind is None:
        return None
    rerun = rerun_command(record)
    if record.get("executed") is None:
        return (f"Stale: run at code {record['code_version']}, which did not record the files "
                f"it executed. {rerun} reruns it.")
    if kind == "numbers":
        computing = [f for f in files if not is_view(f, bool(record.get("measures")))]
        return (f"Stale numbers: run at code {record['code_version']}; {_listed(computing)} "
                f"changed since, code that computes this page's numbers. {rerun} reruns it.")
    mend = ("`repro book --render` draws it again from its committed measures" if
            record.get("measures") else f"this run predates committed measures, so {rerun} "
            f"reruns it")
    return (f"Stale look: run at code {record['code_version']}; only view code changed since "
            f"({_listed(files)}), so the numbers are current, but the page was drawn by the old "
            f"views: {mend}.")


def page_digest(page: Path) -> str:
    """The content hash of an executed page: each cell's type, source and outputs, the notes
    `repro book` puts on it (`stale-note` cells) aside."""
    cells = json.loads(page.read_text())["cells"]
    seen = [[c["cell_type"], c["source"], c.get("outputs", [])] for c in cells
            if "stale-note" not in c.get("metadata", {}).get("tags", [])]
    return hashlib.sha256(json.dumps(seen, sort_keys=True).encode()).hexdigest()[:16]


def results_digest(payload: dict) -> str:
    """The content hash of a results file's payload, its seal aside."""
    kept = {k: v for k, v in payload.items() if k != "sealed"}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:16]


def seal(results: Path, page: Path) -> None:
    """Record in the results file of a run its own hash and its page's, as the run wrote them."""
    from .atomic import atomic_write
    payload = json.loads(results.read_text())
    payload["sealed"] = {"results": results_digest(payload), "page": page_digest(page)}
    atomic_write(results, json.dumps(payload, indent=1).encode())


def tampered(paper: str, payload: dict, page: Path) -> str | None:
    """One sentence saying that `paper`'s results file (`payload`) or its page no longer match
    the hashes its run recorded; None when they do, or when the run predates seals."""
    recorded = payload.get("sealed")
    if recorded is None:
        return None
    changed = ([f"`book/results/{paper}.json`"] if results_digest(payload) != recorded["results"]
               else []) + ([f"`book/runs/{paper}.ipynb`"] if page.is_file()
                           and page_digest(page) != recorded["page"] else [])
    if not changed:
        return None
    record = payload.get("record", {})
    again = (rerun_command(record) if record.get("profile") == "paper" else f"`repro run {paper}`")
    return (f"Changed after its run: {' and '.join(changed)} no longer match the hashes the run "
            f"recorded, so the scorecard does not count this chapter. {again} runs it again.")
