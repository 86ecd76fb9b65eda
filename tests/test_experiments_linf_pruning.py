"""The ℓ∞ chapter's loops, run on the smoke profile's models with a short Neural Cleanse."""
import matplotlib
import numpy as np
import pytest
import torch

from reprolib.defenses import linf_pruning as lp
from reprolib.defenses import neural_cleanse as nc
from reprolib.experiments import linf_pruning as ex
from reprolib.experiments.plain import arrays, rows
from reprolib.views import linf_pruning as view

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def chapter(smoke_victims):
    s = smoke_victims
    victims = {"badnets": s.badnets, "blended": s.blended}
    asked = {name: {"victim": v.asked, "n": 200, "seed": 0, "budget": nc.budget(20, 200)}
             for name, v in victims.items()}
    reversal = {name: ex.reversed_triggers(**a) for name, a in asked.items()}
    exams = {name: ex.examined(vanilla=s.clean.asked, reversal=a, suspect=0, n_stats=100,
                               target=0) for name, a in asked.items()}
    return s.clean, victims, reversal, exams


def test_the_statistics_images_are_drawn_from_outside_the_target_class(smoke_victims):
    test = smoke_victims.clean.test
    stats = ex.statistics_set(test, 0, 100, 0)
    assert len(stats) == 100 and (stats.labels != 0).all()
    assert torch.equal(stats.images, ex.statistics_set(test, 0, 100, 0).images)
    assert len(ex.statistics_set(test, 0, 10**6, 0)) == int((test.labels != 0).sum())


def test_the_accuracy_and_neural_cleanse_tables(chapter):
    vanilla, victims, reversal, _ = chapter
    acc = ex.accuracy_table(vanilla, victims)
    assert list(acc.index) == ["vanilla", "badnets", "blended"]
    assert acc.loc["badnets", "ASR %"] == pytest.approx(100 * victims["badnets"].scores()["asr"])
    assert acc.loc["vanilla"].isna().sum() == 2                   # no ASR or RA without attack
    table = ex.neural_cleanse_table(reversal)
    assert len(table) == 10 and table.index.name == "label"
    assert table["badnets mask ℓ1"].tolist() == pytest.approx(reversal["badnets"].l1.tolist())
    shown = view.table({"neural_cleanse": {"rows": rows(table)}}, "neural_cleanse")
    assert list(shown.columns) == ["mask ℓ1", "anomaly", "success %"]     # narrow: one label a row
    assert shown.loc[("blended", 3), "mask ℓ1"] == pytest.approx(reversal["blended"].l1[3].item())
    assert len(shown) == 2 * 10
    nc_ = {"flagged": {n: r.flagged for n, r in reversal.items()},
           "suspect": {n: r.suspect for n, r in reversal.items()},
           "synthetic": {"badnets": 0, "blended": 0}, "target": 0}
    text = view.neural_cleanse_summary(nc_)
    assert "**badnets**" in text and "the reversal for label 0 (badnets), 0 (blended)" in text


def test_the_gradcam_table_measures_the_corner_trigger_only(chapter):
    _, victims, reversal, exams = chapter
    table = ex.gradcam_table(exams)
    assert list(table.index) == [("badnets", "vanilla"), ("badnets", "backdoored")]
    assert (table["cells covered %"] == 100 / 16).all()           # one cell of the 4×4 map
    assert table["heat on trigger cells %"].between(0, 100).all()
    gradcam = {n: arrays(e["gradcam"]) for n, e in exams.items()}
    assert gradcam["badnets"]["heat"]["backdoored"]["real"].shape == (3, 32, 32)
    assert len(view.gradcam_figure(gradcam).axes) == 4 * 9
    shown = {n: arrays(e["reversal"]) for n, e in exams.items()}
    mask, pattern = reversal["badnets"].trigger(0)
    assert np.array_equal(shown["badnets"]["mask"], mask[0].numpy())
    assert len(view.reversal_figure(shown).axes) == 2 * 3


def test_the_norms_tails_and_pruning_of_every_ranking(chapter, smoke_victims):
    _, victims, reversal, exams = chapter
    norms = exams["badnets"]["norms"]
    assert set(norms) == {"vanilla", "backdoored"}
    stats = ex.statistics_set(smoke_victims.clean.test, 0, 100, 0)
    clean = lp.feature_maps(victims["badnets"].model, stats)
    assert torch.allclose(norms["backdoored"]["means"]["clean"]["linf"],
                          lp.channel_norms(clean)["linf"].mean(0))
    tails = ex.tails_table(exams)
    assert len(tails) == 2 * 2 * 2
    synthetic = lp.feature_maps(smoke_victims.clean.model, stats.with_images(
        reversal["badnets"].stamp(stats.images, 0)))
    assert tails.loc[("badnets", "vanilla", "synthetic"), "linf"] == pytest.approx(
        lp.standardized_change(lp.feature_maps(smoke_victims.clean.model, stats),
                               synthetic)["linf"].max().item())
    norms = {n: arrays(e["norms"]) for n, e in exams.items()}
    assert len(view.norm_histograms(norms, "badnets").axes) == 12
    assert len(view.tails_figure(norms, list(victims)).axes) == 2

    orders = {n: e["orders"] for n, e in exams.items()}
    curves = {(n, rank): c for n, e in exams.items() for rank, c in e["curves"].items()}
    assert set(orders["badnets"]) == set(lp.RANKINGS)
    assert all(sorted(o.tolist()) == list(range(64)) for o in orders["blended"].values())
    assert curves["badnets", "linf"]["test"]["n"] == lp.counts_up_to(64)
    overlap = ex.overlap_table(orders)
    assert overlap.values.min() >= 0 and overlap.values.max() <= 1
    by_attack = {n: e["curves"] for n, e in exams.items()}
    assert len(view.pruning_figure(by_attack, list(victims), 64).axes) == 4

    tuned = ex.tuned_models(victims, curves, orders, n_defender=200, seed=0, device="cpu")
    stopped = [n for n in victims if lp.stop_at_asr(curves[n, "linf"]["defender"]) is not None]
    assert list(tuned) == stopped
    points = ex.operating_points(victims, curves, orders, tuned)
    assert len(points) == 2 * 2 * len(lp.RANKINGS) + len(stopped)
    before = 100 * victims["badnets"].scores()["ca"]
    assert (points["ca before"].xs("badnets") - before).abs().max() < 1e-9
    measured = ex.claims(list(victims), ex.gradcam_table(exams), tails, points, curves)
    assert {"gradcam_ratio_badnets", "linf_bias_badnets", "linf_bias_blended",
            "linf_edge_shrinks"} <= set(measured)
    assert "gradcam_ratio_blended" not in measured
    assert measured["linf_edge_shrinks"] == pytest.approx(
        measured["linf_bias_blended"] - measured["linf_bias_badnets"])
    lines = view.summary(points, list(victims), 64)
    assert len(lines) == 2 and lines[0].startswith("**badnets**")


def test_the_reversal_kept_in_the_zoo_is_the_one_neural_cleanse_computes(chapter):
    _, victims, reversal, _ = chapter
    v = victims["badnets"]
    direct = nc.reverse(v.model, v.clean_subset(200, 0), seed=0, progress=False,
                        **nc.budget(20, 200))
    kept = reversal["badnets"]
    for name in ("labels", "masks", "patterns", "l1", "success"):
        assert torch.equal(getattr(kept, name), getattr(direct, name)), name
    assert kept.suspect == direct.suspect and kept.flagged == direct.flagged


def test_the_cost_to_remove_a_backdoor_is_read_at_the_first_count_below_the_bar():
    curve = {"n": [0, 1, 2, 3], "ca": [0.9, 0.89, 0.85, 0.8], "asr": [1.0, 0.5, 0.04, 0.0]}
    assert ex.cost_to_remove(curve) == pytest.approx(5.0)
    assert ex.cost_to_remove(curve, below=0.01) == pytest.approx(10.0)
    assert ex.cost_to_remove({**curve, "asr": [1.0] * 4}) == float("inf")
