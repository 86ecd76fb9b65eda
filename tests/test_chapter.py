import json
from types import SimpleNamespace

import pandas as pd
import pytest

from reprolib import config, jobs
from reprolib.views import glue
from reprolib.chapter import Chapter
from reprolib.metrics import score_row
from reprolib.config import ParameterError


class FakeVictim:
    """scores() of the undefended model (None) and of any other model, as Victim gives them."""

    def __init__(self, before, after):
        self.before, self.after = before, after

    def scores(self, model=None):
        return self.before if model is None else self.after[model]


def test_the_score_row_is_in_percent_with_the_der_against_the_undefended_model():
    v = FakeVictim({"ca": 0.9, "asr": 0.95, "ra": 0.04},
                   {"tuned": {"ca": 0.86, "asr": 0.05, "ra": 0.8}})
    row = score_row(v, "tuned")
    assert row == pytest.approx({"CA %": 86.0, "ASR %": 5.0, "RA %": 80.0,
                                 "DER %": 100 * (0.90 - 0.04 + 1) / 2})
    assert list(row) == ["CA %", "ASR %", "RA %", "DER %"]
    assert score_row(v)["DER %"] == pytest.approx(50.0)          # nothing changed
    plain = score_row(v, "tuned", with_der=False)
    assert list(plain) == ["CA %", "ASR %", "RA %"] and plain["CA %"] == pytest.approx(86.0)


def test_the_comparison_is_glued_for_the_prose_as_myst_nb_reads_it(monkeypatch):
    shown = []
    monkeypatch.setattr("reprolib.views.glue.display",
                        lambda bundle, raw, metadata: shown.append((bundle, metadata)))
    glue.comparison(pd.DataFrame({"id": ["a", "b", "c", "d", "e"],
                                  "ours": [97.123, None, 0.5, 3.0, 1.0],
                                  "verdict": ["reproduced", "not comparable", "reproduced",
                                              "partly", "inconclusive"]}), [0])
    glued = {}
    for bundle, metadata in shown:
        prefix = metadata["scrapbook"]["mime_prefix"]
        assert prefix == "application/papermill.record/" and list(bundle) == [prefix + "text/plain"]
        glued[metadata["scrapbook"]["name"]] = bundle[prefix + "text/plain"]
    assert glued == {"a": "97.1", "b": "not measured", "c": "0.50", "d": "3.00", "e": "1.00",
                     "n-reproduced": "2", "n-partly": "1", "n-not-reproduced": "0",
                     "n-inconclusive": "1", "n-not-comparable": "1", "n-checked": "3",
                     "seeds-note": "seed 0"}


def test_each_chapter_reads_its_scale_knobs_at_its_profile():
    quick = Chapter("mesa", profile="quick", dataset="fashion-mnist", device="cpu")
    paper = Chapter("mesa", profile="paper", dataset="fashion-mnist", device="cpu")
    assert quick.scale().n_patterns == 3 and paper.scale().n_patterns == 51
    assert quick.scale(n_patterns=7, rounds=None).n_patterns == 7     # a given value wins
    assert quick.scale(rounds=None).rounds == 5                       # None takes the table's
    with pytest.raises(ParameterError, match="'steps' is not a scale knob of 'mesa'"):
        quick.scale(steps=3)


def test_the_scale_table_has_a_value_per_profile_and_hands_out_copies():
    for chapter, knobs in config.SCALES.items():
        for name, values in knobs.items():
            assert len(values) == len(config.PROFILES), (chapter, name)
    epochs = config.scale("none", "quick").abl_epochs
    epochs.append(99)                               # the caller's copy, not the table
    assert config.scale("none", "quick").abl_epochs == [2, 3, 1, 4]
    assert config.scale("attacks", "quick") == SimpleNamespace()
    with pytest.raises(ParameterError, match="profile='huge'"):
        config.scale("mesa", "huge")


@pytest.mark.parametrize("chapter, paper_model", [
    ("attacks", "preact_resnet18"), ("linf_pruning", "preact_resnet18"),
    ("neural_polarizer", "preact_resnet18"), ("mesa", "resnet18"), ("none", "resnet18"),
    ("clear", "resnet18")])
def test_the_model_is_a_setting_read_from_the_chapters_reference(chapter, paper_model,
                                                                 monkeypatch):
    monkeypatch.delenv("REPRO_MODEL", raising=False)
    at = {p: Chapter(chapter, profile=p, dataset="fashion-mnist", device="cpu")
          for p in ("smoke", "quick", "paper")}
    assert [at[p].model for p in at] == ["small_cnn", "small_cnn", paper_model]    # auto
    paper = Chapter(chapter, profile="smoke", model="paper", dataset="fashion-mnist",
                    device="cpu")
    assert paper.model == paper_model and paper.record()["model"] == paper_model
    monkeypatch.setenv("REPRO_MODEL", "paper")           # how the CI miniature asks for it
    assert Chapter(chapter, profile="quick", dataset="fashion-mnist").model == paper_model
    with pytest.raises(ParameterError, match="model='vgg' is not allowed"):
        Chapter(chapter, model="vgg", dataset="fashion-mnist")


def test_the_recipe_goes_with_the_model():
    small = Chapter("none", profile="smoke", dataset="fashion-mnist", device="cpu")
    assert small.recipe == config.profile("smoke").recipe and not small.paper_recipe
    assert not small.setting["attack_recipes"]
    paper = Chapter("none", profile="paper", dataset="fashion-mnist", device="cpu")
    # NONE's own code: lr 0.1, wd 1e-4, tenfold drops before epochs 80 and 160 of 200
    assert (paper.recipe.epochs, paper.recipe.lr, paper.recipe.weight_decay,
            paper.recipe.schedule, paper.recipe.milestones) == (200, 0.1, 1e-4, "multistep",
                                                                (79, 159))
    assert paper.setting["attack_recipes"]
    mini = Chapter("none", profile="smoke", model="paper", dataset="fashion-mnist", device="cpu")
    assert mini.recipe == paper.recipe.rescaled(3) and mini.recipe.milestones == (1, 2)
    assert Chapter("attacks", profile="paper", dataset="fashion-mnist").recipe == \
        config.profile("paper").recipe                  # BackdoorBench's, unchanged


def test_a_chapters_jobs_are_found_by_calling_it_and_a_new_section_needs_no_list():
    from reprolib.experiments import attacks as ex
    from reprolib.victims import trained_victim
    ch = Chapter("attacks", profile="smoke", dataset="fashion-mnist", device="cpu")

    def with_a_section(ch, **params):           # a section added to the chapter, nothing else
        r = ex.results(ch, **params)
        r.extra = trained_victim(**ch.victim_args("blended"))
        return r
    first = jobs.declared(with_a_section, ch, attacks=["badnets"])
    assert [j.describe() for j in first.jobs] == ["victim clean seed 0",
                                                  "victim badnets 0.1 seed 0"]
    assert not first.ended          # the table needs the victims: the section comes next round
    before = len(jobs.COMPUTED)
    r = ch.compute(with_a_section, attacks=["badnets"])
    assert ch.jobs == {"jobs": 3, "computed": 3, "cached": 0}
    assert set(jobs.COMPUTED[before:]) == ch._keys                      # all declared, once
    assert r.extra.attack.name == "blended" and list(r.table.index) == ["none (clean)", "badnets"]
    assert ch.compute(with_a_section, attacks=["badnets"]).table.equals(r.table)
    assert len(jobs.COMPUTED) == before + 3                             # the rerun read them


def test_a_bad_value_stops_the_chapter_before_any_job(capsys):
    from reprolib.experiments import attacks as ex
    ch = Chapter("attacks", profile="smoke", dataset="fashion-mnist", device="cpu")
    before = len(jobs.COMPUTED)
    with pytest.raises(ParameterError, match="ratio=1.5 is out of range"):
        ch.compute(ex.results, attacks=["badnets"], ratio=1.5)
    with pytest.raises(ParameterError, match="target=12"):
        ch.compute(ex.results, attacks=["badnets"], target=12)
    assert len(jobs.COMPUTED) == before


def test_a_claim_measured_without_its_premise_stops_the_chapter():
    ch = Chapter("linf_pruning", profile="smoke", dataset="fashion-mnist", device="cpu")
    with pytest.raises(RuntimeError, match="'prune-removes' is measured but not its premise "
                                           "'undefended_asr_badnets'"):
        ch.compare({"linf_prune_asr_badnets": 3.0})
    table = ch.compare({"linf_prune_asr_badnets": 3.0, "undefended_asr_badnets": 41.0})
    row = table.set_index("id").loc["prune-removes"]
    assert row["verdict"] == "inconclusive" and "here 41" in row["why"]
    assert ch.record()["dataset_source"] == "official idx files"


def test_a_run_on_another_dataset_says_which_verdicts_changed_with_both_values(tmp_path):
    from reprolib import book
    from reprolib.views import display
    ch = Chapter("linf_pruning", profile="smoke", dataset="fashion-mnist", device="cpu")
    table = ch.compare({"linf_prune_asr_badnets": 3.0, "undefended_asr_badnets": 41.0})
    results = tmp_path / "book" / "results"
    results.mkdir(parents=True)
    rows = [dict(row, verdict="reproduced", ours=2.5) for row in table.to_dict("records")]
    before = {"record": {"dataset": "cifar10", "profile": "smoke", "code_version": "0.1.0+abc"},
              "comparison": rows}
    (results / "linf_pruning.json").write_text(json.dumps(before))
    assert ch.runs_on_other_datasets(tmp_path) == [before]
    (results / "cifar10").mkdir()
    (results / "cifar10" / "linf_pruning.json").write_text(json.dumps(
        {**before, "comparison": []}))
    assert ch.runs_on_other_datasets(tmp_path) == [before]      # one a dataset, the newest
    (results / "cifar10" / "linf_pruning.json").unlink()
    line = display.verdict_changes(table, before)
    assert line.startswith("**Against the cifar10 run** (profile smoke, code 0.1.0+abc): 1 verdict "
                           "changed.")
    assert "reproduced on cifar10 (2.50), inconclusive here (3.00)" in line
    # a run on the same dataset or at another profile is not compared with
    (results / "linf_pruning.json").write_text(json.dumps(
        {**before, "record": {**before["record"], "profile": "quick"}}))
    assert ch.runs_on_other_datasets(tmp_path) == []
    # replacing results from another dataset sets them aside for the next run to compare with
    new = tmp_path / "new.json"
    new.write_text(json.dumps({"record": {"dataset": "fashion-mnist"}}))
    book.set_aside(results / "linf_pruning.json", new)
    assert (results / "cifar10" / "linf_pruning.json").is_file()
    assert not (results / "linf_pruning.json").exists()
