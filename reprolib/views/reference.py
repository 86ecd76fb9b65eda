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
    inconclusive     a claim about a defense whose attack did not take hold (its `premise`)
    not comparable   nothing measured, the paper's value unknown, or another setting

With several seeds the verdict reads their 95 % interval (`seeds.interval`):

    reproduced       the paper's number lies in the interval widened by `tolerance` on each
                     side, or the whole interval is on the claim's side of its threshold
    partly           the number lies in the interval widened by twice the tolerance, or the
                     mean is on the claim's side and the interval straddles the threshold
    not reproduced   anything else

A claim about a defense names its `premise`: the measure that says the attack took hold
before the defense, and the rule it must meet on every seed (`PREMISES`: ASR ≥ 80 % on the
undefended victim; for a sample-targeted attack, at least 3 successful draws). Where it does
not, a verdict would judge the defense on a backdoor that was not there, and the claim is
"inconclusive" instead.

An interval of a bounded quantity (a percentage: `bounds`) is clipped to its range.
"""
from __future__ import annotations

import operator
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from ..config import ParameterError, check_choice
from .seeds import interval, values_of

FOLDER = Path(__file__).parent.parent / "reference"     # reprolib/reference/*.yaml
VERDICTS = ("reproduced", "partly", "not reproduced", "inconclusive", "not comparable")
PREMISES = {   # rule: (the least value on every seed, what it means)
    "took_hold": (80.0, "the attack took hold (ASR ≥ 80 % on the undefended victim)"),
    "draws": (3.0, "the attack succeeded in at least 3 draws"),
}
PERCENT_COLUMNS = {"ASR", "C-Acc", "R-Acc", "DER", "CA"}
OPS = {">=": operator.ge, "<=": operator.le}
SIGNS = {">=": "≥", "<=": "≤"}


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

    @property
    def bounds(self) -> tuple[float, float] | None:
        return (0.0, 100.0) if self.column in PERCENT_COLUMNS or "%" in self.column else None


@dataclass(frozen=True)
class Claim:
    id: str
    text: str
    measure: str
    op: str
    value: float
    margin: float
    source: str
    premise: dict | None = None     # {"measure": ..., "rule": a key of PREMISES}
    bounds: tuple[float, float] | None = None


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
        if c.premise is not None:
            if set(c.premise) != {"measure", "rule"}:
                raise ParameterError(f"{where}: claim {c.id!r} premise has the keys 'measure' "
                                     f"and 'rule', not {sorted(c.premise)}")
            check_choice(f"{where}: claim {c.id!r} premise rule", c.premise["rule"], PREMISES)
    ids = [x.id for x in numbers + claims]
    if len(ids) != len(set(ids)):
        raise ParameterError(f"{where}: ids must be unique, got {ids}")
    return ref


def bounded(values: list[float], bounds) -> tuple[float, float | None, float | None]:
    """`seeds.interval` of `values`, its ends clipped to `bounds` (low, high) when given."""
    mean, low, high = interval(values)
    if bounds is not None and low is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return mean, low, high


def number_verdict(n: Number, measured, same_setting: bool) -> str:
    """The verdict on `n` of `measured`: one value, or a list of one per seed."""
    values = values_of(measured)
    if not values or n.value is None or not same_setting:
        return "not comparable"
    mean, low, high = bounded(values, n.bounds)
    if low is None:
        low = high = mean
    off = max(low - n.value, n.value - high, 0)   # how far the paper's value is outside
    return ("reproduced" if off <= n.tolerance else
            "partly" if off <= 2 * n.tolerance else "not reproduced")


def premise_unmet(c: Claim, premise) -> str:
    """Why `c`'s premise does not hold for `premise` (its measure: one value, or one per seed;
    a seed that did not measure it fails it), or "" when it holds or `c` has none."""
    if c.premise is None:
        return ""
    least, means = PREMISES[c.premise["rule"]]
    values = premise if isinstance(premise, list) else [premise]
    if values and all(v is not None and v >= least for v in values):
        return ""
    seen = [v for v in values if v is not None]
    here = f"here {min(seen):g}" if seen else "not measured"
    return f"premise not met: {means}; {here}"


def claim_verdict(c: Claim, measured, premise=None) -> str:
    """The verdict on `c` of `measured` (one value, or a list of one per seed), given the
    value(s) of its premise's measure."""
    values = values_of(measured)
    if not values:
        return "not comparable"
    if premise_unmet(c, premise):
        return "inconclusive"
    mean, low, high = bounded(values, c.bounds)
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


def compare(ref: Reference, measured: dict, run: dict, lossy_copy: str | None = None
            ) -> pd.DataFrame:
    """One row per number and claim of `ref`: the paper's value, ours (the mean of the values
    in `measured`, keyed by number id or claim measure: one value, or a list of one per seed),
    its 95 % interval ("low", "high"; empty with one seed) and how many seeds measured it
    ("n"), the difference, the tolerance and the verdict. `run` is the run's profile, dataset
    and model. `lossy_copy`: the lossy copy of the dataset the run read ("JPEG-75 copy"), which
    every verdict it gives carries ("on"), so that those are kept apart from verdicts on the
    official pixels."""
    differs = differences(ref, run)
    rows = []
    for n in ref.numbers:
        ours = _pooled(measured.get(n.id), n.bounds)
        verdict = number_verdict(n, measured.get(n.id), not differs)
        rows.append({
            "kind": "number", "id": n.id, "what": f"{n.table}: {n.row}, {n.column}",
            "paper": n.value, **ours,
            "delta": ours["ours"] - n.value if verdict != "not comparable" else None,
            "tolerance": f"± {n.tolerance:g}", "verdict": verdict,
            "why": _why_not(n, ours["ours"], differs)})
    for c in ref.claims:
        ours = _pooled(measured.get(c.measure), c.bounds)
        premise = measured.get(c.premise["measure"]) if c.premise else None
        unmet = premise_unmet(c, premise)
        rows.append({
            "kind": "claim", "id": c.id, "what": c.text, "paper": None, **ours,
            "delta": None, "tolerance": f"{c.measure} {SIGNS[c.op]} {c.value:g} (partly within "
                                        f"{c.margin:g})",
            "verdict": claim_verdict(c, measured.get(c.measure), premise),
            "why": ("not measured in this run" if ours["ours"] is None else unmet)})
    for row in rows:
        row["on"] = lossy_copy if lossy_copy and row["verdict"] != "not comparable" else ""
    return pd.DataFrame(rows, columns=["kind", "id", "what", "paper", "ours", "low", "high", "n",
                                       "delta", "tolerance", "verdict", "why", "on"])


def verdict_text(row) -> str:
    """A row's verdict as the page and the scorecard print it: with the lossy copy it was
    measured on, if any ("reproduced, on a JPEG-75 copy")."""
    return row["verdict"] + (f", on a {row['on']}" if row.get("on") else "")


def _pooled(measured, bounds) -> dict:
    """Mean, interval (within `bounds`) and count of one row's measured values."""
    values = values_of(measured)
    if not values:
        return {"ours": None, "low": None, "high": None, "n": 0}
    mean, low, high = bounded(values, bounds)
    return {"ours": mean, "low": low, "high": high, "n": len(values)}


def interval_text(row) -> str:
    """A comparison row's interval as the page and the scorecard print it."""
    n = row.get("n")
    if not n:
        return ""
    if n == 1:
        return "1 seed"
    return f"[{row['low']:.2f}, {row['high']:.2f}], n = {n}".replace(" ", "\u00a0")  # one line


def _why_not(n: Number, ours, differs: list[str]) -> str:
    if ours is None:
        return "not measured in this run"
    if n.value is None:
        return "the paper's value is not available"
    return "ran " + ", ".join(differs) if differs else ""
