"""The book's one table style (reprolib.views.tables)."""
import math

import pandas as pd
import pytest
from IPython.display import HTML, Markdown

from reprolib.views import tables

STYLED = tables.styled


def cells(style) -> list[list[str]]:
    """The shown cells of a styled table, row by row, as the page prints them."""
    return [[c["display_value"] for c in row if c["type"] == "td"]
            for row in style._translate(False, False)["body"]]


def heads(style) -> list[str]:
    return [c["display_value"] for c in style._translate(False, False)["head"][0]
            if c.get("is_visible", True) and c["type"] == "th"]


def test_headers_are_human_and_a_code_name_is_refused():
    frame = pd.DataFrame({"ca": [81.2], "train_s": [2.41], "clean_model_asr": [4.95]})
    assert heads(tables.styled(frame)) == ["CA %", "train time (s)", "clean model's ASR %"]
    with pytest.raises(ValueError, match="'mean_ca' has no human header"):
        tables.styled(pd.DataFrame({"mean_ca": [1.0]}))
    assert tables.header("n asr") == "seeds (ASR %)"    # over seeds: how many measured it


def test_each_column_has_its_precision():
    frame = pd.DataFrame({"CA %": [81.234, 79.0], "time (s)": [2.46, 10.0],
                          "poisoned": [0, 200], "AUROC": [0.5, 0.91234], "parameters": [2.0, 11e6]})
    assert cells(tables.styled(frame)) == [["81.2", "2.5", "0", "0.50", "2"],
                                           ["79.0", "10.0", "200", "0.91", "11,000,000"]]
    assert cells(tables.styled(frame, decimals={"AUROC": 3}))[1][3] == "0.912"


def test_a_missing_value_shows_a_dash_and_the_table_says_why():
    frame = pd.DataFrame({"attack": ["none (clean)", "badnets"], "ASR %": [math.nan, 97.9]})
    with pytest.raises(ValueError, match="1 missing cells.*ASR %.*missing="):
        tables.styled(frame)
    style = tables.styled(frame, missing="the clean model has no trigger")
    assert cells(style) == [["none (clean)", "—"], ["BadNets", "97.9"]]
    assert "— the clean model has no trigger" in style.to_html()
    assert "nan" not in style.to_html().lower().replace("nanos", "")


def test_the_index_shows_only_where_it_means_something_and_empty_columns_go():
    named = pd.DataFrame({"ASR %": [1.0], "delta": [None]}, index=pd.Index(["sig"], name="attack"))
    assert heads(tables.styled(named)) == ["attack", "ASR %"]
    assert cells(tables.styled(named)) == [["SIG", "1.0"]]
    plain = pd.DataFrame({"ASR %": [1.0, 2.0]})
    assert heads(tables.styled(plain)) == ["ASR %"]
    with pytest.raises(ValueError, match="index must be named"):
        tables.styled(pd.DataFrame({"ASR %": [1.0]}, index=["x"]))


def test_numbers_and_intervals_are_right_aligned_on_one_line_and_text_wraps():
    frame = pd.DataFrame({"claim": ["a long claim"], "ours": ["89.5 ± 0.3"], "n": [3]})
    html = tables.styled(frame).to_html()
    assert 'class="repro-table"' in html
    rule = html.split("\n  text-align: right;\n  white-space: nowrap;")[0].split("}")[-1]
    assert "row0_col1" in rule and "row0_col2" in rule and "row0_col0" not in rule


def test_a_table_of_two_column_levels_is_shown_one_group_at_a_time(monkeypatch):
    view = pd.DataFrame({("CA %", "FT"): [80.0], ("CA %", "NPD"): [81.25],
                         ("ASR %", "FT"): [50.0], ("ASR %", "NPD"): [2.5]},
                        index=pd.Index(["badnets"], name="attack"))
    with pytest.raises(ValueError, match="too wide"):
        tables.styled(view)
    shown, styled = [], []
    monkeypatch.setattr(tables, "display", shown.append)
    monkeypatch.setattr(tables, "styled", lambda *a, **kw: styled.append(
        STYLED(*a, **kw)) or styled[-1])
    tables.show_by_group(view)
    groups = [s.data for s in shown if isinstance(s, Markdown)]
    assert groups == ["**CA %**", "**ASR %**"]
    assert [s.data for s in shown if isinstance(s, HTML)] == [t.to_html() for t in styled]
    assert cells(styled[0]) == [["BadNets", "80.0", "81.2"]]   # the group's unit: one decimal
