"""The NONE chapter's loops, on the smoke profile's BadNets model, one epoch each."""
import math
from types import SimpleNamespace

import matplotlib
import pandas as pd
import pytest

from reprolib.config import ParameterError
from reprolib.defenses import none as none_
from reprolib.defenses.none import activations, neuron_scores
from reprolib.experiments import none as ex
from reprolib.experiments.plain import arrays
from reprolib.views import none as view

matplotlib.use("Agg")


def scale(**changes):
    return SimpleNamespace(**{"none_epochs": 1, "abl_epochs": [1, 1, 0, 1],
                              "natural_schedule": [1, 1], **changes})


def test_the_settings_come_from_the_scale_and_are_checked():
    repair, isolation, natural, rounds = ex.settings(scale(), none_lr=0.01, augment=False,
                                                     fractions=[0.03], areas=[0.02])
    assert repair == none_.Settings(lr=0.01, epochs=1, warmup=True)
    assert (isolation.isolation_epochs, isolation.finetune_epochs,
            isolation.unlearning_epochs) == (1, (1, 0), 1)
    assert natural.fraction == 0.2 and natural.drop is False and rounds == 1
    with pytest.raises(ParameterError, match="abl_epochs=\\[1, 1\\] must have 4 entries"):
        ex.settings(scale(abl_epochs=[1, 1]), none_lr=0.01, augment=False, fractions=[],
                    areas=[])
    with pytest.raises(ParameterError, match="areas=1.5 is out of range"):
        ex.settings(scale(), none_lr=0.01, augment=False, fractions=[], areas=[1.5])


def test_the_asr_ratio_reads_both_averages_and_floors_a_zero_asr():
    main = pd.DataFrame({"attack": ["a", "a", "b", "b"],
                         "defense": ["no defense", "NONE"] * 2,
                         "ASR %": [90.0, 9.0, 100.0, 0.0]}).set_index(["attack", "defense"])
    victims = {"a": SimpleNamespace(backdoor=range(100)), "b": SimpleNamespace(backdoor=range(50))}
    r = ex.asr_ratios(main, victims, "NONE")
    assert r["ratio of means"] == pytest.approx(95 / 4.5)
    # b's 0 % counts as one of its 50 images: 2 %, so a ratio of 50; a's is 10
    assert r["geometric mean of ratios"] == pytest.approx(math.sqrt(10 * 50))


def test_the_main_table_filtering_linearity_ablation_and_natural_scan(smoke_victims, tmp_path):
    v = smoke_victims.badnets
    victims = {"badnets": v}
    repair, isolation, natural, rounds = ex.settings(scale(), none_lr=0.01, augment=False,
                                                     fractions=[0.03], areas=[0.02])
    isolated = {"badnets": ex.trained_by_abl(victim=v.asked, settings=isolation,
                                             model_name="small_cnn", seed=0, device="cpu")}
    repaired = {"badnets": ex.repaired_by_none(victim=v.asked, settings=repair, augment=False,
                                               seed=0)}
    main, filtered = ex.main_table(victims, isolated, repaired)
    assert list(main.index) == [("badnets", d) for d in view.DEFENSES]
    assert main.loc[("badnets", "no defense"), "CA %"] == pytest.approx(100 * v.scores()["ca"])
    assert main.loc[("badnets", "NONE"), "ASR %"] == pytest.approx(
        100 * v.scores(repaired["badnets"].model)["asr"])
    quality = filtered.loc[("badnets", "NONE (Jenks drop)")]
    assert quality["flagged"] == len(repaired["badnets"].rounds[0].dropped)
    assert quality["poisoned"] == len(v.poison_indices) == 200
    assert filtered.loc[("badnets", "ABL (isolated 1 %)"), "flagged"] == 20
    assert view.main_view(main, victims).shape == (1, 9)
    assert list(ex.ratio_table(main, victims).index) == ["ABL", "NONE"]
    first_round = repaired["badnets"].rounds[0]
    scores = {"badnets": {"scores": arrays(first_round.scores),
                          "poisoned": arrays(v.poison_indices),
                          "threshold": float(first_round.threshold)}}
    assert len(view.score_figure(scores).axes) == 1

    picture = arrays(ex.linearity(victim=v.asked, per_class=5, steps=3))
    assert picture["layer"] == "conv4" and picture["curves"].shape == (3, 10, 2)
    score = neuron_scores(activations(v.model, v.train))["conv4"]
    assert picture["scores"]["suspicious"] == pytest.approx(score.max().item())
    assert picture["channels"]["suspicious"] == int(score.argmax())
    assert len(picture["sure"]) + len(picture["unsure"]) <= len(v.train)
    panels = view.linearity_figure(picture).axes      # the fourth holds the classes' legend
    assert len(panels) == 4 and not panels[3].axison and panels[3].get_legend() is not None

    variants = none_.variants(repair, [0.03, 0.1], v.model)
    two = {k: variants[k] for k in ("f = 0.03", "no reset")}
    ablated = ex.ablation(v, two, {k: ex.repaired_by_none(victim=v.asked, settings=s,
                                                          augment=False, seed=0)
                                   for k, s in two.items()})
    assert list(ablated.index) == ["f = 0.03", "no reset"]
    assert ablated.loc["f = 0.03", "ASR %"] == main.loc[("badnets", "NONE"), "ASR %"]
    assert ablated.loc["no reset", "reset channels"] > 0               # chosen, not zeroed
    assert len(view.ablation_figure(ablated, [0.03], 90.0, "badnets").axes) == 1

    clean = smoke_victims.clean
    first = ex.natural_round(victim=clean.asked, settings=natural, index=1, augment=False, seed=0)
    args = dict(victim=clean.asked, settings=natural, index=1, augment=False, seed=0)
    scans, accuracy, ratio = ex.natural(clean, [first], [args], areas=[0.02], scan_steps=3,
                                        check_images=100, seed=0)
    assert list(scans.index) == [("standard", 2.0), ("NONE round 1", 2.0)]
    assert scans["max REASR %"].between(0, 100).all()
    assert list(accuracy.index) == ["standard", "NONE round 1"]
    standard = scans.loc[("standard", 2.0), "max REASR %"]
    final = scans.loc[("NONE round 1", 2.0), "max REASR %"]
    assert ratio["ratio of means"] == pytest.approx(standard / max(final, 1e-9))
    assert accuracy.loc["NONE round 1", "CA %"] == pytest.approx(
        100 * clean.scores(first.model)["ca"])
    assert len(view.natural_figure(scans, 1).axes) == 1
    measured = ex.claims(main, ex.ratio_table(main, victims), ratio)
    assert measured["none_badnets_ca_drop"] == pytest.approx(
        main.loc[("badnets", "no defense"), "CA %"] - main.loc[("badnets", "NONE"), "CA %"])
    lines = view.summary(main, filtered, ex.ratio_table(main, victims), scans, accuracy, ratio, 1,
                         victims)
    assert len(lines) == 3 and lines[0].startswith("**badnets**: ASR")
