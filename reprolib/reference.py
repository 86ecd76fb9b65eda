"""The papers' own numbers and claims (`reference/PAPER.yaml`), and the paper-vs-reproduced table.

A yaml holds two lists. `numbers`: values printed in the paper (table, row, column, value or
null when unknown, source, confidence, tolerance); they are compared only when the run used the
paper's setting (profile `paper`, and the `setting`'s dataset and model), otherwise the verdict
is "not comparable", saying which of the three differs. `claims`: what
the paper asserts in words, each turned into a threshold on one measured quantity, so that a claim
can be checked on any dataset:

    reproduced       the number is within `tolerance`, or the claim's threshold holds
    partly           within twice the tolerance, or the threshold missed by at most `margin`
    not reproduced   anything further off
    not comparable   nothing measured, the paper's value unknown, or another setting
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from .config import ParameterError, check_choice

FOLDER = Path(__file__).with_name("reference")
VERDICTS = ("reproduced", "partly", "not reproduced", "not comparable")
OPS = {">=": operator.ge, "<=": operator.le}


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


def number_verdict(n: Number, measured: float | None, same_setting: bool) -> str:
    if measured is None or n.value is None or not same_setting:
        return "not comparable"
    delta = abs(measured - n.value)
    return ("reproduced" if delta <= n.tolerance else
            "partly" if delta <= 2 * n.tolerance else "not reproduced")


def claim_verdict(c: Claim, measured: float | None) -> str:
    if measured is None:
        return "not comparable"
    if OPS[c.op](measured, c.value):
        return "reproduced"
    return "partly" if abs(measured - c.value) <= c.margin else "not reproduced"


def differences(ref: Reference, run: dict) -> list[str]:
    """How the `run` setting (profile, dataset, model) differs from the paper's: empty exactly
    when the paper's numbers can be compared with the run's."""
    wanted = {"profile": "paper", **ref.setting}
    return [f"{k} {run.get(k)} (paper: {v})" for k, v in wanted.items() if run.get(k) != v]


def compare(ref: Reference, measured: dict[str, float], run: dict) -> pd.DataFrame:
    """One row per number and claim of `ref`: the paper's value, ours (from `measured`, keyed
    by number id or claim measure), the difference, the tolerance and the verdict. `run` is the
    run's profile, dataset and model."""
    differs = differences(ref, run)
    rows = []
    for n in ref.numbers:
        ours = measured.get(n.id)
        verdict = number_verdict(n, ours, not differs)
        rows.append({
            "kind": "number", "id": n.id, "what": f"{n.table}: {n.row}, {n.column}",
            "paper": n.value, "ours": ours,
            "delta": ours - n.value if verdict != "not comparable" else None,
            "tolerance": f"± {n.tolerance:g}", "verdict": verdict,
            "why": _why_not(n, ours, differs)})
    for c in ref.claims:
        ours = measured.get(c.measure)
        rows.append({
            "kind": "claim", "id": c.id, "what": c.text, "paper": None, "ours": ours,
            "delta": None, "tolerance": f"{c.measure} {c.op} {c.value:g} (partly within "
                                        f"{c.margin:g})",
            "verdict": claim_verdict(c, ours),
            "why": "" if ours is not None else "not measured in this run"})
    return pd.DataFrame(rows, columns=["kind", "id", "what", "paper", "ours", "delta",
                                       "tolerance", "verdict", "why"])


def _why_not(n: Number, ours, differs: list[str]) -> str:
    if ours is None:
        return "not measured in this run"
    if n.value is None:
        return "the paper's value is not available"
    return "ran " + ", ".join(differs) if differs else ""
