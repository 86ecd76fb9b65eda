"""The comparison chapter's tables on hand-made rows, its reading of the CLEAR chapter's
results, and its parameters."""
import json

import matplotlib
import pandas as pd
import pytest

from reprolib import jobs
from reprolib.views import reference
from reprolib.chapter import Chapter
from reprolib.config import ParameterError
from reprolib.experiments import comparison as ex
from reprolib.views import comparison as view

matplotlib.use("Agg")


def table(rows: dict) -> pd.DataFrame:
    """A main table from {(attack, defense): (CA, ASR, DER)}; the other columns filled in."""
    return pd.DataFrame([{"attack": a, "defense": d, "CA %": ca, "ASR %": asr, "RA %": 0.0,
                          "DER %": der, "seconds": 1.0, "trained parameters": 10, "passes": 2.0}
                         for (a, d), (ca, asr, der) in rows.items()]).set_index(
        ["attack", "defense"])


@pytest.fixture
def main():
    rows = {("a", "none"): (90, 100, 50), ("b", "none"): (80, 90, 50),
            ("clean", "none"): (91, None, None)}
    for i, d in enumerate(ex.DEFENSES):
        # defense i loses i CA points and leaves 10·i % ASR on both attacks
        rows[("a", d)] = (90 - i, 10 * i, 90 - 10 * i)
        rows[("b", d)] = (80 - i, 10 * i, 80 - 10 * i)
        rows[("clean", d)] = (91 - 2 * i, None, None)
    return table(rows)


def test_ranking_reads_mean_der_worst_asr_and_ca_losses(main):
    ranked = view.ranking(main, ["a", "b"])
    assert list(ranked.index) == ex.DEFENSES            # DER falls with i: already in rank order
    assert ranked["rank"].tolist() == list(range(1, 9))
    third = ranked.loc[ex.DEFENSES[3]]
    assert third["mean DER %"] == pytest.approx(55.0)   # (60 + 50) / 2
    assert third["worst ASR %"] == pytest.approx(30.0)
    assert third["largest CA loss (points)"] == pytest.approx(3.0)
    assert third["CA loss, clean twin (points)"] == pytest.approx(6.0)


def test_ties_share_a_rank_and_findings_follow_the_table(main):
    main.loc[("a", "FP"), "DER %"], main.loc[("b", "FP"), "DER %"] = 90.0, 80.0   # = FT's
    ranked = view.ranking(main, ["a", "b"])
    assert ranked.loc["FT", "rank"] == ranked.loc["FP", "rank"] == 1
    found = {f["finding"]: f["value"] for f in view.findings(main, ranked, ["a", "b"])}
    assert found["highest mean DER over 2 attacks: FT, FP"] == pytest.approx(85.0)
    # ASR below 10 % on every attack: only FT (0 %); at most 2 CA points lost: FT, FP, NC
    assert found["defenses with ASR below 10 % on every attack: FT"] == 1
    assert found["defenses losing at most 2 CA points on every attack: FT, FP, NC"] == 3
    assert found[f"largest CA loss on the clean twin: {ex.DEFENSES[-1]}"] == pytest.approx(14)


def test_cost_is_the_mean_over_attacked_victims_only(main):
    main.loc[("a", "NPD"), "seconds"] = 5.0
    main.loc[("clean", "NPD"), "seconds"] = 100.0
    cost = view.cost_table(main, ["a", "b"])
    assert list(cost.index) == ex.DEFENSES
    assert cost.loc["NPD", "seconds (mean)"] == pytest.approx(3.0)


def test_the_views_and_figures_cover_every_defense(main):
    shown = view.main_view(main, ["a", "b", "clean"])
    assert list(shown.index) == ["none", *ex.DEFENSES] and view.DEFENSES == ex.DEFENSES
    assert shown[("CA %", "clean")].notna().all() and shown[("ASR %", "clean")].isna().all()
    fig = view.tradeoff_figure(main, ["a", "b"])
    assert len(fig.axes) == 2 and len(fig.axes[0].collections) == len(ex.DEFENSES) + 1
    five = table({(a, d): (80, 50, 60) for a in "cdefg" for d in ["none", *ex.DEFENSES]})
    fig = view.tradeoff_figure(five, list("cdefg"))             # 2 rows of 3: the spare holds
    assert len(fig.axes) == 6 and not fig.axes[5].axison     # the legend
    assert len(fig.axes[5].get_legend().get_texts()) == len(ex.DEFENSES) + 1
    heat = view.der_figure(main, ["a", "b"])
    assert heat.axes[0].images[0].get_array().shape == (len(ex.DEFENSES), 2)


def test_the_clear_row_weights_each_attack_by_its_draws(tmp_path):
    missing, why = ex.clear_row(tmp_path / "clear.json")
    assert missing is None and "repro run clear" in why
    rows = [{"attack": "copies", "method": m, "attacks": 1, "attack success %": s, "CA %": ca}
            for m, s, ca in (("no defense", 100, 80), ("CLEAR relabel + FT", 0, 81))]
    rows += [{"attack": "collision", "method": m, "attacks": 3, "attack success %": s,
              "CA %": ca} for m, s, ca in (("no defense", 100, 84), ("CLEAR relabel + FT",
                                                                      100 / 3, 82))]
    record = {"started": "2026-11-29T10:00:00", "profile": "quick", "dataset": "fashion-mnist",
              "model": "small_cnn", "code_version": "0.1+abc"}
    (tmp_path / "clear.json").write_text(json.dumps(
        {"record": record, "tables": {"mitigation": rows}}))
    row, why = ex.clear_row(tmp_path / "clear.json", {"profile": "quick", "model": "small_cnn"})
    assert "unlike" not in why
    assert "unlike this chapter it ran profile quick" in ex.clear_row(
        tmp_path / "clear.json", {"profile": "paper"})[1]
    r = row.iloc[0]
    assert r["successful draws"] == 4 and r["attack success before %"] == pytest.approx(100)
    assert r["attack success after %"] == pytest.approx(25.0)     # (0 + 3 · 33.3) / 4
    assert r["CA after %"] == pytest.approx(81.75)
    assert "2026-11-29" in why and "quick" in why


def test_every_backdoorbench_row_is_measured_by_the_chapter(main):
    attacks = ["badnets", "blended", "sig", "wanet"]
    rows = {(a, d): (90, 5, 90) for a in attacks for d in ["none", *ex.DEFENSES]}
    measured = ex.claims(table(rows), attacks)
    ids = {n.id for n in reference.load("comparison").numbers}
    assert set(measured) == ids and len(ids) == 48


def test_bad_parameters_are_named():
    ch = Chapter("comparison", profile="smoke", dataset="fashion-mnist", device="cpu")
    with pytest.raises(ParameterError, match="clean_ratio=1.5"):
        ex.setup(ch, clean_ratio=1.5, nc_images=100)
    with pytest.raises(ParameterError, match="nc_images=0"):
        ex.setup(ch, clean_ratio=0.05, nc_images=0)
    how = ex.setup(ch, clean_ratio=0.05, nc_images=100)
    assert how["mesa"]["settings"].batch_size == 32 and how["nc"]["budget"]["steps"] == 100


@pytest.mark.parametrize("profile", ["smoke", "quick"])
def test_the_defenses_other_chapters_run_are_their_jobs(profile, fashion):
    # on the attacked victims the comparison declares the same FT, FP, NPD, NONE, ABL and
    # NC-reversal jobs as the chapters it borrows them from, so a run of either computes them
    # for both (the clean twin's defenses are the comparison's own)
    from reprolib.experiments import linf_pruning, neural_polarizer, none
    attacks = ["badnets", "blended", "sig", "wanet", "badnets_all2all"]

    def keys(chapter, module):
        ch = Chapter(chapter, profile=profile, dataset="fashion-mnist", device="cpu")
        found = jobs.declared(module.results, ch, attacks=attacks).jobs
        return {(j.step.kind, j.key) for j in found
                if (j.args.get("victim") or j.args).get("attack") is not None}
    ours = keys("comparison", ex)
    borrowed = (keys("neural_polarizer", neural_polarizer) | keys("none", none)
                | keys("linf_pruning", linf_pruning))
    for kind, count in (("victim", 5), ("npd.defense", 15), ("none.repair", 5),
                        ("none.abl", 5), ("nc.reverse", 5)):
        mine = {key for k, key in ours if k == kind}
        assert len(mine) == count and mine <= {key for k, key in borrowed if k == kind}, kind
