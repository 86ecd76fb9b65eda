"""What a chapter's page shows of its run: the run record, the paper-vs-reproduced tables with
their intervals, and the tables over seeds."""
from __future__ import annotations

import pandas as pd
import base64
import io
import re
from html import escape

from IPython.display import HTML, Markdown, display

from . import reference, seeds as seeding, tables


def seeds_text(seeds: list[int]) -> str:
    return f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {', '.join(map(str, seeds))}"


def record_line(r: dict, wall: bool) -> str:
    """The run record `r` (`Chapter.record`) in one line, with its wall time if `wall`."""
    source = f"{r['dataset_source']}; " if r.get("dataset_source") else ""
    line = (f"profile **{r['profile']}** · dataset **{r['dataset']}** ({source}"
            f"{r['dataset_why']}) · "
            f"model **{r['model']}** ({r['model_why']}) · device {r['device']} · "
            f"{seeds_text(r['seeds'])} · code {r['code_version']}")
    line += f" · wall time {r['wall_time_s']:.0f} s" if wall else ""
    if wall and r.get("rendered"):
        line += (f" · page drawn again from its measures at code "
                 f"{r['rendered']['code_version']}, in {r['rendered']['wall_time_s']:.0f} s")
    return line


def changed_line(changed: dict) -> str:
    """The parameters a run set otherwise than its notebook's defaults, with their values."""
    def value(v):
        return ", ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)
    return ("**Set for this run** (the notebook's defaults otherwise): "
            + "; ".join(f"{k} = {value(v)}" for k, v in changed.items()) + ".")


def jobs_line(r: dict) -> str:
    """How many jobs the run of record `r` took, and how many it read from the cache."""
    j = r["jobs"]
    return (f"**Jobs:** {j['jobs']}, of which {j['cached']} read from the cache and "
            f"{j['computed']} computed by the run ({r['executor']} executor).")


def verdict_changes(table: pd.DataFrame, before: dict) -> str:
    """One line per row whose verdict differs from the run in `before` (a results file of the
    same chapter on another dataset), both judged, with both values."""
    r = before["record"]
    old = {row["id"]: row for row in before["comparison"]
           if row["verdict"] != "not comparable"}
    lines = []
    for _, row in table.iterrows():
        was = old.get(row["id"])
        if was is None or row["verdict"] == "not comparable" or was["verdict"] == row["verdict"]:
            continue
        lines.append(f"- {row['what']}: {was['verdict']} on {r['dataset']} "
                     f"({_value(was['ours'])}), {row['verdict']} here ({_value(row['ours'])})")
    head = (f"**Against the {r['dataset']} run** (profile {r['profile']}, code "
            f"{r['code_version']}): ")
    if not lines:
        return head + "every verdict both runs gave is the same."
    return head + f"{len(lines)} verdict{'s' if len(lines) > 1 else ''} changed.\n\n" + "\n".join(lines)


def _value(v) -> str:
    return "not measured" if v is None or pd.isna(v) else f"{v:.2f}"


def comparison(table: pd.DataFrame, ref: reference.Reference, by_seed: dict[int, dict],
               number: int) -> bool:
    """The comparison `table`, what was checked first: the paper's claims, then the paper's
    numbers this run could compare, each value with its interval over seeds (or "1 seed"); the
    numbers it could not compare fold into one line per reason, their list in a dropdown. With
    several seeds (`by_seed`: what each measured), a figure (numbered `number`) of every
    checked row measured at two seeds or more. Returns whether it drew that figure."""
    c = table.assign(interval=[reference.interval_text(r) if r["n"] > 1 else ""
                               for _, r in table.iterrows()],     # one seed: no interval
                     verdict=[reference.verdict_text(r) for _, r in table.iterrows()])
    claims = c[c.kind == "claim"]
    if len(claims):
        display(Markdown("**The paper's claims, checked**"))
        tables.show(
            claims[["what", "ours", "interval", "verdict", "tolerance"]].rename(columns={
                "what": "claim", "interval": "95 % interval", "tolerance": "checked as"}),
            missing="not measured in this run", decimals={"ours": 2})
        if any(c.premise for c in ref.claims):
            display(Markdown(premises_text(claims)))
    numbers = c[c.kind == "number"]
    compared = numbers[numbers.verdict != "not comparable"]
    if len(compared):
        display(Markdown("**The paper's numbers, compared**"))
        tables.show(
            compared[["what", "paper", "ours", "interval", "delta", "tolerance", "verdict"]]
            .rename(columns={"what": "the paper's number", "interval": "95 % interval",
                             "delta": "ours − paper"}), decimals={"paper": 2, "ours": 2})
    for why, rows in numbers[numbers.verdict == "not comparable"].groupby("why", sort=False):
        listed = tables.styled(rows[["what", "paper", "ours"]].rename(
            columns={"what": "the paper's number"}), decimals={"paper": 2, "ours": 2},
            missing="the paper gives no value, or this run did not measure it")
        display(HTML(f"<p>{len(rows)} of the paper's numbers not comparable: {escape(why)}.</p>"
                     f"<details><summary>The {len(rows)} numbers</summary>"
                     f"{listed.to_html()}</details>"))
    if len(by_seed) > 1:
        from . import plots     # here: `repro` checks a run without matplotlib
        fig = plots.seeds_figure(table, ref, by_seed)
        if fig is not None:
            figure(fig, number, "Every checked row's value at each seed (dots), their mean "
                   "(black square) and 95 % interval (its bar), against the claim's threshold "
                   "(dashed) or the paper's number (red line, its tolerance shaded): a verdict "
                   "is only as firm as its interval.")
            return True
    return False


MAX_WIDTH_IN = 7.0   # at the book's 110 dpi, 8-pt text stays 8 pt in the 676-px column


def figure(fig, number: int, caption: str) -> None:
    """`fig` as a numbered figure with its `caption` (what it shows, what to look for), the
    figure closed. A figure wider than `MAX_WIDTH_IN` would be shrunk into the text column until
    its text is unreadable: lay it out as a grid instead (`plots.grid`)."""
    import matplotlib.pyplot as plt
    width = fig.get_size_inches()[0]
    plt.close(fig)
    if width > MAX_WIDTH_IN + 1e-6:
        raise ValueError(f"figure {number} is {width:.1f} in wide, more than {MAX_WIDTH_IN} in: "
                         f"lay its panels out as a grid (plots.grid)")
    if not caption.strip():
        raise ValueError(f"figure {number} needs a caption: what it shows and what to look for")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    data = base64.b64encode(buffer.getvalue()).decode()
    display(HTML(f'<figure class="repro-figure"><img src="data:image/png;base64,{data}" '
                 f'alt="{escape(caption)}"><figcaption><span class="caption-number">Figure '
                 f'{number}.</span> {_inline(caption)}</figcaption></figure>'))


def _inline(text: str) -> str:
    """A caption's Markdown emphasis and code as HTML (the caption is HTML, not Markdown)."""
    text = escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    text = re.sub(r"\*(.+?)\*", r"<em>\1</em>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def premises_text(claims: pd.DataFrame) -> str:
    """The line under the claims: the premise rule, and each inconclusive claim's reason."""
    text = ("A claim about a defense is judged only where its attack took hold first, on every "
            "seed: " + "; ".join(means for _, means in reference.PREMISES.values())
            + ". Otherwise its verdict is inconclusive.")
    for _, row in claims[claims.verdict == "inconclusive"].iterrows():
        text += f" *Inconclusive:* “{row['what']}”: {row['why']}."
    return text


def tables_over_seeds(kept: dict[str, pd.DataFrame], n: int) -> None:
    """Each kept table over `n` seeds (`seeds.over_seeds`), each cell "mean ± half-width of the
    95 % interval"."""
    for name, table in kept.items():
        display(Markdown(f"**{name.replace('_', ' ')}**, over {n} seeds"))
        tables.show(seeding.shown(table), missing="no seed measured it")
