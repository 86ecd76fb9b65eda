"""What a chapter's page shows of its run: the run record, the paper-vs-reproduced tables with
their intervals, and the tables over seeds."""
from __future__ import annotations

import pandas as pd
from IPython.display import Markdown, display

from . import reference, seeds as seeding


def seeds_text(seeds: list[int]) -> str:
    return f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {', '.join(map(str, seeds))}"


def record_line(r: dict, wall: bool) -> str:
    """The run record `r` (`Chapter.record`) in one line, with its wall time if `wall`."""
    line = (f"profile **{r['profile']}** · dataset **{r['dataset']}** ({r['dataset_why']}) · "
            f"model **{r['model']}** ({r['model_why']}) · device {r['device']} · "
            f"{seeds_text(r['seeds'])} · code {r['code_version']}")
    return line + (f" · wall time {r['wall_time_s']:.0f} s" if wall else "")


def comparison(table: pd.DataFrame, ref: reference.Reference, by_seed: dict[int, dict]) -> None:
    """The comparison `table` as two tables, the paper's numbers and its claims, each value
    with its interval over seeds (or "1 seed"); with several seeds (`by_seed`: what each
    measured), a figure of every checked row's seeds."""
    c = table.assign(interval=[reference.interval_text(r) for _, r in table.iterrows()])
    numbers = c[c.kind == "number"]
    if len(numbers):
        display(Markdown("**The paper's numbers**"))
        display(plain(numbers[["what", "paper", "ours", "interval", "delta", "tolerance",
                               "verdict"]]))
        reasons = sorted(set(numbers.why) - {""})
        if reasons:
            display(Markdown("Not comparable because: " + "; ".join(reasons) + "."))
    claims = c[c.kind == "claim"]
    if len(claims):
        display(Markdown("**The paper's claims**"))
        display(plain(claims[["what", "ours", "interval", "tolerance", "verdict"]]
                      .rename(columns={"what": "claim", "tolerance": "checked as"})))
    if len(by_seed) > 1:
        import matplotlib.pyplot as plt     # here: `repro` checks a run without matplotlib
        from . import plots
        fig = plots.seeds_figure(table, ref, by_seed)
        if fig is not None:
            display(fig)
            plt.close(fig)


def tables_over_seeds(tables: dict[str, pd.DataFrame], n: int) -> None:
    """Each table over `n` seeds (`seeds.over_seeds`), each cell "mean ± half-width of the
    95 % interval"."""
    for name, table in tables.items():
        display(Markdown(f"**{name.replace('_', ' ')}**, over {n} seeds"))
        display(seeding.shown(table).style.hide(axis="index"))


def plain(frame: pd.DataFrame):
    """A table without its index, numbers to two decimals, empty cells left empty."""
    return frame.style.hide(axis="index").format(precision=2, na_rep="")
