import json

import pandas as pd

import pytest

from reprolib.views import reference
from reprolib.chapter import Chapter
from reprolib.config import ParameterError
from reprolib.views.reference import Claim, Number, Reference, claim_verdict, compare, number_verdict

N = Number("x.asr", "T1", "BadNets", "ASR", 95.0, "paper", "high", tolerance=2.0)
C = Claim("low", "ASR drops below 5 %", "asr_after", "<=", 5.0, margin=3.0, source="abstract")


def test_number_verdicts_by_tolerance_and_setting():
    assert number_verdict(N, 96.5, True) == "reproduced"
    assert number_verdict(N, 91.5, True) == "partly"          # 3.5 off: within 2 × 2
    assert number_verdict(N, 90.0, True) == "not reproduced"
    assert number_verdict(N, 95.0, False) == "not comparable"  # another dataset or model
    assert number_verdict(N, None, True) == "not comparable"
    unknown = Number("y", "T", "r", "c", None, "s", "unknown", 1.0)
    assert number_verdict(unknown, 50.0, True) == "not comparable"


def test_claim_verdicts_by_threshold_and_margin():
    assert claim_verdict(C, 4.9) == "reproduced"
    assert claim_verdict(C, 7.0) == "partly"
    assert claim_verdict(C, 8.5) == "not reproduced"
    assert claim_verdict(C, None) == "not comparable"
    at_least = Claim("hi", "high ASR", "asr", ">=", 90, 10, "s")
    assert claim_verdict(at_least, 92) == "reproduced" and claim_verdict(at_least, 85) == "partly"


def test_a_claim_about_a_defense_is_judged_only_where_its_attack_took_hold():
    removes = Claim("removes", "the defense removes the backdoor", "asr_after", "<=", 5.0, 5.0,
                    "abstract", premise={"measure": "victim_asr", "rule": "took_hold"})
    assert claim_verdict(removes, 2.0, 97.0) == "reproduced"
    assert claim_verdict(removes, 2.0, [97.0, 80.0]) == "reproduced"        # 80 is enough
    assert claim_verdict(removes, 2.0, 36.6) == "inconclusive"    # nothing there to remove
    assert claim_verdict(removes, 2.0, [97.0, 79.9]) == "inconclusive"      # every seed
    assert claim_verdict(removes, 2.0, [97.0, None]) == "inconclusive"      # a seed unmeasured
    assert claim_verdict(removes, 2.0) == "inconclusive"                    # never measured
    assert claim_verdict(removes, None, 97.0) == "not comparable"
    assert "here 36.6" in reference.premise_unmet(removes, 36.6)
    pockets = Claim("p", "pockets", "share", ">=", 50.0, 25.0, "abstract",
                    premise={"measure": "successful_draws", "rule": "draws"})
    assert claim_verdict(pockets, 80.0, 2) == "inconclusive"
    assert claim_verdict(pockets, 80.0, 3) == "reproduced"
    assert reference.premise_unmet(C, None) == ""       # a claim with no premise


def test_an_interval_stays_inside_its_metrics_range():
    asr = Claim("a", "ASR high", "asr", ">=", 90.0, 10.0, "s", bounds=(0, 100))
    ref = Reference("P", "cite", {"dataset": "cifar10", "model": "m"}, [N], [asr])
    row = compare(ref, {"x.asr": [99.0, 100.0, 100.0], "asr": [0.0, 0.5, 0.1]},
                  PAPER_RUN | {"model": "m"}).set_index("id")
    assert row.loc["x.asr", "high"] == 100.0 and row.loc["x.asr", "low"] < 100.0
    assert row.loc["a", "low"] == 0.0 and row.loc["a", "high"] > 0.0
    unbounded = Claim("r", "ratio", "ratio", ">=", 1.0, 1.0, "s")
    assert reference.bounded([0.0, 0.5, 0.1], unbounded.bounds)[1] < 0


def test_a_premise_names_its_measure_and_a_known_rule(tmp_path, monkeypatch):
    (tmp_path / "p.yaml").write_text(
        "paper: P\ncitation: c\nsetting: {dataset: cifar10, model: m}\nclaims:\n"
        "  - {id: a, text: t, measure: m, op: '<=', value: 5, margin: 5, source: s,\n"
        "     premise: {measure: v, rule: strong}}\n")
    monkeypatch.setattr(reference, "FOLDER", tmp_path)
    with pytest.raises(ParameterError, match="premise rule.*strong.*took_hold"):
        reference.load("p")


PAPER_RUN = {"profile": "paper", "dataset": "cifar10", "model": "preact_resnet18"}


def test_compare_builds_one_row_per_number_and_claim_with_deltas():
    ref = Reference("P", "cite", {"dataset": "cifar10", "model": "preact_resnet18"}, [N], [C])
    same = compare(ref, {"x.asr": 94.0, "asr_after": 2.0}, PAPER_RUN)
    assert list(same["verdict"]) == ["reproduced", "reproduced"]
    assert same.loc[0, "delta"] == pytest.approx(-1.0) and same.loc[0, "tolerance"] == "± 2"
    other = compare(ref, {"x.asr": 94.0}, {"profile": "quick", "dataset": "fashion-mnist",
                                           "model": "small_cnn"})
    assert list(other["verdict"]) == ["not comparable", "not comparable"]
    assert other.loc[0, "why"] == ("ran profile quick (paper: paper), dataset fashion-mnist "
                                   "(paper: cifar10), model small_cnn (paper: preact_resnet18)")
    assert other.loc[1, "why"] == "not measured in this run"
    assert pd.isna(other.loc[0, "delta"])        # no difference across settings is shown


def test_a_number_measured_on_a_lossy_copy_is_compared_and_its_verdict_names_the_copy():
    ref = Reference("P", "cite", {"dataset": "cifar10", "model": "preact_resnet18"}, [N], [C])
    rows = compare(ref, {"x.asr": 94.0}, PAPER_RUN, lossy_copy="JPEG-75 copy")
    assert rows.loc[0, "verdict"] == "reproduced" and rows.loc[0, "on"] == "JPEG-75 copy"
    assert reference.verdict_text(rows.loc[0]) == "reproduced, on a JPEG-75 copy"
    far = compare(ref, {"x.asr": 94.0}, {**PAPER_RUN, "profile": "quick"}, "JPEG-75 copy")
    assert far.loc[0, "verdict"] == "not comparable" and far.loc[0, "on"] == ""
    assert reference.verdict_text(compare(ref, {"x.asr": 94.0}, PAPER_RUN).loc[0]) == "reproduced"


@pytest.mark.parametrize("key, value", [("profile", "quick"), ("profile", "smoke"),
                                        ("dataset", "cifar100"), ("model", "resnet18")])
def test_numbers_are_comparable_exactly_when_profile_dataset_and_model_match(key, value):
    ref = Reference("P", "cite", {"dataset": "cifar10", "model": "preact_resnet18"}, [N], [])
    assert compare(ref, {"x.asr": 95.0}, PAPER_RUN).loc[0, "verdict"] == "reproduced"
    row = compare(ref, {"x.asr": 95.0}, {**PAPER_RUN, key: value}).loc[0]
    assert row["verdict"] == "not comparable"
    assert row["why"] == f"ran {key} {value} (paper: {PAPER_RUN[key]})"   # names only that one
    assert reference.differences(ref, PAPER_RUN) == []


def test_every_shipped_reference_loads():
    assert "attacks" in reference.papers()
    for paper in reference.papers():
        ref = reference.load(paper)
        assert ref.numbers or ref.claims
        assert all(n.tolerance > 0 for n in ref.numbers)
    with pytest.raises(ParameterError, match="paper='nope' is not allowed"):
        reference.load("nope")


def test_a_malformed_reference_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(reference, "FOLDER", tmp_path)
    (tmp_path / "bad.yaml").write_text("paper: P\ncitation: c\nsetting: {}\n"
                                       "claims: [{id: a, text: t, measure: m, op: '>', value: 1,"
                                       " margin: 1, source: s}]\n")
    with pytest.raises(ParameterError, match=r"reference/bad.yaml: claim 'a' op='>'"):
        reference.load("bad")


def test_chapter_resolves_parameters_and_writes_its_results(tmp_path, monkeypatch):
    monkeypatch.setenv("REPRO_PROFILE", "smoke")
    out = tmp_path / "attacks.json"
    ch = Chapter("attacks", dataset="fashion-mnist", device="cpu", results=str(out))
    assert (ch.profile, ch.model, ch.dataset) == ("smoke", "small_cnn", "fashion-mnist")
    ch.table("t", pd.DataFrame({"ca": [90.0, float("nan")]}, index=["a", "b"]))
    ch.table("named", pd.DataFrame({"attack": ["x"], "asr": [1.5]}).set_index("attack"))
    ch.table("levels", pd.DataFrame({"attack": ["x"], "model": ["m"], "asr": [2.0]})
             .set_index(["attack", "model"]))
    ch.compare({"badnets.asr": 99.0, "min_asr_dirty": 97.0})
    payload = ch.finish()
    assert json.loads(out.read_text()) == payload
    record = payload["record"]
    assert record["profile"] == "smoke" and record["device"] == "cpu" and record["wall_time_s"] >= 0
    assert {"torch", "python", "papermill"} <= set(record["libraries"])
    assert payload["tables"]["t"] == [{"ca": 90.0}, {"ca": None}]
    assert payload["tables"]["named"] == [{"attack": "x", "asr": 1.5}]
    assert payload["tables"]["levels"] == [{"attack": "x", "model": "m", "asr": 2.0}]
    verdicts = {row["id"]: row["verdict"] for row in payload["comparison"]}
    assert verdicts["badnets.asr"] == "not comparable" and verdicts["dirty-label-asr"] == "reproduced"
    with pytest.raises(ParameterError, match="dataset='mnist'"):
        Chapter("attacks", dataset="mnist")
    with pytest.raises(ParameterError, match="profile='huge'"):
        Chapter("attacks", profile="huge")


def test_auto_dataset_falls_back_to_fashion_mnist_offline_and_says_why(tmp_path):
    ch = Chapter("attacks", data_dir=str(tmp_path), device="cpu")
    assert ch.dataset == "fashion-mnist" and "downloading is off" in ch.dataset_why
