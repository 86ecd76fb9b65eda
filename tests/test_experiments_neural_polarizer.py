"""The Neural Polarizer chapter's loops, on the smoke profile's BadNets model, one epoch each."""
import matplotlib
import pytest
import torch

from reprolib.config import Recipe
from reprolib.defenses import neural_polarizer as npd_
from reprolib.experiments import neural_polarizer as ex
from reprolib.experiments.plain import arrays
from reprolib.views import neural_polarizer as view

matplotlib.use("Agg")

HOW = dict(settings=npd_.Settings(warm_epochs=1, epochs=1),
           ft_recipe=Recipe(epochs=1, batch_size=64, lr=0.01, schedule="cosine"), seed=0)


@pytest.fixture(scope="module")
def main(smoke_victims):
    victims = {"badnets": smoke_victims.badnets}
    table, polarized = ex.main_table(victims, 0.05, **HOW)
    return victims, table, polarized


def test_the_defender_draws_a_balanced_share_of_clean_originals(smoke_victims):
    v = smoke_victims.badnets
    clean = ex.defender(v, 0.05, 0)
    assert len(clean) == 100 and torch.bincount(clean.labels, minlength=10).tolist() == [10] * 10
    assert torch.equal(clean.images, ex.defender(v, 0.05, 0).images)
    corner = clean.images[:, :, -3:, -3:]
    assert not (corner == 255).all(dim=(1, 2, 3)).any()          # no image carries the trigger


def test_every_defense_gets_a_row_and_npd_trains_a_sliver_of_the_model(main):
    victims, table, polarized = main
    v = victims["badnets"]
    assert list(table.index) == [("badnets", d) for d in ex.DEFENSES]
    none = table.loc[("badnets", "none")]
    assert none["DER %"] == pytest.approx(50.0) and none["CA %"] == pytest.approx(
        100 * v.scores()["ca"])
    assert table.loc[("badnets", "NPD"), "trained parameters"] == 64 * 64 + 2 * 64
    assert table.loc[("badnets", "FT"), "trained parameters"] == sum(
        p.numel() for p in v.model.parameters())
    assert table.loc[("badnets", "FP"), "pruned"] >= 0 and table["pruned"].notna().sum() == 2
    assert table.loc[("badnets", "NPD"), "ASR %"] == pytest.approx(
        100 * v.scores(polarized["badnets"].model)["asr"])
    shown = view.main_view(table, victims, ex.DEFENSES)
    assert shown.shape == (1, 4 * 5) and [d for _, d in shown.columns[:5]] == ex.DEFENSES
    cost = ex.cost_table(table)
    assert cost.loc["badnets", ("NPD / FT", "parameters %")] == pytest.approx(
        100 * (64 * 64 + 128) / table.loc[("badnets", "FT"), "trained parameters"])
    kept = {"cost": {"columns": [list(c) for c in cost.columns], "index": list(cost.index),
                     "values": cost.to_numpy().tolist()}}
    assert view.cost(kept).equals(cost)                     # as the page reads it back
    assert len(view.loss_figure({n: p.loss for n, p in polarized.items()}).axes) == 1


def test_the_sweeps_reuse_the_main_tables_runs_and_add_the_others(main, smoke_victims):
    victims, table, polarized = main
    by_data = ex.clean_data_sweep(victims, ["badnets"], [0.05, 0.01], table, polarized, 0.05,
                                  **HOW)
    assert len(by_data) == 2 * 2
    assert by_data.loc[("badnets", 5.0, "NPD"), "diverged"] == ex.unstable(polarized["badnets"])
    assert by_data.xs("FT", level="defense")["diverged"].isna().all()    # FT keeps no loss
    assert by_data.loc[("badnets", 5.0, "NPD"), "ASR %"] == table.loc[("badnets", "NPD"), "ASR %"]
    assert len(view.clean_data_figure(by_data, table, ["badnets"]).axes) == 2
    common = {k: v for k, v in smoke_victims.common.items() if k != "ratio"}
    by_poison = ex.poisoning_sweep(victims, ["badnets"], [0.1, 0.05], table, polarized,
                                   ratio=0.1, clean_ratio=0.05, dataset="fashion-mnist",
                                   common=common, **HOW)
    assert list(by_poison.index) == [("badnets", 10.0), ("badnets", 5.0)]
    assert by_poison.loc[("badnets", 10.0), "ASR after %"] == table.loc[("badnets", "NPD"),
                                                                       "ASR %"]
    assert len(view.poisoning_figure(by_poison, ["badnets"]).axes) == 1
    assert by_poison["diverged"].isin([True, False]).all()
    assert by_poison.loc[("badnets", 10.0), "diverged"] == ex.unstable(polarized["badnets"])
    ablated = ex.ablation(victims, ["badnets"], table, polarized, 0.05,
                          image=victims["badnets"].test.images[0], **HOW)
    assert list(ablated.xs("badnets").index) == ["reference", "no warm-up", "radius 1.73"]
    assert ablated.loc[("badnets", "reference"), "diverged"] == ex.unstable(polarized["badnets"])
    measured = ex.claims(table, ex.cost_table(table), by_data, [0.05, 0.01], victims)
    assert measured["npd.badnets.asr"] == table.loc[("badnets", "NPD"), "ASR %"]
    assert "npd_minus_ft_der_scarce" not in measured              # no share ≤ 0.5 % ran
    lines = view.summary(table, ablated, victims, ["badnets"])
    assert len(lines) == 2 and "Ablation, **badnets**" in lines[1]
    features = ex.features(npd=dict(victim=victims["badnets"].asked, defense="NPD", share=0.05,
                                    **HOW), n=50)
    assert features["backdoored"]["clean"].shape == (50, 2) and len(features["labels"]) == 50
    assert len(view.feature_figure({"badnets": arrays(features)}, ["badnets"]).axes) == 2


def test_the_ablation_variants_scale_the_radius_to_the_image():
    s = npd_.Settings()
    variants = ex.variants(s, torch.zeros(1, 32, 32))
    assert list(variants) == ["reference", "no warm-up", "radius 1.73"]
    assert variants["no warm-up"].warm_epochs == 0
    assert variants["radius 1.73"].radius == pytest.approx(3 / 3 ** 0.5)


def test_the_ablation_leaves_out_a_radius_that_is_the_references():
    assert list(ex.variants(npd_.Settings(), torch.zeros(3, 32, 32))) == ["reference",
                                                                          "no warm-up"]


def test_the_principal_axes_are_the_two_widest_directions():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 3, generator=g) * torch.tensor([5.0, 2.0, 0.1]) + 7
    centre, axes = ex.principal_axes(x)
    assert torch.allclose(centre, x.mean(0))
    assert axes.shape == (3, 2)
    assert abs(axes[0, 0]) > 0.99 and abs(axes[1, 1]) > 0.99


def test_a_diverged_polarizer_is_named():
    from types import SimpleNamespace as NS
    runs = {"badnets": NS(loss=[12.4, 3.0, 2.1]), "wanet": NS(loss=[60.1, 1040.0, 390.0]),
            "blended": NS(loss=[9.0, float("nan"), float("nan")])}
    assert ex.diverged(runs) == ["wanet", "blended"]
    assert ex.diverged(runs, above=2000) == ["blended"]          # a NaN loss is never stable


def test_a_rerun_of_the_chapter_reads_each_victims_weights_once(monkeypatch):
    from reprolib import jobs
    from reprolib.chapter import Chapter
    from reprolib.victims import trained_victim
    from reprolib.zoo import Zoo
    def chapter():
        return Chapter("neural_polarizer", profile="smoke", dataset="fashion-mnist",
                       device="cpu")
    small = dict(attacks=["badnets"], sweep_attacks=["badnets"], clean_ratios=[0.05],
                 poison_ratios=[0.1], npd_epochs=1, ft_epochs=1)
    first = chapter().compute(ex.results, **small)
    for s in jobs.STEPS.values():               # a new process: nothing in memory
        s.recent.clear()
    reads = []
    real_get = Zoo.get
    monkeypatch.setattr(Zoo, "get", lambda zoo, spec: reads.append(spec["job"]) or
                        real_get(zoo, spec))
    ch = chapter()
    again = ch.compute(ex.results, **small)
    assert ch.jobs["computed"] == 0 and again.main.equals(first.main)
    assert reads.count("victim") == 1                       # one victim, read once
    assert reads.count("npd.defense") == 6                  # FT, FP, FP held-out, NPD, ablation
    assert again.victims["badnets"] is trained_victim(**ch.victim_args("badnets"))
