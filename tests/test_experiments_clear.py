"""The CLEAR chapter's loops: one draw of each attack against the smoke profile's clean model,
its detection, calibration, mitigation, figures and ablation."""
import math
from types import SimpleNamespace

import matplotlib
import numpy as np
import pytest
import torch

from reprolib.attacks.targeted import hits, mislabelled_copies, top_two
from reprolib.config import ParameterError, Recipe
from reprolib.config import profile as profile_of
from reprolib.experiments import clear as ex
from reprolib.train import evaluate
from reprolib.views import clear as view

matplotlib.use("Agg")

DRAWS = {"mislabelled copies": 1, "feature collision": 1, "gradient matching": 1}


def test_the_draws_and_parameters_are_checked():
    scale = SimpleNamespace(draws_copies=2, draws_collision=0, draws_brew=1)
    assert ex.draws(scale) == {"mislabelled copies": 2, "feature collision": 0,
                               "gradient matching": 1}
    with pytest.raises(ParameterError, match="draws_brew=-1"):
        ex.draws(SimpleNamespace(draws_copies=2, draws_collision=0, draws_brew=-1))
    good = dict(pairing="nearest", brew_augment=True, brew_steps=10, restarts=1, copies=50,
                poisons=25, budget=0.01, eps=8, dim=8, k_transfer=50, k_scratch=100,
                ks=[25], dims=[4])
    ex.check_parameters(**good)
    for bad, message in ((dict(pairing="far"), "pairing='far'"), (dict(dims=[4, 0]), "dims=0"),
                         (dict(eps=300), "eps=300"), (dict(budget=0), "budget=0")):
        with pytest.raises(ParameterError, match=message):
            ex.check_parameters(**{**good, **bad})


@pytest.fixture(scope="module")
def runs(smoke_victims):
    clean = smoke_victims.clean
    found = ex.run_attacks(ex.attack_args(
        clean.asked, DRAWS, model_name="small_cnn", recipe=profile_of("smoke").recipe,
        pairing="nearest", copies=30, poisons=5, budget=0.01, eps=8, brew_steps=2, restarts=1,
        brew_augment=False, pool_size=300, seed=0, device="cpu"))
    ex.detect(found, [ex.examined(**examined_args(r)) for r in found])
    return clean, found


def examined_args(r) -> dict:
    """The arguments of the `examined` job of the run `r`, as `ex.results` asks for it."""
    return dict(run=r.args, k=20 if r.transfer else 40, dim=4)


def test_each_attack_draws_a_target_poisons_and_an_attacked_model(runs):
    clean, found = runs
    assert [r.attack for r in found] == list(DRAWS)
    ranked = top_two(clean.model, clean.test)
    for r in found:
        assert r.true == clean.test.labels[r.target] and r.attacker == ranked[r.target, 1]
        if r.transfer:          # the clean extractor, read back from the zoo
            assert all(torch.equal(a, b) for a, b in zip(r.extractor.state_dict().values(),
                                                         clean.model.state_dict().values()))
        else:
            assert r.extractor is r.model
        assert 0 <= r.ca <= 100 and r.seconds > 0
    copies, collision, brew = found
    assert len(copies.atk.indices) == 30 and len(copies.atk.data) == len(clean.train) + 30
    assert len(collision.atk.data) == 300 and len(collision.atk.indices) == 5
    assert len(brew.atk.indices) == round(0.01 * len(clean.train))
    table = ex.attack_table(found)
    assert list(table.poisons) == [30, 5, 20] and list(table.success) == [r.success for r in found]
    summary = view.attack_summary(table)
    assert list(summary.index) == list(DRAWS) and (summary.draws == 1).all()


def test_a_draw_read_back_from_the_zoo_is_the_one_its_job_computed(runs):
    clean, found = runs
    copies = found[0]
    direct = mislabelled_copies(clean.train, clean.test.images[copies.target], copies.true,
                                copies.attacker, copies=30, seed=0)
    assert torch.equal(copies.atk.data.images, direct.data.images)
    assert torch.equal(copies.atk.data.labels, direct.data.labels)
    for r in found:         # the kept scores were measured on the model the job trained
        assert r.ca == pytest.approx(100 * evaluate(r.model, clean.test)["ca"])
        assert r.success == hits(r.model, clean.test, r.target, r.attacker)
        again = ex.attacked(**r.args)
        assert torch.equal(again.atk.data.images, r.atk.data.images)
        assert torch.equal(again.atk.indices, r.atk.indices)


def test_detection_scores_every_run_and_the_clean_references(runs, smoke_victims):
    clean, found = runs
    for r in found:
        assert r.examined.score == max((f.score for f in r.examined.found), default=0.0)
        assert 0 <= r.clear_r <= 1 and 0 <= r.knn_r <= 1 and 0 <= r.oracle_enclosure <= 1
    copies = found[0]
    flagged = copies.examined.knn.flagged.nonzero().flatten()
    assert copies.knn_r == pytest.approx(torch.isin(copies.atk.indices, flagged).float().mean())
    scores = ex.calibrate(ex.references(clean.asked, pool_size=300, clean_pools=2,
                                        clean_models=1, k_transfer=20, k_scratch=40, dim=4))
    assert len(scores["transfer"]) == 2 and len(scores["from scratch"]) == 1
    threshold = {s: float(np.percentile(v, 95)) for s, v in scores.items()}
    table = ex.detection_table(found, DRAWS, scores, threshold)
    assert list(table.index) == list(DRAWS)
    assert list(table.setting) == ["from scratch", "transfer", "from scratch"]
    row = table.loc["mislabelled copies"]
    assert row["clean references"] == 1 and row["models"] == 1
    assert row["TPR %"] == 100 * (copies.examined.score > threshold["from scratch"])
    assert row["Deep k-NN recall % (all)"] == pytest.approx(100 * copies.knn_r)
    knn, mine = view.flags_of(table, "Deep k-NN"), view.flags_of(table, "CLEAR")
    assert list(knn) == ["precision %", "precision % (all)", "recall %", "recall % (all)"]
    assert list(mine) == [*knn, "poisons in the widest hull %"]
    assert knn.loc["mislabelled copies", "recall % (all)"] == row["Deep k-NN recall % (all)"]
    runs_ = [ex.run_row(r) for r in found]
    assert runs_[0]["score"] == copies.examined.score and runs_[0]["transfer"] is False
    assert len(view.score_figure(runs_, DRAWS, ex.SETTING, scores, threshold).axes) == 2
    top = ex.top_pockets(found)
    assert len(top) == 3 and (top.candidates >= 0).all()


def test_mitigation_figures_ablation_and_claims(runs):
    clean, found = runs
    copies = found[0]
    plain = clean.train.sample(100, 0)
    sets = ex.mitigation_sets(copies, plain)
    assert list(sets) == ex.METHODS[1:]
    oracle = sets["oracle relabel + FT"]
    assert (oracle.labels[copies.atk.indices] == copies.true).all()
    assert len(sets["Deep k-NN + FT"]) == len(copies.atk.data) - int(
        copies.examined.knn.flagged.sum())
    recipe = Recipe(epochs=1, lr=0.01, schedule="cosine")
    won = [r for r in found if r.success]
    mitigations = {(r.attack, r.draw): ex.mitigated(run=r.args, examined_=examined_args(r),
                                                    scratch_recipe=recipe, plain_one_in=20,
                                                    seed=0) for r in won}
    per_draw = ex.mitigate(found, mitigations)
    assert len(per_draw) == len(ex.METHODS) * len(won)
    assert all(list(r.after) == ["CLEAR relabel + FT"] for r in won)
    table = view.mitigation_table(per_draw)
    assert table["attack success %"].between(0, 100).all()
    shown = won[0] if won else found[0]
    pocket = ex.pocket_picture(shown, clean.test, clean.train, 0)
    assert list(pocket["panels"])[:2] == ["before the attack", "after the attack"]
    assert pocket["panels"]["after the attack"].shape == (41, 41)
    assert len(view.pocket_figure(pocket).axes) >= 2
    picture = ex.feature_picture(shown, clean.test, 0)
    assert len(picture["poisons"]) == len(shown.atk.indices) and picture["target"].shape == (2,)
    fig, caption = view.feature_figure(picture)
    assert len(fig.axes) == 1 and caption.endswith(".")
    collision = [r for r in found if r.attack == "feature collision"]
    ablation = ex.ablation([ex.ablated(run=r.args, dims=[2, 4], ks=[10, 20]) for r in collision])
    assert list(ablation.index) == [(2, 10), (2, 20), (4, 10), (4, 20)]
    assert list(ablation.columns) == ex.ABLATION_COLUMNS[2:]
    assert len(view.ablation_figure(ablation, [10, 20]).axes) == 2
    detection = ex.detection_table(found, DRAWS, {"transfer": [0.0], "from scratch": [0.0]},
                                   {"transfer": 0.0, "from scratch": 0.0})
    measured = ex.claims(found, per_draw, detection, train_seconds=10.0)
    scratch = [r for r in found if not r.transfer]
    assert measured["detect_time_share"] == pytest.approx(
        np.mean([r.examined.seconds for r in scratch]) / 10.0)
    assert ("clear_recall" in measured) == bool(won)
    lines = view.summary([ex.run_row(r) for r in found], ex.attack_table(found), detection,
                         table, 90.0, 10.0, ex.SETTING)
    assert lines[0].startswith("**mislabelled copies** (from scratch): ")
    assert lines[-1].startswith("CLEAR's detection took")


def test_a_mean_over_nothing_but_nans_is_nan():
    assert math.isnan(ex._mean([float("nan")])) and ex._mean([1.0, float("nan"), 3.0]) == 2.0
