"""The book's generated pages: the scorecard, and the verdict counts the introduction opens with.

Both are written from book/results/*.json by `repro book`. The scorecard gives each chapter a
section: its run (and whether it is stale), the claims, then the paper's numbers it could compare;
the numbers it could not compare fold into one line that says why. Chapters come in their book
order (_toc.yml), not alphabetically.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import yaml

from . import reference
from .. import staleness
from .reference import VERDICTS


def results(root: Path) -> dict[str, dict]:
    """Every chapter's results file, by chapter, in the book's order, each with its `stale`
    note (`staleness.stale_text`, None when fresh) and whether its numbers or only its look are
    stale (`stale_of`), its `tampered` one (`staleness.tampered`:
    changed after its run) and its page's `title`, computed once here."""
    files = {f.stem: json.loads(f.read_text())
             for f in sorted((root / "book" / "results").glob("*.json"))}
    for name, result in files.items():
        page = root / "book" / "runs" / f"{name}.ipynb"
        result["tampered"] = staleness.tampered(name, result, page)
        result["stale"] = staleness.stale_text(result["record"], root)
        result["stale_of"] = staleness.stale_of(result["record"], root)   # numbers or look
        result["title"] = title(name, root)
    order = book_order(root)
    return dict(sorted(files.items(), key=lambda kv: (order.index(kv[0]) if kv[0] in order
                                                      else len(order), kv[0])))


def book_order(root: Path) -> list[str]:
    toc = yaml.safe_load((root / "_toc.yml").read_text()) if (root / "_toc.yml").is_file() else {}
    entries = toc.get("chapters", []) + [c for part in toc.get("parts", [])
                                         for c in part.get("chapters", [])]
    return [Path(c["file"]).name for c in entries if c["file"].startswith("book/runs/")]


def verdict_counts(found: dict[str, dict]) -> str:
    """The datasets the chapters ran on, then a Markdown table: per chapter, how many of its
    rows got each verdict and whether it is stale; then the totals (a chapter changed after its
    run counts nothing)."""
    if not found:
        return "No chapter has been run yet: `repro book` runs them.\n"
    datasets = Counter(_dataset(result["record"]) for result in found.values())
    lines = ["The chapters of this build ran on " + ", ".join(
                 f"**{d}** ({n} chapter{'s' if n > 1 else ''})" for d, n in datasets.items())
             + ".", "",
             "| chapter | " + " | ".join(VERDICTS) + " | stale |",
             "|---|" + "---:|" * len(VERDICTS) + "---|"]
    totals: dict[str, Counter] = {}     # by the lossy copy measured on ("": official pixels)
    for name, result in found.items():
        counts = reference.verdict_counts(row["verdict"] for row in result["comparison"])
        if not result["tampered"]:
            totals.setdefault(result["record"].get("lossy_copy") or "", Counter()).update(counts)
        shown = ["—"] * len(VERDICTS) if result["tampered"] else map(str, counts.values())
        state = ("changed after its run" if result["tampered"] else
                 f"{result['stale_of']}" if result["stale"] else "no")
        lines.append(f"| [{result['title']}](runs/{name}) | " + " | ".join(shown)
                     + f" | {state} |")
    for copy, total in sorted((totals or {"": Counter()}).items()):
        on = f", on a {copy}" if copy else (", on the official pixels" if len(totals) > 1 else "")
        lines.append(f"| **all chapters{on}** | " + " | ".join(f"**{total[v]}**" for v in VERDICTS)
                     + " | |")
    return "\n".join(lines) + "\n"


def verdicts_page(root: Path, found: dict[str, dict] | None = None) -> str:
    """book/verdicts.md, which the introduction includes: the counts and how to read them."""
    return ("**Verdicts at a glance.** How many of each paper's checked claims and published "
            "numbers the last run reproduced; \"inconclusive\" counts the claims about a "
            "defense whose attack did not take hold first (ASR below 80 % on the undefended "
            "victim, or fewer than 3 successful draws), \"not comparable\" the paper's numbers "
            "from a setting (model, dataset, scale) the run did not use. The "
            "[scorecard](scorecard.md) lists every row.\n\n"
            + verdict_counts(results(root) if found is None else found))


def scorecard(root: Path, found: dict[str, dict] | None = None) -> str:
    """The scorecard page (`found`: `results(root)`, if already read)."""
    found = results(root) if found is None else found
    lines = ["# Scorecard", "",
             "Every claim and published number the chapters check, with the verdict of the last "
             "run, the mean over its seeds (\"ours\") and their 95 % Student's t interval (\"1 "
             "seed\" when the chapter ran one). Numbers are compared only in the paper's own "
             "setting; claims are checked on whatever dataset the chapter ran.", "",
             verdict_counts(found)]
    for name, result in found.items():
        lines += chapter_section(name, result)
    return "\n".join(lines + findings(found))


def chapter_section(name: str, result: dict) -> list[str]:
    r, rows = result["record"], result["comparison"]
    n = len(r["seeds"])
    lines = [f"## {result['title']}", "",
             f"[The chapter](runs/{name}): profile {r['profile']} · dataset {_dataset(r)} · "
             f"model {r['model']} · device {r['device']} · {n} seed{'s' if n > 1 else ''} · "
             f"code {r['code_version']}", ""]
    before = r.get("trained_before")
    if before:
        count = before["victims"]
        lines += [f"Its {count} victim{'s were' if count > 1 else ' was'} trained up to "
                  f"{before['at_once']} at once{', compiled,' if before.get('compiled') else ''} "
                  f"before the page ran, in {before['wall_time_s']:.0f} s that the page's wall "
                  f"time leaves out.", ""]
    if result["tampered"]:
        return lines + [staleness.note(result["tampered"]), ""]
    if result["stale"]:
        lines += [staleness.note(result["stale"]), ""]
    claims = [x for x in rows if x["kind"] == "claim"]
    numbers = [x for x in rows if x["kind"] == "number" and x["verdict"] != "not comparable"]
    if claims:
        lines += ["| claim | ours | 95 % interval | verdict |", "|---|---:|---:|---|"]
        lines += [_row([x["what"], _num(x["ours"]), reference.interval_text(x),
                        reference.verdict_text(x)]) for x in claims]
        lines.append("")
        lines += [f"*Inconclusive:* {x['what']}: {x['why']}.\n" for x in claims
                  if x["verdict"] == "inconclusive"]
    if numbers:
        lines += ["| the paper's number | paper | ours | 95 % interval | verdict | tolerance |",
                  "|---|---:|---:|---:|---|---:|"]
        lines += [_row([x["what"], _num(x["paper"]), _num(x["ours"]), reference.interval_text(x),
                        reference.verdict_text(x), x["tolerance"]]) for x in numbers]
        lines.append("")
    apart = Counter(x["why"] for x in rows
                    if x["kind"] == "number" and x["verdict"] == "not comparable")
    for why, n in apart.items():
        lines += [f"{n} of the paper's numbers not comparable: {why}.", ""]
    return lines


def findings(found: dict[str, dict]) -> list[str]:
    """The measured findings of the chapters that state some (the comparison), as a section of
    their own: they are ours, not a paper's claims, and have no verdict."""
    rows = [_row([f"[{result['title']}](runs/{name})", x["finding"], _num(x["value"]),
                  result["record"]["profile"], result["record"]["dataset"]])
            for name, result in found.items() for x in result.get("findings", [])]
    if not rows:
        return []
    return ["## Measured findings", "",
            "What a chapter measured and states as its own finding, not as any paper's claim: "
            "nothing to reproduce, so no verdict.", "",
            "| chapter | finding | value | profile | dataset |", "|---|---|---|---|---|",
            *rows, ""]


def title(name: str, root: Path) -> str:
    """The chapter's title as its page shows it (the executed page's first heading, else the
    notebook's), so that every table that names the chapter names it as the page does; a
    paper-profile page (CHAPTER-paper) is its chapter's title, "in the paper's setting"."""
    if name.endswith("-paper"):
        return f"{title(name.removesuffix('-paper'), root)}, in the paper's setting"
    for page in (root / "book" / "runs" / f"{name}.ipynb", root / "notebooks" / f"{name}.ipynb"):
        if page.is_file():
            first = json.loads(page.read_text())["cells"][0]["source"]
            heading = "".join(first).split("\n")[0]
            if heading.startswith("# "):
                return heading[2:].strip()
    return reference.load(name).paper if name in reference.papers() else name


def _dataset(record: dict) -> str:
    """The run's dataset and, where the run recorded it, which copy it read."""
    source = record.get("dataset_source")
    return f"{record['dataset']} ({source})" if source else record["dataset"]


def _row(cells: list) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def _num(value) -> str:
    return "—" if value is None else f"{value:.2f}"
