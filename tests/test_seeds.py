"""Seeds: the interval, the verdicts that read it, tables over seeds, and how a run asks for
several seeds."""
import math

import pandas as pd
from scipy import stats
import pytest

from reprolib import book, config
from reprolib.views import seeds
from reprolib.chapter import Chapter
from reprolib.cli import main
from reprolib.config import ParameterError
from reprolib.views.reference import Claim, Number, Reference, claim_verdict, compare, number_verdict

N = Number("x.asr", "T1", "BadNets", "ASR", 95.0, "paper", "high", tolerance=2.0)
AT_MOST = Claim("low", "ASR drops below 5 %", "asr_after", "<=", 5.0, margin=3.0, source="s")
AT_LEAST = Claim("bias", "ℓ∞ bias ≥ 1.5", "bias", ">=", 1.5, margin=0.5, source="s")


def test_the_interval_is_students_t_over_the_seeds():
    mean, low, high = seeds.interval([1.0, 2.0, 3.0])
    # s = 1, t(0.975, 2) = 4.302653 from a printed t table: half-width 4.302653 / √3
    assert mean == 2.0 and high - mean == pytest.approx(4.302653 / math.sqrt(3), abs=1e-5)
    assert mean - low == pytest.approx(high - mean)
    _, low, high = seeds.interval([5.0, 5.0])             # no spread, no width
    assert low == high == 5.0
    assert seeds.interval([7.0]) == (7.0, None, None)      # one seed: no interval
    with pytest.raises(ValueError):
        seeds.interval([])
    assert seeds.values_of([1.0, None, float("nan"), 2]) == [1.0, 2.0]
    assert seeds.values_of(3) == [3.0] and seeds.values_of(None) == []


def test_a_threshold_claim_is_reproduced_only_when_the_whole_interval_holds():
    assert claim_verdict(AT_LEAST, [1.7, 1.8, 1.9]) == "reproduced"   # [1.55, 2.05]: inside
    assert claim_verdict(AT_LEAST, [1.2, 1.6, 2.0]) == "partly"   # mean 1.6, interval straddles
    # the ℓ∞ chapter's claim 2 as the issue saw it, 1.09 at seed 0 and 1.52 at seed 1, and 1.3
    assert claim_verdict(AT_LEAST, [1.09, 1.52, 1.3]) == "not reproduced"  # mean 1.30 below
    assert claim_verdict(AT_LEAST, [1.0, 1.05, 1.1]) == "not reproduced"   # wholly outside
    assert claim_verdict(AT_MOST, [1.0, 2.0, 3.0]) == "reproduced"          # [-0.48, 4.48]
    assert claim_verdict(AT_MOST, [1.0, 4.0, 7.0]) == "partly"
    assert claim_verdict(AT_MOST, [None, None]) == "not comparable"


def test_one_seed_keeps_the_rule_of_one_value():
    assert claim_verdict(AT_LEAST, [1.52]) == claim_verdict(AT_LEAST, 1.52) == "reproduced"
    assert claim_verdict(AT_LEAST, [1.09]) == "partly"           # within the margin of 0.5
    assert claim_verdict(AT_LEAST, [0.9]) == "not reproduced"
    assert claim_verdict(AT_LEAST, [1.09, None]) == "partly"     # one seed measured it
    assert number_verdict(N, [96.5], True) == "reproduced"
    assert number_verdict(N, [91.5], True) == "partly"
    assert number_verdict(N, [90.0], True) == "not reproduced"


def test_a_number_is_reproduced_when_the_paper_lies_in_the_widened_interval():
    # [89, 90, 91]: mean 90, half-width t(0.975, 2) · 1 / √3 = 2.48, interval [87.52, 92.48]
    spread = [89.0, 90.0, 91.0]
    assert number_verdict(N, spread, True) == "partly"                  # 95 is 2.52 beyond
    assert number_verdict(N, [94.0, 95.5, 97.0], True) == "reproduced"  # 95 inside
    assert number_verdict(N, [92.0, 92.5, 93.0], True) == "reproduced"  # 1.26 beyond: < 2
    assert number_verdict(N, [90.5, 90.75, 91.0], True) == "partly"     # 3.63 beyond: < 4
    assert number_verdict(N, [85.0, 85.5, 86.0], True) == "not reproduced"
    assert number_verdict(N, spread, False) == "not comparable"


def test_compare_gives_the_mean_interval_and_n_of_each_row():
    ref = Reference("P", "cite", {"dataset": "cifar10", "model": "preact_resnet18"}, [N],
                    [AT_MOST])
    run = {"profile": "paper", "dataset": "cifar10", "model": "preact_resnet18"}
    table = compare(ref, {"x.asr": [94.0, 96.0], "asr_after": [4.0]}, run).set_index("id")
    assert table.loc["x.asr", "ours"] == 95.0 and table.loc["x.asr", "n"] == 2
    assert table.loc["x.asr", "low"] == pytest.approx(95.0 - 12.706205, abs=1e-4)  # t(0.975, 1)
    assert table.loc["low", "n"] == 1 and pd.isna(table.loc["low", "low"])
    from reprolib.views.reference import interval_text
    assert interval_text(table.loc["low"]) == "1 seed"
    # an ASR cannot pass 100 %: its interval stops there (the unclipped one reaches 107.71)
    assert interval_text(table.loc["x.asr"]) == "[82.29, 100.00], n = 2".replace(" ", "\u00a0")


def test_a_table_over_seeds_matches_rows_by_their_text_and_keeps_fixed_columns():
    a = pd.DataFrame({"attack": ["badnets", "blended"], "ratio": [0.1, 0.1], "asr": [90.0, 80.0]})
    b = pd.DataFrame({"attack": ["blended", "badnets"], "ratio": [0.1, 0.1], "asr": [82.0, 94.0]})
    c = pd.DataFrame({"attack": ["badnets"], "ratio": [0.1], "asr": [98.0]})
    out = seeds.over_seeds({0: a, 1: b, 2: c}).set_index("attack")
    assert list(out.columns) == ["ratio", "asr", "± asr", "n"]
    assert out.loc["badnets", "asr"] == 94.0 and out.loc["badnets", "n"] == 3
    assert out.loc["badnets", "± asr"] == pytest.approx(4.302653 * 4 / math.sqrt(3), abs=1e-4)
    assert out.loc["blended", "asr"] == 81.0 and out.loc["blended", "n"] == 2
    assert out.loc["blended", "ratio"] == 0.1            # equal in every seed: left as it is
    shown = seeds.shown(out.reset_index())
    # at the precision the book gives the column: an ASR (a percentage) to one decimal
    assert shown.loc[0, "asr"] == "94.0 ± 9.9" and "± asr" not in shown.columns
    assert shown.loc[0, "ratio"] == "0.10"
    # a seed that measured nothing (NaN) counts in "n" but not in the column's own count
    none = pd.DataFrame({"attack": ["badnets"], "asr": [float("nan")]})
    out = seeds.over_seeds({0: a[["attack", "asr"]], 1: none}).set_index("attack")
    assert out.loc["badnets", "asr"] == 90.0 and pd.isna(out.loc["badnets", "± asr"])
    assert (out.loc["badnets", "n"], out.loc["badnets", "n asr"]) == (2, 1)
    # a value no seed of a row gave (a clean model's ASR) is missing, not "0 seeds"
    clean = pd.DataFrame({"attack": ["clean", "badnets"], "asr": [float("nan"), 90.0]})
    out = seeds.over_seeds({0: clean, 1: clean.assign(asr=[float("nan"), 92.0])})
    assert "n asr" not in out.columns and pd.isna(out.loc[0, "asr"])


def test_the_seeds_of_a_run_are_resolved_and_checked():
    assert seeds.resolve(None, None, 3) == [0, 1, 2]
    assert seeds.resolve(5, None, 3) == [5]             # `seed` stays for one
    assert seeds.resolve(None, [2, 7], 3) == [2, 7]
    with pytest.raises(ParameterError, match="give one of them"):
        seeds.resolve(1, [1, 2], 3)
    with pytest.raises(ParameterError, match=r"seeds=\[\] is not allowed"):
        seeds.resolve(None, [], 3)
    with pytest.raises(ParameterError, match="repeats a seed"):
        seeds.resolve(None, [1, 1], 3)
    with pytest.raises(ParameterError, match="seeds=-1 is out of range"):
        seeds.resolve(None, [0, -1], 3)


def test_the_default_seeds_are_three_at_paper_one_at_smoke_and_three_for_the_quick_chapters():
    assert all(config.seeds(c, "smoke") == 1 and config.seeds(c, "paper") == 3
               for c in book.chapters())
    assert config.seeds("attacks", "quick") >= 3 and config.seeds("linf_pruning", "quick") >= 3
    assert set(config.SEEDS) == set(book.chapters())
    def seeds_of(*pairs):
        return book.check_run(["attacks"], profile="quick", dataset="fashion-mnist",
                              device="cpu", pairs=list(pairs))["attacks"]["seeds"]
    assert seeds_of() == [0, 1, 2] and seeds_of("seed=4") == [4]
    assert seeds_of("seeds=[3, 5]") == [3, 5]
    assert Chapter("attacks", profile="quick", device="cpu").seeds == [0]    # a notebook: one


def test_each_seed_has_its_own_jobs_and_repro_plan_lists_them(capsys):
    one = book.planned_jobs("attacks", profile="smoke", dataset="fashion-mnist", device="cpu",
                            params={"attacks": ["badnets"]})[1]
    ch, two = book.planned_jobs("attacks", profile="smoke", dataset="fashion-mnist",
                                device="cpu", params={"attacks": ["badnets"], "seeds": [0, 1]})
    assert ch.seed == 0 and len(two) == 2 * len(one) == 4
    assert len({j.key for j in two}) == 4 and {j.key for j in one} < {j.key for j in two}
    assert "victim badnets 0.1 seed 1" in [j.describe() for j in two]
    argv = ["plan", "attacks", "--profile", "smoke", "--dataset", "fashion-mnist", "--device",
            "cpu", "-p", "attacks=[badnets]", "--throughput", "1000"]
    assert main([*argv, "--seeds", "0", "1"]) == 0
    assert "4 jobs" in capsys.readouterr().out
    assert main([*argv, "--seeds", "0", "1", "-p", "seed=3"]) == 2
    assert "give the seeds one way" in capsys.readouterr().err


def run_at(seed: int, asr: float, tmp_path, pooled=()) -> Chapter:
    """A chapter run at `seed` that measured `asr`, its results written to tmp_path."""
    ch = Chapter("attacks", profile="smoke", device="cpu", dataset="fashion-mnist", seed=seed,
                 pooled=list(pooled), results=str(tmp_path / f"seed{seed}.json"))
    ch.table("no_defense", pd.DataFrame({"attack": ["badnets"], "asr": [asr]}))
    ch.compare({"min_asr_dirty": asr})
    return ch


def test_a_run_pools_the_seeds_run_before_it_from_their_results_files(tmp_path):
    for seed, asr in ((1, 95.0), (2, 99.0)):
        one = run_at(seed, asr, tmp_path)
        one.jobs = {"jobs": 3, "computed": seed, "cached": 3 - seed}
        one.over_seeds()
        one.finish()
    files = [tmp_path / "seed1.json", tmp_path / "seed2.json"]
    ch = run_at(0, 97.0, tmp_path, files)
    assert ch.seeds == [0, 1, 2]
    row = ch.over_seeds().set_index("id").loc["dirty-label-asr"]
    assert row["ours"] == pytest.approx(97.0) and row["n"] == 3
    assert row["low"] == pytest.approx(97.0 - stats.t.ppf(0.975, 2) * 2 / 3 ** 0.5)
    table = ch.seed_tables()["no_defense"]
    assert table.loc[0, "asr"] == pytest.approx(97.0) and table.loc[0, "n"] == 3
    ch.jobs = {"jobs": 3, "computed": 0, "cached": 3}
    written = ch.finish()
    assert set(written["seeds"]) == {"0", "1", "2"} and written["record"]["seeds"] == [0, 1, 2]
    assert written["record"]["jobs"] == {"jobs": 9, "computed": 3, "cached": 6}   # all seeds
    with pytest.raises(ParameterError, match="seed 1 again"):
        run_at(0, 97.0, tmp_path, [files[0], files[0]])
    with pytest.raises(ParameterError, match="'profile': 'smoke'"):
        Chapter("attacks", profile="quick", device="cpu", dataset="fashion-mnist",
                pooled=[str(files[0])])
    unpooled = run_at(0, 97.0, tmp_path, files)
    with pytest.raises(RuntimeError, match="over_seeds\\(\\) did not pool them"):
        unpooled.finish()


@pytest.mark.parametrize("profile", ["smoke", "paper"])
def test_no_two_seeds_of_a_chapter_share_a_job(profile):
    # each seed has its own victims, poison sets, defender subsets and draws (seeds 0 and 3:
    # at smoke, seed 1's and 2's 2,000-image samples hold under 200 images of class 0, too few
    # for SIG at 10 %, which every run refuses before it starts)
    for paper in book.chapters():
        keys = [{j.key for j in book.planned_jobs(paper, profile=profile, dataset="fashion-mnist",
                                                  device="cpu", params={"seed": s})[1]}
                for s in (0, 3)]
        assert keys[0] and not keys[0] & keys[1], paper
