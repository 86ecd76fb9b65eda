"""The papers' own numbers and claims (`reference/PAPER.yaml`), and the paper-vs-reproduced table.

A yaml holds two lists. `numbers`: values printed in the paper (table, row, column, value or
null when unknown, source, confidence, tolerance); they are compared only when the run used the
paper's setting (profile `paper`, and the `setting`'s dataset and model), otherwise the verdict
is "not comparable", saying which of the three differs. `claims`: what
the paper asserts in words, each turned into a threshold on one measured quantity, so that a claim
can be checked on any dataset:

With one seed:

    reproduced       the number is within `tolerance`, or the claim's threshold holds
    partly           within twice the tolerance, or the threshold missed by at most `margin`
    not reproduced   anything further off
    not comparable   nothing measured, the paper's value unknown, or another setting

With several seeds the verdict reads their 95 % interval (`seeds.interval`):

    reproduced       the paper's number lies in the interval widened by `tolerance` on each
                     side, or the whole interval is on the claim's side of its threshold
    partly           the number lies in the interval widened by twice the tolerance, or the
                     mean is on the claim's side and the interval straddles the threshold
    not reproduced   anything else
"""
from __future__ import annotations

import operator
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from .config import ParameterError, check_choice
from .seeds import interval, values_of

FOLDER = Path(__file__).with_name("reference")
VERDICTS = ("reproduced", "partly", "not reproduced", "not comparable")
OPS = {">=": operator.ge, "<=": operator.le}


def verdict_counts(verdicts) -> dict[str, int]:
    """How many of `verdicts` are each of VERDICTS, in that order."""
    found = Counter(verdicts)
    return {v: found.get(v, 0) for v in VERDICTS}


@dataclass(frozen=True)
class Number:
    id: str
    table: str
    row: str
    column: str
    value: float | None
    source: str
    confidence: str
    tolerance: float


@dataclass(frozen=True)
class Claim:
    id: str
    text: str
    measure: str
    op: str
    value: float
    margin: float
    source: str


@dataclass(frozen=True)
class Reference:
    paper: str
    citation: str
    setting: dict
    numbers: list[Number] = field(default_factory=list)
    claims: list[Claim] = field(default_factory=list)
    note: str = ""
    recipe: dict = field(default_factory=dict)   # how the paper's code trains its models, as
                                                  # changes to BackdoorBench's recipe


def papers() -> list[str]:
    return sorted(p.stem for p in FOLDER.glob("*.yaml"))


def load(paper: str) -> Reference:
    """The reference of `paper`, with every field checked."""
    check_choice("paper", paper, papers())
    raw = yaml.safe_load((FOLDER / f"{paper}.yaml").read_text())
    where = f"reference/{paper}.yaml"
    try:
        numbers = [Number(**n) for n in raw.get("numbers") or []]
        claims = [Claim(**c) for c in raw.get("claims") or []]
        ref = Reference(raw["paper"], raw["citation"], raw["setting"], numbers, claims,
                        raw.get("note", ""), raw.get("recipe") or {})
    except (TypeError, KeyError) as err:
        raise ParameterError(f"{where}: {err}") from None
    for c in claims:
        check_choice(f"{where}: claim {c.id!r} op", c.op, OPS)
    ids = [x.id for x in numbers + claims]
    if len(ids) != len(set(ids)):
        raise ParameterError(f"{where}: ids must be unique, got {ids}")
    return ref


def number_verdict(n: Number, measured, same_setting: bool) -> str:
    """The verdict on `n` of `measured`: one value, or a list of one per seed."""
    values = values_of(measured)
    if not values or n.value is None or not same_setting:
        return "not comparable"
    mean, low, high = interval(values)
    if low is None:
        low = high = mean
    off = max(low - n.value, n.value - high, 0)   # how far the paper's value is outside
    return ("reproduced" if off <= n.tolerance else
            "partly" if off <= 2 * n.tolerance else "not reproduced")


def claim_verdict(c: Claim, measured) -> str:
    """The verdict on `c` of `measured`: one value, or a list of one per seed."""
    values = values_of(measured)
    if not values:
        return "not comparable"
    mean, low, high = interval(values)
    holds = OPS[c.op]
    if low is None:
        if holds(mean, c.value):
            return "reproduced"
        return "partly" if abs(mean - c.value) <= c.margin else "not reproduced"
    if holds(low, c.value) and holds(high, c.value):
        return "reproduced"
    return "partly" if holds(mean, c.value) else "not reproduced"


def differences(ref: Reference, run: dict) -> list[str]:
    """How the `run` setting (profile, dataset, model) differs from the paper's: empty exactly
    when the paper's numbers can be compared with the run's."""
    wanted = {"profile": "paper", **ref.setting}
    return [f"{k} {run.get(k)} (paper: {v})" for k, v in wanted.items() if run.get(k) != v]


def compare(ref: Reference, measured: dict, run: dict) -> pd.DataFrame:
    """One row per number and claim of `ref`: the paper's value, ours (the mean of the values
    in `measured`, keyed by number id or claim measure: one value, or a list of one per seed),
    its 95 % interval ("low", "high"; empty with one seed) and how many seeds measured it
    ("n"), the difference, the tolerance and the verdict. `run` is the run's profile, dataset
    and model."""
    differs = differences(ref, run)
    rows = []
    for n in ref.numbers:
        ours = _pooled(measured.get(n.id))
        verdict = number_verdict(n, measured.get(n.id), not differs)
        rows.append({
            "kind": "number", "id": n.id, "what": f"{n.table}: {n.row}, {n.column}",
            "paper": n.value, **ours,
            "delta": ours["ours"] - n.value if verdict != "not comparable" else None,
            "tolerance": f"± {n.tolerance:g}", "verdict": verdict,
            "why": _why_not(n, ours["ours"], differs)})
    for c in ref.claims:
        ours = _pooled(measured.get(c.measure))
        rows.append({
            "kind": "claim", "id": c.id, "what": c.text, "paper": None, **ours,
            "delta": None, "tolerance": f"{c.measure} {c.op} {c.value:g} (partly within "
                                        f"{c.margin:g})",
            "verdict": claim_verdict(c, measured.get(c.measure)),
            "why": "" if ours["ours"] is not None else "not measured in this run"})
    return pd.DataFrame(rows, columns=["kind", "id", "what", "paper", "ours", "low", "high", "n",
                                       "delta", "tolerance", "verdict", "why"])


def _pooled(measured) -> dict:
    """Mean, interval and count of one row's measured values."""
    values = values_of(measured)
    if not values:
        return {"ours": None, "low": None, "high": None, "n": 0}
    mean, low, high = interval(values)
    return {"ours": mean, "low": low, "high": high, "n": len(values)}


def interval_text(row) -> str:
    """A comparison row's interval as the page and the scorecard print it."""
    n = row.get("n")
    if not n:
        return ""
    if n == 1:
        return "1 seed"
    return f"[{row['low']:.2f}, {row['high']:.2f}], n = {n}"


def _why_not(n: Number, ours, differs: list[str]) -> str:
    if ours is None:
        return "not measured in this run"
    if n.value is None:
        return "the paper's value is not available"
    return "ran " + ", ".join(differs) if differs else ""
