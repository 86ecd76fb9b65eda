"""`repro run`, `repro book`, staleness and the scorecard (the book in a browser: test_pages.py)."""
import json
import os
import re
import shutil
import socket
from pathlib import Path

import nbformat
import pytest
import yaml
from nbformat.v4 import new_code_cell, new_notebook

from reprolib import book, lossy, staleness
from reprolib.views import scorecard
from reprolib.cli import main
from reprolib.zoo import Zoo

ROOT = Path(__file__).resolve().parent.parent


def project_copy(root: Path, runs: bool = False) -> Path:
    """The book's sources (config, prose, notebooks, library) in a fresh folder; with `runs`,
    the committed runs too (book/runs, book/results, book/measures)."""
    for name in ("_config.yml", "_toc.yml", "references.bib"):
        shutil.copy(ROOT / name, root / name)
    shutil.copytree(ROOT / "_static", root / "_static")
    (root / "book").mkdir()
    for page in (ROOT / "book").glob("*.md"):
        if page.name not in ("scorecard.md", "verdicts.md"):
            shutil.copy(page, root / "book" / page.name)
    shutil.copytree(ROOT / "book" / "using", root / "book" / "using")
    shutil.copytree(ROOT / "notebooks", root / "notebooks")
    shutil.copytree(ROOT / "reprolib", root / "reprolib",
                    ignore=shutil.ignore_patterns("__pycache__"))
    if runs:
        for folder in ("runs", "results", "measures"):
            if (ROOT / "book" / folder).is_dir():
                shutil.copytree(ROOT / "book" / folder, root / "book" / folder)
    return root


def tiny_chapter(root: Path, body: str) -> None:
    """A chapter notebook whose second cell runs `body` and then finishes."""
    (root / "notebooks").mkdir(exist_ok=True)
    cells = [new_code_cell("profile = None\nmodel = None\ndataset = 'auto'\ndevice = 'auto'\n"
                           "results = None\nn = 1", metadata={"tags": ["parameters"]}),
             new_code_cell("from reprolib.chapter import Chapter\n"   # any chapter's reference
                           "ch = Chapter('attacks', profile=profile, model=model, dataset=dataset, "
                           f"device=device, results=results)\n{body}\nch.finish()")]
    nb = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3",
                                                            "display_name": "Python 3",
                                                            "language": "python"}})
    nbformat.write(nb, root / "notebooks" / "tiny.ipynb")


def test_run_rejects_bad_arguments_before_any_work(capsys):
    for argv, message in [
            (["run", "atacks"], "paper='atacks' is not allowed; choose one of: 'attacks'"),
            (["run", "attacks", "--profile", "fast"], "profile='fast' is not allowed"),
            (["run", "attacks", "--dataset", "mnist"], "dataset='mnist' is not allowed; choose "
                                                       "one of: 'auto', 'cifar10', 'cifar100', "
                                                       "'fashion-mnist'"),
            (["run", "attacks", "--device", "tpu"], "device='tpu'"),
            (["run", "attacks", "-p", "ratoi=0.05"], "attacks has no parameter 'ratoi'; allowed: "
                                                     "seed, ratio, target, attacks, seeds"),
            (["run", "attacks", "-p", "pooled=[a.json]"], "repro run pools the seeds it runs"),
            (["run", "attacks", "-p", "measures=m.json"], "repro run computes the measures"),
            (["run", "attacks", "--seeds", "0", "0"], "seeds=[0, 0] repeats a seed"),
            (["run", "attacks", "-p", "seeds=[]"], "seeds=[] is not allowed"),
            (["run", "attacks", "-p", "ratio"], "expected key=value"),
            (["run", "attacks", "-p", "ratio=2"], "ratio=2 is out of range; expected a number "
                                                  "≥ 0 and ≤ 1"),
            (["run", "attacks", "-p", "attacks=[foo]"], "attack='foo' is not allowed"),
            (["run", "attacks", "-p", "target=10"], "target=10"),
            (["run", "attacks", "--profile", "smoke", "-p", "seed=1"],   # 199 images of class 0
             "sig poisons only target-class images and class 0 has 199"),
            (["run", "neural_polarizer", "-p", "clean_ratio=1.5"], "clean_ratio=1.5"),
            (["run", "none", "-p", "abl_epochs=[1, 1]"], "abl_epochs=[1, 1] must have 4"),
            (["run", "none", "-p", "fit_images=0"], "fit_images=0 is out of range"),
            (["run", "linf_pruning", "-p", "n_stats=0"], "n_stats=0 is out of range"),
            (["run", "mesa", "--profile", "paper", "-p", "rate=0"], "rate=0"),
            (["run", "attacks", "-p", "profile=smoke"], "use --profile instead"),
            (["run", "attacks", "-p", "model=resnet18"], "use --model instead"),
            (["run", "attacks", "-p", "results=x.json"], "repro run always writes the tables to "
                                                         "book/results/attacks.json"),
            (["run", "attacks", "--model", "vgg11"], "model='vgg11' is not allowed; choose one "
                                                     "of: 'auto', 'paper', 'preact_resnet18'"),
            (["run"], "name at least one chapter")]:
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err
    assert not list((ROOT / "book" / ".partial").glob("attacks*"))
    assert not Zoo().entries()                               # nothing trained, nothing read


@pytest.mark.notebook
def test_a_failed_run_leaves_no_page_and_a_good_one_moves_both_files(tmp_path):
    tiny_chapter(tmp_path, "raise RuntimeError('half-way')")
    # cell 3: papermill inserts the injected-parameters cell after the parameters cell
    with pytest.raises(book.RunFailed,
                       match="tiny at seed 0 failed in cell 3: RuntimeError: half-way"):
        book.run("tiny", profile="smoke", dataset="fashion-mnist", device="cpu", root=tmp_path,
                 progress=False)
    assert not list((tmp_path / "book" / "runs").iterdir())
    assert not list((tmp_path / "book" / "results").iterdir())

    tiny_chapter(tmp_path, "ch.table('n', __import__('pandas').DataFrame({'n': [n]}))")
    params = book.check_run(["tiny"], profile="smoke", dataset="fashion-mnist", device="cpu",
                            pairs=["n=7"], root=tmp_path)
    page = book.run("tiny", profile="smoke", dataset="fashion-mnist", device="cpu",
                    params=params["tiny"], root=tmp_path, progress=False)
    assert page == tmp_path / "book" / "runs" / "tiny.ipynb" and page.is_file()
    result = json.loads((tmp_path / "book" / "results" / "tiny.json").read_text())
    assert result["tables"]["n"] == [{"n": 7}] and result["record"]["profile"] == "smoke"
    assert not list((tmp_path / "book" / ".partial").iterdir())


def test_a_run_over_two_seeds_runs_the_other_first_and_pools_it_into_the_page(tmp_path):
    tiny_chapter(tmp_path, "")
    nb = nbformat.read(tmp_path / "notebooks" / "tiny.ipynb", as_version=4)
    nb.cells[0].source += "\nseed = 0\npooled = []"
    nb.cells[1].source = (
        "from reprolib.chapter import Chapter\n"
        "ch = Chapter('attacks', profile=profile, dataset=dataset, device=device, seed=seed, "
        "pooled=pooled, results=results)\n"
        "ch.compare({'min_asr_dirty': 90.0 + seed})\nch.over_seeds()\nch.finish()")
    nbformat.write(nb, tmp_path / "notebooks" / "tiny.ipynb")
    params = book.check_run(["tiny"], profile="smoke", dataset="fashion-mnist", device="cpu",
                            pairs=["seeds=[0, 3]"], root=tmp_path)
    book.run("tiny", profile="smoke", dataset="fashion-mnist", device="cpu",
             params=params["tiny"], root=tmp_path, progress=False)
    result = json.loads((tmp_path / "book" / "results" / "tiny.json").read_text())
    assert result["record"]["seeds"] == [0, 3] and set(result["seeds"]) == {"0", "3"}
    row = next(r for r in result["comparison"] if r["id"] == "dirty-label-asr")
    assert row["ours"] == pytest.approx(91.5) and row["n"] == 2
    assert not list((tmp_path / "book" / ".partial").iterdir())     # seed 3's page discarded


def test_a_results_file_or_page_edited_after_its_run_is_seen_and_not_counted(tmp_path):
    tiny_chapter(tmp_path, "ch.compare({'min_asr_dirty': 97.0})\nch.over_seeds()")
    book.run("tiny", profile="smoke", dataset="fashion-mnist", device="cpu", root=tmp_path,
             progress=False)
    results = tmp_path / "book" / "results" / "tiny.json"
    page = tmp_path / "book" / "runs" / "tiny.ipynb"
    assert scorecard.results(tmp_path)["tiny"]["tampered"] is None
    book.mark_stale(page, "Stale: a note repro book adds")      # not an edit of the run's
    assert scorecard.results(tmp_path)["tiny"]["tampered"] is None
    written = results.read_text()
    results.write_text(written.replace('"ours": 97.0', '"ours": 99.0'))
    found = scorecard.results(tmp_path)["tiny"]
    assert "`book/results/tiny.json` no longer match" in found["tampered"]
    assert "| [tiny](runs/tiny) | — | — | — | — | — | changed after its run |" in \
        scorecard.verdict_counts({"tiny": found})
    assert "97.00" not in "\n".join(scorecard.chapter_section("tiny", found))
    results.write_text(written)
    nb = nbformat.read(page, as_version=4)
    nb.cells[-1].outputs = []
    nbformat.write(nb, page)
    found = scorecard.results(tmp_path)["tiny"]
    assert "`book/runs/tiny.ipynb` no longer match" in found["tampered"]


def test_a_run_removes_the_pages_that_dead_runs_left_and_keeps_a_live_ones(tmp_path):
    partial = tmp_path / "book" / ".partial"
    partial.mkdir(parents=True)
    host, gone = socket.gethostname(), 2**22 + 7                # above any Linux pid
    dead = [partial / f"attacks.{host}.{gone}.ipynb", partial / f"none.{host}.{gone}.seed1.json"]
    alive = partial / f"mesa.{host}.{os.getpid()}.ipynb"
    elsewhere = partial / f"mesa.another-host.{gone}.ipynb"
    for file in [*dead, alive, elsewhere]:
        file.write_text("{}")
    assert sorted(book.sweep(partial)) == sorted(dead)
    assert sorted(partial.iterdir()) == sorted([alive, elsewhere])


@pytest.mark.notebook
def test_a_run_streams_progress_to_the_terminal_and_makes_the_page_for_reading(tmp_path, capfd):
    tiny_chapter(tmp_path, "import sys\nprint('job 3 of 5', file=sys.stderr)\nprint('a result')")
    page = book.run("tiny", profile="smoke", dataset="fashion-mnist", device="cpu",
                    root=tmp_path, progress=True)
    terminal = capfd.readouterr().err
    assert "job 3 of 5" in terminal
    assert "without encryption" not in terminal      # the kernel's own warning is not the user's
    code = [c for c in nbformat.read(page, as_version=4).cells if c.cell_type == "code"]
    outputs = [o for c in code for o in c.outputs]
    assert not [o for o in outputs if o.get("name") == "stderr"]
    assert any("a result" in o.get("text", "") for o in outputs)
    # parameters, papermill's injected cell (a local path), the set-up cell's code
    assert [c.metadata["tags"] for c in code] == [["parameters", "remove-cell"],
                                                  ["injected-parameters", "remove-cell"],
                                                  ["remove-input"]]
    assert str(tmp_path) not in page.read_text(), "a machine's folder named in the page's file"
    before = page.read_bytes()
    book.for_reading(page, tmp_path)
    assert page.read_bytes() == before


def results_file(root: Path, chapter: str, rows: list[dict], *, record: dict | None = None,
                 **more) -> None:
    (root / "book" / "results").mkdir(parents=True, exist_ok=True)
    record = {"chapter": chapter, "profile": "quick", "dataset": "fashion-mnist",
              "model": "small_cnn", "device": "cpu", "seeds": [0], "code_version": "0.1.0+abc",
              "executed": {}, **(record or {})}
    (root / "book" / "results" / f"{chapter}.json").write_text(json.dumps(
        {"record": record, "comparison": rows, **more}))


def test_the_scorecard_opens_with_verdict_counts_and_folds_what_is_not_comparable(tmp_path):
    (tmp_path / "book" / "results").mkdir(parents=True)
    assert "No chapter has been run yet" in scorecard.scorecard(tmp_path)
    claim = {"kind": "claim", "id": "c", "what": "ASR | high", "paper": None, "ours": 97.123,
             "low": None, "high": None, "n": 1, "delta": None, "tolerance": "asr >= 90",
             "verdict": "reproduced", "why": ""}
    far = "ran dataset fashion-mnist (paper: cifar10)"
    numbers = [{"kind": "number", "id": f"n{i}", "what": f"T: row {i}", "paper": 95.03,
                "ours": 99.0, "low": 98.0, "high": 100.0, "n": 3, "delta": None,
                "tolerance": "± 3", "verdict": "not comparable", "why": far} for i in range(3)]
    unjudged = dict(claim, id="d", what="FT removes it", verdict="inconclusive",
                    why="premise not met: the attack took hold (ASR ≥ 80 %); here 36.6")
    results_file(tmp_path, "attacks", [*numbers, claim, unjudged])
    page = scorecard.scorecard(tmp_path)
    assert "ran on **fashion-mnist** (1 chapter)." in page
    counts = page.index("| chapter | reproduced | partly | not reproduced | inconclusive | "
                        "not comparable | stale |")
    assert "| [BackdoorBench (no defense)](runs/attacks) | 1 | 0 | 0 | 1 | 3 | no |" in page
    assert "| **all chapters** | **1** | **0** | **0** | **1** | **3** | |" in page
    assert "*Inconclusive:* FT removes it: premise not met" in page
    section = page.index("## BackdoorBench (no defense)")
    assert counts < section and page.index("| claim |") < page.index("3 of the paper's numbers")
    assert "| ASR \\| high | 97.12 | 1 seed | reproduced |" in page
    assert f"3 of the paper's numbers not comparable: {far}." in page
    assert "row 1" not in page                               # folded into that line
    assert scorecard.verdicts_page(tmp_path).count("| [BackdoorBench") == 1


def test_the_scorecard_says_when_victims_were_trained_before_the_page(tmp_path):
    claim = {"kind": "claim", "id": "c", "what": "ASR high", "paper": None, "ours": 97.1,
             "low": None, "high": None, "n": 1, "delta": None, "tolerance": "asr >= 90",
             "verdict": "reproduced", "why": ""}
    results_file(tmp_path, "attacks", [claim], record={"trained_before": {
        "victims": 5, "at_once": 8, "compiled": True, "wall_time_s": 312.4}})
    assert ("Its 5 victims were trained up to 8 at once, compiled, before the page ran, in 312 s "
            "that the page's wall time leaves out.") in scorecard.scorecard(tmp_path)
    results_file(tmp_path, "attacks", [claim])
    assert "before the page ran" not in scorecard.scorecard(tmp_path)


def test_verdicts_on_a_lossy_copy_say_so_and_are_counted_apart(tmp_path):
    claim = {"kind": "claim", "id": "c", "what": "ASR high", "paper": None, "ours": 97.1,
             "low": None, "high": None, "n": 1, "delta": None, "tolerance": "asr >= 90",
             "verdict": "reproduced", "why": "", "on": ""}
    results_file(tmp_path, "attacks", [claim])
    results_file(tmp_path, "mesa", [dict(claim, on="JPEG-75 copy"),
                                    dict(claim, verdict="not reproduced", on="JPEG-75 copy")],
                 record={"dataset": "cifar10", "dataset_source": "JPEG copy, quality 75",
                         "lossy_copy": "JPEG-75 copy"})
    page = scorecard.scorecard(tmp_path)
    assert "| **all chapters, on the official pixels** | **1** | **0** | **0** |" in page
    assert "| **all chapters, on a JPEG-75 copy** | **1** | **0** | **1** |" in page
    assert "| ASR high | 97.10 | 1 seed | reproduced, on a JPEG-75 copy |" in page
    assert "| ASR high | 97.10 | 1 seed | reproduced |" in page
    results_file(tmp_path, "attacks", [claim], record={"lossy_copy": "JPEG-75 copy"})
    assert "on the official pixels" not in scorecard.scorecard(tmp_path)


def test_scorecard_lists_measured_findings_apart_from_the_claims(tmp_path):
    results_file(tmp_path, "comparison", [],
                 findings=[{"finding": "highest mean DER: NPD | NONE", "value": 91.234}])
    page = scorecard.scorecard(tmp_path)
    section = page.split("## Measured findings")[1]
    assert ("| [Comparison: every defense against every attack](runs/comparison) | highest mean "
            "DER: NPD \\| NONE | 91.23 | quick | fashion-mnist |") in section
    results_file(tmp_path, "comparison", [])
    assert "Measured findings" not in scorecard.scorecard(tmp_path)


def test_a_changed_library_file_stales_exactly_the_chapters_that_executed_it(tmp_path):
    root = project_copy(tmp_path, runs=True)
    for _ in range(2):   # each run made fresh and sealed, twice: the comparison read clear.json
        for f in (root / "book" / "results").glob("*.json"):
            result = json.loads(f.read_text())
            result["record"]["executed"] = {name: staleness.digest(root / name)
                                            for name in result["record"]["executed"]}
            f.write_text(json.dumps(result))
            staleness.seal(f, root / "book" / "runs" / f"{f.stem}.ipynb")
    assert not [p for p in book.chapters(root) if book.stale_text(p, root)]
    with open(root / "reprolib" / "defenses" / "none.py", "a") as f:
        f.write("# one more line\n")
    stale = {p: book.stale_text(p, root) for p in book.chapters(root)}
    assert {p for p, why in stale.items() if why} == {"none", "comparison"}
    assert "`reprolib/defenses/none.py` changed since" in stale["none"]
    for p in book.chapters(root):
        book.mark_stale(root / "book" / "runs" / f"{p}.ipynb", stale[p])
    notes = {p: [c.source for c in nbformat.read(root / "book" / "runs" / f"{p}.ipynb",
                                                  as_version=4).cells
                 if "stale-note" in c.metadata.get("tags", [])] for p in book.chapters(root)}
    assert {p for p, n in notes.items() if n} == {"none", "comparison"}
    assert notes["none"] == [f"**{stale['none']}**"]
    card = scorecard.scorecard(root)
    assert card.count("`reprolib/defenses/none.py` changed since") == 2
    (root / "reprolib" / "defenses" / "none.py").write_bytes(
        (ROOT / "reprolib" / "defenses" / "none.py").read_bytes())   # undone: fresh again
    before = (root / "book" / "runs" / "attacks.ipynb").read_bytes()
    for p in book.chapters(root):
        book.mark_stale(root / "book" / "runs" / f"{p}.ipynb", book.stale_text(p, root))
    assert not [c for c in nbformat.read(root / "book" / "runs" / "none.ipynb", as_version=4).cells
                if "stale-note" in c.metadata.get("tags", [])]
    assert (root / "book" / "runs" / "attacks.ipynb").read_bytes() == before


def test_staleness_tells_numbers_from_looks(tmp_path):
    """A change to view code stales a page's look only; a change to code that computes its
    numbers stales its numbers, whatever views changed beside it."""
    for name in ("reprolib/views/tables.py", "reprolib/train.py", "notebooks/tiny.ipynb"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x = 1\n")
    record = {"code_version": "v", "executed": {n: staleness.digest(tmp_path / n) for n in
                                               ("reprolib/views/tables.py", "reprolib/train.py")}}
    assert staleness.stale_of(record, tmp_path) is None and not staleness.stale_text(record,
                                                                                    tmp_path)
    (tmp_path / "reprolib/views/tables.py").write_text("x = 2\n")
    assert staleness.stale_of(record, tmp_path) == "look"
    assert staleness.stale_text(record, tmp_path).startswith("Stale look")
    assert "`reprolib/views/tables.py`" in staleness.stale_text(record, tmp_path)
    (tmp_path / "reprolib/train.py").write_text("x = 2\n")
    assert staleness.stale_of(record, tmp_path) == "numbers"
    text = staleness.stale_text(record, tmp_path)
    assert text.startswith("Stale numbers") and "`reprolib/train.py` changed since" in text
    assert "views/tables.py" not in text
    assert staleness.stale_of({"code_version": "v"}, tmp_path) == "numbers"   # unrecorded
    paper = {**record, "chapter": "tiny", "profile": "paper"}    # not rerun by repro book
    assert "`repro run tiny --profile paper` reruns it" in staleness.stale_text(paper, tmp_path)


def test_a_page_drawn_from_measures_tells_its_notebook_and_parameters_apart(tmp_path):
    """For a page drawn from measures its notebook is view code, but its parameters cell says
    what was computed: a change there stales the numbers."""
    nb = new_notebook(cells=[new_code_cell("ratio = 0.1", metadata={"tags": ["parameters"]}),
                             new_code_cell("page.finish()")])
    (tmp_path / "notebooks").mkdir()
    nbformat.write(nb, tmp_path / "notebooks" / "tiny.ipynb")
    names = ("notebooks/tiny.ipynb", "notebooks/tiny.ipynb" + staleness.PARAMETERS)
    record = {"code_version": "v", "measures": True,
              "executed": {n: staleness.digest(tmp_path / n) for n in names}}
    nb.cells[1].source = "page.finish();"
    nbformat.write(nb, tmp_path / "notebooks" / "tiny.ipynb")
    assert staleness.stale_of(record, tmp_path) == "look"
    assert "`repro book --render` draws it again" in staleness.stale_text(record, tmp_path)
    assert staleness.stale_of({**record, "measures": False}, tmp_path) == "numbers"
    nb.cells[0].source = "ratio = 0.2"
    nbformat.write(nb, tmp_path / "notebooks" / "tiny.ipynb")
    assert staleness.stale_of(record, tmp_path) == "numbers"


@pytest.mark.notebook
@pytest.mark.parametrize("chapter, seeds", [("attacks", [0]), ("linf_pruning", [0, 1]),
                                           ("neural_polarizer", [0]), ("none", [0]), ("mesa", [0]),
                                           ("clear", [0]), ("comparison", [0])])
def test_a_page_drawn_again_from_its_measures_is_the_same_and_computes_nothing(
        tmp_path, monkeypatch, chapter, seeds):
    root = tmp_path / "project"
    made = os.environ.get("REPRO_SMOKE_BOOK")     # make test's smoke book: every chapter, seed 0
    if made and seeds == [0]:
        shutil.copytree(made, root, ignore=shutil.ignore_patterns("_build", "__pycache__"))
    else:
        root.mkdir()
        project_copy(root)
        book.run(chapter, profile="smoke", dataset="fashion-mnist", device="cpu", root=root,
                 params={"seeds": seeds}, progress=False)
    kept = root / "book" / "measures"
    names = {p.name for p in kept.iterdir() if p.stem == chapter}    # the arrays, if it has any
    assert {f"{chapter}.json"} <= names <= {f"{chapter}.json", f"{chapter}.safetensors"}
    assert not list((root / "book" / ".partial").glob("*measures*"))

    def read():
        page = nbformat.read(root / "book" / "runs" / f"{chapter}.ipynb", as_version=4)
        outputs = [c.get("outputs") for c in page.cells if c.cell_type == "code"
                   and "Run record" not in json.dumps(c.get("outputs"))]
        return outputs, json.loads((root / "book" / "results" / f"{chapter}.json").read_text())

    computed, computed_results = read()
    monkeypatch.setenv("REPRO_CACHE_DIR", str(tmp_path / "empty-cache"))   # no weights
    monkeypatch.setenv("REPRO_DATA_DIR", str(tmp_path / "no-data"))
    book.rerender(chapter, root)
    drawn, drawn_results = read()
    assert not (tmp_path / "empty-cache").exists()         # no job was looked for
    assert [o for o in computed if o] and drawn == computed   # tables, glue, figures' pixels
    for part in ("tables", "measured", "comparison", "over_seeds", "seeds"):
        assert drawn_results[part] == computed_results[part], part
    r = drawn_results["record"]
    assert r["measures"] and r["rendered"]["wall_time_s"] >= 0 and r["seeds"] == seeds
    assert r["jobs"] == computed_results["record"]["jobs"] and r["jobs"]["computed"] > 0
    assert not staleness.stale_text(r)           # against the code the kernel ran


def test_a_rerun_of_clear_stales_the_comparison_that_read_its_results(tmp_path, monkeypatch):
    from reprolib.experiments.comparison import clear_row
    monkeypatch.setattr(staleness, "_read", set())
    root = project_copy(tmp_path, runs=True)
    results = root / "book" / "results" / "clear.json"
    clear_row(results)
    record = {"code_version": "x", "executed": staleness.fingerprint("comparison", root)}
    assert record["executed"]["book/results/clear.json"] == staleness.digest(results)
    assert staleness.stale_text(record, root) is None
    results.write_text(results.read_text() + "\n")                    # CLEAR run again
    assert "`book/results/clear.json` changed since" in staleness.stale_text(record, root)
    # a comparison run before CLEAR's first run goes stale once CLEAR's results appear
    kept = results.read_bytes()
    results.unlink()
    assert clear_row(results)[0] is None
    record = {"code_version": "x", "executed": staleness.fingerprint("comparison", root)}
    assert record["executed"]["book/results/clear.json"] == staleness.ABSENT
    assert staleness.stale_text(record, root) is None
    results.write_bytes(kept)
    assert "`book/results/clear.json` changed since" in staleness.stale_text(record, root)


@pytest.mark.notebook
def test_a_run_records_the_hash_of_every_file_it_executed(tmp_path):
    tiny_chapter(tmp_path, "")
    book.run("tiny", profile="smoke", dataset="fashion-mnist", device="cpu", root=tmp_path,
             progress=False)
    executed = json.loads((tmp_path / "book" / "results" / "tiny.json").read_text())["record"][
        "executed"]
    assert {"notebooks/attacks.ipynb", "reprolib/reference/attacks.yaml", "reprolib/chapter.py",
            "reprolib/staleness.py", "reprolib/config.py"} <= set(executed)
    assert not {"reprolib/defenses/none.py", "reprolib/scorecard.py", "reprolib/book.py"} & set(executed)
    assert executed["reprolib/chapter.py"] == staleness.digest(ROOT / "reprolib" / "chapter.py")


def test_the_committed_pages_are_what_repro_book_would_write_now():
    # `make book` builds the committed pages as they are, without reprolib: the scorecard, the
    # verdict counts and each page's stale note must be current (if not: `repro book`, commit)
    assert (ROOT / "book" / "scorecard.md").read_text() == scorecard.scorecard(ROOT)
    assert (ROOT / "book" / "verdicts.md").read_text() == scorecard.verdicts_page(ROOT)
    assert (ROOT / "book" / "jpeg.md").read_text() == lossy.page(lossy.read(ROOT))
    for p in book.chapters():
        page = nbformat.read(ROOT / "book" / "runs" / f"{p}.ipynb", as_version=4)
        notes = [c.source for c in page.cells if "stale-note" in c.metadata.get("tags", [])]
        why = book.stale_text(p)
        assert notes == ([f"**{why}**"] if why else []), f"{p}: the stale note is not current"


def test_every_row_of_the_reliability_page_is_a_test_and_its_counts_are_the_rows():
    page = (ROOT / "book" / "using" / "reliability.md").read_text()
    sections = re.split(r"^## ", page, flags=re.M)[1:]
    rows = {s.split("\n")[0]: [line for line in s.split("\n") if line.startswith("| ")][1:]
            for s in sections}
    for row in (r for section in rows.values() for r in section):
        assert re.search(r"`test_\w+\.py::test_\w+`", row.split("|")[-2]), row
    for file, name in re.findall(r"`(test_\w+\.py)::(test_\w+)`", page):
        assert f"def {name}(" in (ROOT / "tests" / file).read_text(), f"{file}::{name}"
    counts = [len(r) for r in rows.values()]
    assert (f"In all: {counts[0]} kinds of bad input, {counts[1]} faults and {counts[2]} kinds "
            f"of edit") in " ".join(page.split())


@pytest.mark.parametrize("path", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.stem)
def test_source_notebooks_are_stripped_and_parameterised(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", []), "the first code cell must be tagged"
    assert {"profile", "dataset", "device", "results"} <= set(book.notebook_parameters(path))
    for cell in code:
        assert not cell.outputs and cell.get("execution_count") is None, \
            f"outputs left in: {cell.source[:60]!r}"
    # nbval runs every cell; a check cell asserts what must hold, and the book hides it
    checks = [c for c in code if "remove-cell" in c.metadata.get("tags", [])]
    assert any("assert " in c.source for c in checks), "no hidden check cell with assertions"
    assert "ch.finish()" in code[-1].source or "page.finish()" in code[-1].source


@pytest.mark.parametrize("path", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.stem)
def test_source_notebooks_are_thin(path):
    # the experiment logic lives in reprolib, where unit tests reach it
    code = [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    lines = [len(source.splitlines()) for source in code]
    assert max(lines) <= 25, f"a code cell of {max(lines)} lines"
    assert sum(lines) <= 150, f"{sum(lines)} lines of code"
    assert not any(line.lstrip().startswith(("def ", "class ")) for source in code
                   for line in source.splitlines()), "a function defined in the notebook"


@pytest.mark.parametrize("path", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.stem)
def test_the_prose_quotes_only_numbers_the_chapter_glues(path):
    from reprolib.views import reference
    prose = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells
                      if c.cell_type == "markdown")
    keys = set(re.findall(r"\{glue:text\}`([^`:]+)", prose))
    ref = reference.load(path.stem)
    glued = ({n.id for n in ref.numbers} | {c.id for c in ref.claims}
             | {"n-" + v.replace(" ", "-") for v in reference.VERDICTS}
             | {"n-checked", "seeds-note"})
    assert keys and keys <= glued, f"glued by nobody: {sorted(keys - glued)}"


def test_a_run_in_the_papers_setting_is_a_page_of_its_own_beside_the_chapters(tmp_path):
    project_copy(tmp_path)
    tiny_chapter(tmp_path, "")
    for profile in ("smoke", "paper"):
        page = book.run("tiny", profile=profile, dataset="fashion-mnist", device="cpu",
                        root=tmp_path, progress=False)
        assert page.name == ("tiny-paper.ipynb" if profile == "paper" else "tiny.ipynb")
    assert sorted(p.name for p in (tmp_path / "book" / "runs").glob("tiny*")) == [
        "tiny-paper.ipynb", "tiny.ipynb"]
    found = scorecard.results(tmp_path)
    assert found["tiny"]["record"]["profile"] == "smoke"
    assert found["tiny-paper"]["record"]["profile"] == "paper"
    assert found["tiny-paper"]["title"] == f"{found['tiny']['title']}, in the paper's setting"
    assert not found["tiny-paper"]["stale"] and not found["tiny-paper"]["tampered"]


def test_a_paper_page_is_listed_right_after_its_chapter(tmp_path):
    project_copy(tmp_path, runs=True)
    shutil.copy(tmp_path / "book" / "runs" / "mesa.ipynb",
                tmp_path / "book" / "runs" / "mesa-paper.ipynb")
    assert book.paper_pages_in_toc(tmp_path)
    files = [c for part in yaml.safe_load((tmp_path / "_toc.yml").read_text())["parts"]
             for c in part["chapters"]]
    at = [c["file"] for c in files].index("book/runs/mesa")
    assert files[at + 1] == {"file": "book/runs/mesa-paper",
                             "title": f"{scorecard.title('mesa', tmp_path)}, in the paper's setting"}
    assert not book.paper_pages_in_toc(tmp_path)           # listed once
    assert "mesa-paper" in scorecard.book_order(tmp_path)


def test_the_plan_is_set_against_the_clock_per_job_kind_on_this_device_only():
    def row(kind, estimate, took, device="cpu", passes=1000, status="cached"):
        return {"kind": kind, "status": status, "device": device, "passes": passes,
                "estimate_s": estimate, "seconds": took}
    rows = [row("victim", 100, 120), row("victim", 100, 110), row("npd.defense", 10, 30),
            row("victim", 100, 900, device="NVIDIA H100"),      # another device's time
            row("victim", 100, 100, status="missing"),           # not run yet
            row("clear.examine", 0, 50, passes=0)]               # trains nothing
    kinds = book.against_the_clock(rows, "cpu")
    assert kinds == {"victim": {"jobs": 2, "estimate_s": 200.0, "took_s": 230.0,
                                "took_over_estimate": 1.15, "off": False},
                     "npd.defense": {"jobs": 1, "estimate_s": 10.0, "took_s": 30.0,
                                     "took_over_estimate": 3.0, "off": True}}
