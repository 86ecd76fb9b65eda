"""One table style for the whole book.

`styled(frame)` is how every page shows a table: human headers (a column's code name is
replaced by its entry in `HEADERS`; one still in snake_case is an error), a fixed precision per
column (one decimal for a percentage or a time, two for anything else, none for counts), numbers
right-aligned and kept on one line, text left-aligned and wrapping, a named index shown as
the table's first columns and a meaningless one (0, 1, 2, ...) not shown, no column that is
empty in every row. A missing value shows as "—", and the caller must say why (`missing`): the
table's caption says it under the table.

The look (padding, font size, the caption's place) is `_static/tables.css`, for the class
`repro-table` that every styled table carries.
"""
from __future__ import annotations

import hashlib
import math
import re

import pandas as pd
from IPython.display import HTML, Markdown, display

MISSING = "—"

HEADERS = {
    "ca": "CA %", "asr": "ASR %", "ra": "RA %", "train_s": "train time (s)",
    "clean_model_asr": "clean model's ASR %", "seconds": "time (s)", "success": "succeeded",
    "l1": "ℓ1 change", "l2": "ℓ2 change", "linf": "ℓ∞ change",
    "ca before": "CA before %", "ca after": "CA after %", "asr before": "ASR before %",
    "asr after": "ASR after %", "dim": "dimensions", "true": "true class",
    "attacker": "attacker's class", "target": "target image",
}
ATTACKS = {"badnets": "BadNets", "blended": "Blended", "sig": "SIG", "wanet": "WaNet",
           "badnets_all2all": "BadNets all-to-all"}
HEADERS.update(ATTACKS)     # an attack as a column (attacks in the rows read the same way)
_SNAKE = re.compile(r"[A-Za-z0-9]_[A-Za-z0-9]")


def header(name) -> str:
    """The header a reader sees for the column `name` ("n NAME", `seeds.over_seeds`' count of
    the seeds that measured NAME, becomes "seeds (HEADER)")."""
    name = str(name)
    if name.startswith("n ") and len(name) > 2:
        return f"seeds ({header(name[2:])})"
    text = HEADERS.get(name, name)
    if _SNAKE.search(text):
        raise ValueError(f"table column {name!r} has no human header: add it to "
                         f"reprolib.views.tables.HEADERS or rename it")
    return text


def precision(name: str, column: pd.Series) -> int:
    """Decimals for a column: none for whole numbers, one for a percentage or a time, else two."""
    values = pd.to_numeric(column, errors="coerce").dropna()
    if len(values) and (values == values.round()).all() and not ("%" in name or "(s)" in name):
        return 0
    return 1 if "%" in name or "(s)" in name or "time" in name else 2


def styled(frame: pd.DataFrame, *, missing: str | None = None,
           decimals: dict[str, int] | None = None, caption: str | None = None):
    """`frame` in the book's table style (module docstring), as a pandas Styler.

    missing   why a cell is empty, said once under the table; required when one is
    decimals  a precision for some columns (by their shown header), overriding the rule
    caption   a line under the table (before the missing note)
    """
    if isinstance(frame.columns, pd.MultiIndex):
        raise ValueError("a table with two levels of columns is too wide for the page: "
                         "show_by_group shows one table per group")
    table = _with_index_as_columns(frame)
    table = table.loc[:, [c for c in table.columns if not _empty(table[c])]]
    table.columns = [header(c) for c in table.columns]
    if len(set(table.columns)) != len(table.columns):
        raise ValueError(f"two columns share a header: {list(table.columns)}")
    gaps = int(table.map(_empty_cell).to_numpy().sum())
    if gaps and not missing:
        raise ValueError(f"the table has {gaps} missing cells (columns "
                         f"{[c for c in table.columns if table[c].map(_empty_cell).any()]}): "
                         f"say why with missing=...")
    decimals = decimals or {}
    numeric = [c for c in table.columns if _numeric(table[c])]
    shown = table.copy()
    for c in table.columns:
        if c in numeric:
            places = decimals.get(c, precision(c, table[c]))
            shown[c] = [_number(v, places) for v in table[c]]
        else:
            names = ATTACKS if c == "attack" else {}
            shown[c] = [MISSING if _empty_cell(v) else names.get(v, _text(v)) for v in table[c]]
    notes = [caption] if caption else []
    if gaps:
        notes.append(f"{MISSING} {missing}")
    right = [c for c in shown.columns if c in numeric or _interval_column(shown[c])]
    # its ids from its content, not pandas' random ones: a page drawn again is the same file
    uuid = hashlib.sha256(shown.to_json().encode() + " ".join(notes).encode()).hexdigest()[:8]
    style = (shown.style.set_uuid(uuid).hide(axis="index")
             .set_table_attributes('class="repro-table"')
             .set_properties(subset=right, **{"text-align": "right", "white-space": "nowrap"})
             .set_table_styles([{"selector": f"th.col{i}", "props": "text-align: right"}
                                for i, c in enumerate(shown.columns) if c in right]))
    return style.set_caption(" ".join(notes)) if notes else style


def show(frame: pd.DataFrame, **options) -> None:
    """Display `frame` styled (`styled`'s options), as its HTML: a Styler's own plain-text
    form names its memory address, so a page drawn again would differ from itself."""
    display(HTML(styled(frame, **options).to_html()))


def show_by_group(view: pd.DataFrame, **options) -> None:
    """A table whose columns have two levels (metric, then attack or defense), too wide for the
    text column as one, shown as one table per first-level group, each under its name."""
    for group in view.columns.get_level_values(0).unique():
        display(Markdown(f"**{group}**"))
        part = view[group]
        part.columns = [header(c) for c in part.columns]
        unit = {c: precision(group, part[c]) for c in part.columns}    # the group's unit
        show(part, **{**options, "decimals": {**unit, **options.get("decimals", {})}})


def _with_index_as_columns(frame: pd.DataFrame) -> pd.DataFrame:
    if all(name is None for name in frame.index.names):
        if isinstance(frame.index, pd.RangeIndex) or frame.index.dtype.kind in "iu":
            return frame.reset_index(drop=True)
        raise ValueError("a table's index must be named (it is shown as a column) or a "
                         "plain 0, 1, 2, ... (not shown)")
    return frame.reset_index()


def _empty_cell(value) -> bool:
    return value is None or value == "" or (isinstance(value, float) and math.isnan(value))


def _empty(column: pd.Series) -> bool:
    return column.map(_empty_cell).all()


def _numeric(column: pd.Series) -> bool:
    values = [v for v in column if not _empty_cell(v)]
    return bool(values) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                for v in values)


def _interval_column(column: pd.Series) -> bool:
    """A column of "mean ± half-width" cells (`seeds.shown`)."""
    interval = re.compile(r"^-?[\d.,]+( ± [\d.,]+)?$")
    return column.map(lambda v: v == MISSING or bool(interval.match(v))).all()


def _text(value) -> str:
    return ("yes" if value else "no") if isinstance(value, bool) else str(value)


def _number(value, places: int) -> str:
    if _empty_cell(value):
        return MISSING
    return f"{value:,.{places}f}" if abs(value) >= 10_000 else f"{value:.{places}f}"
