"""The MESA chapter's per-pattern loop and its sweeps, on the smoke profile's clean model."""
import dataclasses
import matplotlib
import pandas as pd
import pytest
import torch

from reprolib.attacks.patterns import pattern_classes
from reprolib.defenses import mesa
from reprolib.experiments import mesa as ex
from reprolib.experiments.plain import arrays
from reprolib.views import mesa as view

matplotlib.use("Agg")

SETTINGS = mesa.Settings(epochs=1, hidden=32)


def test_the_patterns_start_at_170_and_follow_a_fixed_order():
    ids = ex.pattern_ids(5)
    assert ids[0] == 170 and len(set(ids)) == 5 and set(ids) <= set(pattern_classes())
    assert ex.pattern_ids(51)[:5] == ids and sorted(ex.pattern_ids(51)) == pattern_classes()
    patches = ex.patches(2, 1, channels=1)
    assert list(patches) == ["170", str(ids[1]), "random 0"]
    assert [ex.family(p) for p in patches] == ["black and white"] * 2 + ["random"]


@pytest.fixture(scope="module")
def run(smoke_victims):
    clean = smoke_victims.clean
    defender, held_out = mesa.split(clean.test)
    patch = ex.patches(1, 0, channels=1)["170"]
    done = ex.defended_pattern(
        clean=clean.asked, name="170", patch=patch, target=0, inject_rate=0.2,
        inject_recipe=mesa.RETRAIN.replace(epochs=1), settings=SETTINGS,
        reverse_settings=mesa.ReverseSettings(rounds=2, epochs=1, batches=2),
        retrain_recipe=mesa.RETRAIN.replace(epochs=1), rate=0.01, seed=0)
    return clean, defender, held_out, patch, done


def test_a_patterns_run_read_back_from_the_zoo_is_the_one_computed(run):
    clean, defender, held_out, patch, done = run
    again = ex.defended_pattern(**done.run)                       # from the zoo this time
    assert again.rows == done.rows and again.samples == done.samples
    assert torch.equal(again.reversed, done.reversed)
    for beta, g in done.found.generators.items():
        kept = again.found.generators[beta]
        assert not kept.training and all(torch.equal(a, b) for a, b in zip(
            g.state_dict().values(), kept.state_dict().values()))
        assert torch.equal(mesa.sample(g, 8), mesa.sample(kept, 8))


def test_one_pattern_gets_every_retraining_and_every_sampler_measured(run):
    clean, defender, held_out, patch, done = run
    results = pd.DataFrame(done.rows)
    assert list(results.method) == ["no defense", "clean fine-tune", "ideal (true patch)",
                                    "MESA β=0.9", "MESA β=0.8", "MESA β=0.5", "MESA ensemble",
                                    "baseline", "baseline"]
    assert list(results["round"]) == [0] * 7 + [0, 1]
    s = ex.scores(done.victim.model, held_out, patch.triggered(held_out, 0), 0)
    assert results.iloc[0]["ASR %"] == s["ASR %"] and results.iloc[0]["CA %"] == s["CA %"]
    assert done.reversed.shape == (2, 9)
    samples = pd.DataFrame(done.samples)
    assert list(samples.sampler) == ["MESA β=0.9", "MESA β=0.8", "MESA β=0.5",
                                     "baseline round 0", "baseline round 1"]
    assert samples["entropy (nats)"].notna().sum() == 3
    assert samples["trigger ASR %"].between(0, 100).all()
    summary = view.summary_table(results)
    assert list(summary.index) == view.METHODS and view.MESA_METHODS == ex.MESA_METHODS
    assert summary.loc["baseline", "mean ASR %"] == pytest.approx(
        results[results.method == "baseline"]["ASR %"].mean())
    table = view.per_pattern(results)
    assert table.loc["170", ("mean", "no defense")] == results.iloc[0]["ASR %"]
    assert view.attack_table(results, 90.0).loc["170", "clean model CA %"] == 90.0
    patches = {"170": arrays(patch.tensor())}
    assert len(view.defense_figure(results, "black and white", patches, 1).axes) == 1
    drawn = ex.drawn(list(done.found.generators.items()), "svd", 0, n=16)
    assert drawn["keys"] == [0.9, 0.8, 0.5] and drawn["xy"].shape == (48, 2)
    assert torch.equal(torch.from_numpy(drawn["draws"][0]),
                       mesa.sample(done.found.generators[0.9], 16, seed=0).cpu())
    shown = [ax for ax in view.samples_figure(drawn, "β", 1, with_cloud=True).axes
             if ax.axison]
    assert len(shown) == 4          # all samples, then one panel per β (a spare one is off)
    assert len(view.beta_table(samples)) == 3
    spread = ex.distribution({"170": done}, {"170": patch}, "svd", 0, n=16)
    assert spread[0]["xy"].shape == (3 * 16 + 2 + 1, 2)       # samples, reversed, original
    assert len(view.distribution_figure(spread, 1).axes) == 1


def test_the_sweeps_detection_and_claims(run):
    clean, defender, held_out, patch, done = run
    results, samples = pd.DataFrame(done.rows), pd.DataFrame(done.samples)
    by_alpha = ex.alpha_generators(done, [0.1, 0.0], SETTINGS)
    assert by_alpha[0.1] is done.found.generators[0.9]           # reused, not searched again
    alphas = ex.alpha_sweep(done, by_alpha, held_out=held_out, target=0, seed=0)
    assert list(alphas.index) == [0.1, 0.0]
    drawn = ex.drawn(list(by_alpha.items()), "svd", 0, n=16)
    assert len(view.samples_figure(drawn, "α", 1, with_cloud=False).axes) == 2
    rates = ex.rate_sensitivity(done, results, ex.rate_retrainings(done, [0.5]))
    assert list(rates.index) == [0.01, 0.5]
    worst = int(results[results.method == "baseline"].set_index("round")["ASR %"].idxmax())
    assert list(rates.columns) == ["MESA ensemble", f"baseline round {worst}", "clean fine-tune"]
    assert rates.loc[0.01, "MESA ensemble"] == results[
        results.method == "MESA ensemble"]["ASR %"].item()
    detected = ex.detection(done, ex.detected(
        run=done.run, settings=dataclasses.replace(done.run["settings"], betas=(0.9,))))
    assert list(detected.index) == list(range(10))
    assert len(view.detection_figure(detected, 0).axes) == 1
    measured = ex.claims(results, samples, detected, alphas, 90.0, 0)
    others = detected.drop(index=0)["generated-trigger ASR %"]
    assert measured["detection_margin"] == pytest.approx(
        detected.loc[0, "generated-trigger ASR %"] - others.max())
    assert measured["entropy_gap_alpha"] == pytest.approx(
        alphas.loc[0.1, "entropy (nats)"] - alphas.loc[0.0, "entropy (nats)"])
    lines = view.summary(results, view.summary_table(results), detected, measured, clean_ca=90.0,
                       target=0, n_random=0, alphas=[0.1, 0.0])
    assert lines[0].startswith("Attack, 1 black-and-white pattern(s)")
    assert lines[-1].startswith("Detection: class 0 reaches")
