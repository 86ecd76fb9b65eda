"""`repro batch` and gpu/run.sh: chapters within a time budget, into one folder."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from reprolib import batch
from test_book import project_copy

ROOT = Path(__file__).resolve().parent.parent


def plan(chapter, seconds):
    return {"chapter": chapter, "rows": [], "seconds": seconds}


def test_chapters_run_in_the_order_given_while_they_fit_the_budget():
    plans = [plan("attacks", 300), plan("mesa", 500), plan("linf_pruning", 150)]
    run, left_out = batch.fitting(plans, 500)
    assert [p["chapter"] for p in run] == ["attacks", "linf_pruning"]
    assert [p["chapter"] for p in left_out] == ["mesa"]
    assert batch.fitting(plans, 100) == ([], plans)


def test_victims_are_trained_together_only_where_the_bench_measured_a_gain():
    def row(jobs, way, epoch_ratio):
        return {"jobs": jobs, "way": way, "epoch_ratio": epoch_ratio}
    rows = [row(1, "stacked", 1.0), row(2, "stacked", 1.9), row(4, "stacked", 3.1),
            row(8, "stacked", 2.8), row(8, "streams", None),    # threads: not what --together does
            {"jobs": 4, "way": "stacked_compiled", "error": "a way that failed"}]
    assert batch.best_together({"rows": rows}) == (4, False)
    assert batch.best_together({"rows": rows + [row(8, "stacked_compiled", 4.0)]}) == (8, True)
    assert batch.best_together({"rows": [row(4, "stacked", 1.1)]}) == (1, False)
    assert batch.best_together(None) == (1, False)


def test_a_child_past_its_time_is_stopped(tmp_path):
    (tmp_path / "sleeper.py").write_text("import time\ntime.sleep(60)\n")
    start = time.perf_counter()
    status, took = batch.child(["sleeper"], 1, tmp_path)
    assert status is None and took < 30 and time.perf_counter() - start < 30
    (tmp_path / "quick.py").write_text("raise SystemExit(3)\n")
    assert batch.child(["quick"], 30, tmp_path)[0] == 3


def test_what_does_not_fit_is_left_out_and_said_before_anything_runs(tmp_path):
    said = []
    summary = batch.run(["attacks"], budget=2, out=tmp_path, profile="smoke", model="auto",
                        dataset="fashion-mnist", device="cpu", pairs=[], say=said.append)
    assert summary["left_out"] == ["attacks"] and summary["chapters"] == []
    assert "left out: over what the budget leaves" in said[1]
    assert json.loads((tmp_path / "batch.json").read_text())["left_out"] == ["attacks"]


@pytest.mark.notebook
def test_gpu_run_sh_runs_a_chapter_in_the_paper_setting_on_the_cifar10_fixture(tmp_path,
                                                                                cifar_mini):
    root = tmp_path / "project"
    root.mkdir()
    project_copy(root)
    for folder in ("gpu", "bench"):
        shutil.copytree(ROOT / folder, root / folder)
    out = tmp_path / "out"
    env = {**os.environ, "DATA": str(cifar_mini), "WHEELS": str(tmp_path / "no-wheels"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(
        ["bash", "gpu/run.sh", "attacks", "--profile", "smoke", "--model", "paper",
         "--dataset", "cifar10", "--device", "cpu", "-p", "ratio=0.05", "--budget", "900",
         "--bench", "--n 128 --jobs 1 2 --model small_cnn", "--out", str(out)],
        cwd=root, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "attacks" in done.stdout and "runs" in done.stdout
    summary = json.loads((out / "batch.json").read_text())
    assert [(b["jobs"], b["way"]) for b in summary["bench"]["rows"]] == [
        (n, way) for n in (1, 2) for way in ("one_after_another", "stacked", "streams")]
    attacks = summary["chapters"][0]
    assert attacks["chapter"] == "attacks" and attacks["status"] == "done"
    victims = attacks["clock"]["victim"]
    assert victims["jobs"] == 5 and victims["took_s"] > 0 and victims["estimate_s"] > 0
    assert victims["took_over_estimate"] == pytest.approx(victims["took_s"] / victims["estimate_s"],
                                                          abs=0.02)    # both rounded
    page = nbformat.read(out / "attacks.ipynb", as_version=4)
    record = json.loads((out / "attacks.json").read_text())["record"]
    assert record["dataset"] == "cifar10" and record["model"] == "preact_resnet18"
    assert any("preact_resnet18" in str(c.get("outputs")) for c in page.cells)


def test_a_budget_margin_or_together_out_of_range_stops_before_any_work(tmp_path, capsys):
    from reprolib.cli import main
    for argv, message in [
            (["batch", "attacks", "--budget", "0", "--out", str(tmp_path)],
             "--budget=0.0 is out of range"),
            (["batch", "attacks", "--budget", "60", "--margin", "0.5", "--out", str(tmp_path)],
             "--margin=0.5 is out of range"),
            (["run", "attacks", "--profile", "smoke", "--together", "0"],
             "together=0 is out of range")]:
        assert main(argv) == 2
        assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
