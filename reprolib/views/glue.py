"""Numbers for a page's prose: kept under a name with myst-nb's glue format (written here, so
that a kernel without myst-nb can run a chapter), shown where the page says
{glue:text}`name`."""
from __future__ import annotations

import math

import pandas as pd
from IPython.display import display

from . import reference

PREFIX = "application/papermill.record/"


def glue(name: str, value) -> None:
    """Keep `value` under `name`. A number shows to two decimals below 10 and one above, a
    missing one as "not measured"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        text = "not measured"
    elif isinstance(value, (int, str)):
        text = str(value)
    else:
        text = f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"
    display({PREFIX + "text/plain": text}, raw=True,
            metadata={"scrapbook": {"name": name, "mime_prefix": PREFIX}})


def comparison(table: pd.DataFrame, seeds: list[int]) -> None:
    """Every row's value ("ours", the mean over seeds) under the row's id; how many rows got
    each verdict (`n-reproduced`, `n-partly`, `n-not-reproduced`, `n-inconclusive`,
    `n-not-comparable`, and `n-checked`: the rows judged, neither inconclusive nor not
    comparable); and what the values are over `seeds` (`seeds-note`: "seed 0", or "means over
    seeds 0, 1, 2")."""
    for _, row in table.iterrows():
        glue(row["id"], row["ours"])
    counts = reference.verdict_counts(table["verdict"])
    for v, n in counts.items():
        glue("n-" + v.replace(" ", "-"), n)
    glue("n-checked", len(table) - counts["not comparable"] - counts["inconclusive"])
    glue("seeds-note", f"seed {seeds[0]}" if len(seeds) == 1 else
         "means over seeds " + ", ".join(map(str, seeds)))
