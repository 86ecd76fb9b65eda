"""A chapter over several seeds: the seeds of a run, Student's t intervals, and tables over
seeds.

Each seed is a whole run of the chapter: its own victims, poison sets, defender subsets and
draws, all through the zoo's jobs. `repro run --seeds` runs the notebook once per seed; the
page tells the story at its first seed, and what every seed measured is pooled here. The
interval of n values is mean ± t(0.975, n − 1) · s / √n, s the sample standard deviation: the
95 % interval of the mean if the seeds' values were normal.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from ..config import ParameterError, check_range
from .tables import header, precision as decimals

LEVEL = 0.95


def values_of(measured) -> list[float]:
    """The finite values in `measured`: a number, None, or a list of them (one per seed)."""
    items = measured if isinstance(measured, (list, tuple)) else [measured]
    return [float(v) for v in items if v is not None and math.isfinite(float(v))]


def interval(values: list[float], level: float = LEVEL) -> tuple[float, float | None, float | None]:
    """Mean and Student's t interval at `level` of `values` (one per seed); with one value the
    interval is unknown (None, None)."""
    if not values:
        raise ValueError("an interval needs at least one value")
    mean = float(np.mean(values))
    if len(values) < 2:
        return mean, None, None
    half = float(stats.t.ppf(0.5 + level / 2, len(values) - 1)
                 * np.std(values, ddof=1) / math.sqrt(len(values)))
    return mean, mean - half, mean + half


def resolve(seed, seeds, default: int) -> list[int]:
    """The seeds a chapter runs: `seeds` as given, else `seed` alone, else 0 … `default` − 1."""
    if seed is not None and seeds is not None:
        raise ParameterError(f"seed={seed!r} and seeds={seeds!r}: give one of them (seed for "
                             f"one seed, seeds for several)")
    if seeds is None:
        chosen = list(range(default)) if seed is None else [seed]
    elif isinstance(seeds, (list, tuple)) and seeds:
        chosen = list(seeds)
    else:
        raise ParameterError(f"seeds={seeds!r} is not allowed; expected a non-empty list of "
                             f"integers ≥ 0, such as [0, 1, 2]")
    chosen = [check_range("seeds" if seeds is not None else "seed", s, low=0, high=2**32 - 1,
                          integer=True) for s in chosen]
    if len(set(chosen)) != len(chosen):
        raise ParameterError(f"seeds={seeds!r} repeats a seed; each seed is run once")
    return chosen


def over_seeds(frames: dict[int, pd.DataFrame]) -> pd.DataFrame:
    """One table from the same table of several seeds. A row is matched across seeds by its
    text columns and named index (and its place among rows with the same text); a numeric
    column equal in every seed (a label, a ratio) stays as it is, any other becomes its mean,
    its interval's half-width ("± COLUMN") and how many seeds gave a value ("n COLUMN", kept
    only where some but not all of a row's seeds gave one: a value no seed gave shows as
    missing); "n" counts the seeds that have the row."""
    parts = []
    for seed, frame in frames.items():
        f = frame.reset_index() if any(n is not None for n in frame.index.names) else frame
        f = f.reset_index(drop=True).copy()
        for c in f.columns[f.dtypes == bool]:
            f[c] = f[c].astype(float)      # a share over seeds
        parts.append(f.assign(_seed=seed))
    every = pd.concat(parts, ignore_index=True)
    numeric = [c for c in every.columns if c != "_seed" and pd.api.types.is_numeric_dtype(every[c])]
    text = [c for c in every.columns if c != "_seed" and c not in numeric]
    every["_row"] = every.groupby(["_seed", *text], dropna=False).cumcount()
    key = [*text, "_row"]
    groups = every.groupby(key, dropna=False, sort=False)
    fixed = [c for c in numeric if (groups[c].nunique(dropna=False) <= 1).all()]
    rows = []
    for name, g in groups:
        row = dict(zip(key, name))
        row.update({c: g[c].iloc[0] for c in fixed})
        row["n"] = g["_seed"].nunique()
        for c in numeric:
            if c in fixed:
                continue
            vals = values_of(list(g[c]))
            mean, low, high = interval(vals) if vals else (None, None, None)
            row[c] = mean
            row[f"± {c}"] = None if low is None else mean - low
            row[f"n {c}"] = len(vals)
        rows.append(row)
    order = [c for c in every.columns if c not in ("_seed", "_row")]
    out = pd.DataFrame(rows)
    out = out.drop(columns=[c for c in out.columns if c.startswith("n ") and c[2:] in numeric
                            and ((out[c] == out["n"]) | (out[c] == 0)).all()])
    columns = [x for c in order for x in (c, f"± {c}", f"n {c}") if x in out.columns]
    return out[columns + ["n"]]


def shown(table: pd.DataFrame) -> pd.DataFrame:
    """`over_seeds`' table for reading: each mean and its half-width as one "mean ± h" cell,
    at the precision the book gives the column (`tables.precision`)."""
    out = table.copy()
    for c in [c for c in table.columns if not c.startswith("± ")]:
        precision = decimals(header(c), table[c]) if pd.api.types.is_numeric_dtype(table[c]) else 2
        if f"± {c}" in table.columns:
            out[c] = [("" if pd.isna(m) else f"{m:.{precision}f}" if pd.isna(h)
                       else f"{m:.{precision}f} ± {h:.{precision}f}")
                      for m, h in zip(table[c], table[f"± {c}"])]
            out = out.drop(columns=f"± {c}")
        elif pd.api.types.is_float_dtype(table[c]):
            out[c] = ["" if pd.isna(v) else f"{v:.{precision}f}" for v in table[c]]
    return out


def read_pooled(paths, run: dict, seed: int) -> dict[int, dict]:
    """The other seeds' runs of a chapter, from the results files `repro run --seeds` hands the
    run at `seed`, each checked to be a run of `run` (chapter, profile, dataset, model) at
    another seed: by seed, its tables, measures, executed files, wall time and job counts."""
    found = {}
    for path in paths:
        try:
            other = json.loads(Path(path).read_text())
            r = other["record"]
        except (OSError, ValueError, KeyError) as err:
            raise ParameterError(f"pooled={path!r}: not a results file of a chapter run "
                                 f"({err})") from None
        differ = {k: r.get(k) for k, v in run.items() if r.get(k) != v}
        other_seed = r["seeds"][0]
        if differ or other_seed == seed or other_seed in found:
            raise ParameterError(
                f"pooled={path!r} is not allowed: a run of {run} at another seed than "
                f"{[seed, *found]} is expected, and it is "
                + (f"{differ}" if differ else f"seed {other_seed} again"))
        found[other_seed] = {"tables": other["tables"], "measured": other["measured"],
                             "executed": r["executed"], "wall_time_s": r["wall_time_s"],
                             "jobs": r["jobs"]}
    return found


def tables_over(tables: dict[int, dict[str, list[dict]]]) -> dict[str, pd.DataFrame]:
    """Each table of the first seed's (`tables`: by seed, each table as its records) over
    every seed (`over_seeds`); empty with one seed."""
    if len(tables) < 2:
        return {}
    first = next(iter(tables.values()))
    return {name: over_seeds({s: pd.DataFrame(t[name]) for s, t in tables.items()})
            for name in first}
