"""Jobs: results kept in the zoo under a key of their arguments, computed once, under a claim."""
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from reprolib import book, jobs
from reprolib.cli import main
from reprolib.config import ParameterError, Recipe
from reprolib.defenses import none as none_
from reprolib.jobs import Kept, pack, unpack
from reprolib.models import build
from reprolib.zoo import Zoo

import jobsteps

TESTS = Path(__file__).resolve().parent


def calls(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def test_pack_keeps_tensors_models_and_keys_of_every_type():
    model = build("small_cnn", 10, 1, seed=0)
    value = {"result": none_.Result(model, [none_.Round({"layer1": torch.tensor([1, 2])},
                                                        torch.rand(5), 0.25, torch.tensor([3]))],
                                    seconds=1.5, diverged=False),
             0.9: [1, "two", None, float("nan")], 3: (torch.ones(2), {"x": 1.0})}
    kept = pack(value)
    json.dumps(kept.record)                                          # plain JSON
    assert all(isinstance(t, torch.Tensor) for t in kept.tensors.values())
    skeleton = build("small_cnn", 10, 1, seed=1)
    back = unpack(kept, {".result.model": skeleton})
    assert set(back) == {"result", 0.9, 3}                          # a float key stays a float
    r = back["result"]
    assert isinstance(r, none_.Result) and r.model is skeleton and r.seconds == 1.5
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 skeleton.state_dict().values()))
    assert torch.equal(r.rounds[0].chosen["layer1"], torch.tensor([1, 2]))
    assert r.rounds[0].threshold == 0.25 and back[0.9][:3] == [1, "two", None]
    assert torch.equal(back[3][0], torch.ones(2)) and back[3][1] == {"x": 1.0}
    with pytest.raises(KeyError, match="no skeleton given for the kept model at '.result.model'"):
        unpack(kept)
    with pytest.raises(TypeError, match="cannot hold a Zoo"):
        pack({"zoo": Zoo()})


def test_unpack_rebuilds_only_the_librarys_own_dataclasses():
    kept = Kept({}, {"value": {"$dataclass": "subprocess:Popen", "fields": {"args": "ls"}}})
    with pytest.raises(ValueError, match="only reprolib's dataclasses are rebuilt"):
        unpack(kept)


def test_a_step_computes_once_and_its_key_covers_every_argument(tmp_path, monkeypatch):
    log = tmp_path / "log"
    assert jobsteps.square(x=3, log=str(log)) == 9
    assert jobsteps.square(x=3, log=str(log), scale=1, progress=True) == 9   # defaults, not keyed
    assert calls(log) == [calls(log)[0]] and calls(log)[0].endswith("square 3")
    job = jobsteps.square.job(x=3, log=str(log))
    assert job.cached() and job.card()["wall_time_s"] >= 0 and job.card()["device"] == "cpu"
    assert job.key == jobsteps.square.job(log=str(log), x=3, scale=1).key
    for other in ({"x": 4}, {"scale": 2}):
        assert jobsteps.square.job(**{"x": 3, "log": str(log), **other}).key != job.key
    before = job.key
    monkeypatch.setattr(jobs, "code_digest", lambda module: "another code")
    assert jobsteps.square.job(x=3, log=str(log)).key != before
    with pytest.raises(ParameterError, match="test.square: .*'y'"):
        jobsteps.square.job(x=3, log=str(log), y=1).key


def edited(root: Path, name: str) -> None:
    """Append a line of code to the module `name` of the package copy at `root`."""
    path = root / name
    path.write_text(path.read_text() + "\nEDITED = True\n")


def test_a_jobs_key_covers_its_code_and_no_view(tmp_path, monkeypatch):
    """A change to code a step computes with gives its jobs new keys; a change to a module
    outside its imports (a view) keeps them."""
    import shutil
    from reprolib import provenance
    from reprolib.victims import trained_victim
    root = tmp_path / "reprolib"
    shutil.copytree(provenance.PACKAGE, root, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(jobs, "code_digest", lambda m: provenance.code_digest(m, root))
    victim = trained_victim.job(dataset="fashion-mnist", attack="badnets", profile="smoke")
    square = jobsteps.square.job(x=3, log="log")
    before = (victim.key, square.key)
    assert before == (victim.key, square.key)                  # stable
    edited(root, "views/tables.py")
    edited(root, "views/reference.py")
    assert (victim.key, square.key) == before
    edited(root, "train.py")                       # the victims' trainer, not the test's step
    assert victim.key != before[0] and square.key == before[1]
    edited(root, "jobs.py")                        # what both import
    assert square.key != before[1]
    names = {p.relative_to(root).as_posix() for p in provenance.closure("reprolib.victims", root)}
    assert {"victims.py", "train.py", "attacks/wanet.py", "data.py"} <= names
    assert not [n for n in names if n.startswith("views/")]


def test_no_step_of_the_book_keys_on_a_view():
    """The steps' modules import no view, so that a change to how a page reads keeps every
    job's key."""
    import importlib
    from reprolib import provenance
    for chapter in book.chapters():
        importlib.import_module(f"reprolib.experiments.{chapter}")
    modules = {s.module for s in jobs.STEPS.values() if s.module.startswith("reprolib.")}
    assert {"reprolib.victims", "reprolib.experiments.linf_pruning"} <= modules
    for module in modules:
        files = provenance.closure(module)
        assert not [f for f in files if "views" in f.parts], module
        assert provenance.PACKAGE / "jobs.py" in files


def test_keys_read_dataclasses_by_their_fields_and_refuse_what_they_cannot_read():
    a, b = Recipe(epochs=2), Recipe(epochs=2, lr=0.02)
    assert jobs.canonical(a)["type"] == "Recipe" and jobs.canonical(a) != jobs.canonical(b)
    assert jobs.canonical({"device": "cuda", "progress": True, "n": 1}) == {"n": 1}
    with pytest.raises(TypeError, match="of type Zoo cannot be part of a key"):
        jobs.canonical({"store": Zoo()})


def test_a_corrupted_result_fails_its_checksum_and_is_computed_again(tmp_path, capsys):
    log = tmp_path / "log"
    first = jobsteps.slow(x=2.0, log=str(log), seconds=0)
    job = jobsteps.slow.job(x=2.0, log=str(log), seconds=0)
    tensors, _ = Zoo().paths(job.key)
    payload = bytearray(tensors.read_bytes())
    payload[-1] ^= 0xFF                                      # one flipped bit of the tensor data
    tensors.write_bytes(bytes(payload))
    assert not job.cached()
    again = jobsteps.slow(x=2.0, log=str(log), seconds=0)
    assert "corrupted" in capsys.readouterr().err and len(calls(log)) == 2
    assert torch.equal(again, first) and job.cached()


def test_a_failed_computation_leaves_no_entry_and_frees_its_claim(tmp_path):
    log = tmp_path / "log"
    for _ in range(2):
        with pytest.raises(RuntimeError, match="half-way"):
            jobsteps.fails(log=str(log))
    assert len(calls(log)) == 2                             # the claim did not outlive the error
    assert not jobsteps.fails.job(log=str(log)).cached()
    assert not [p for p in Zoo().root.iterdir() if p.suffix in (".json", ".safetensors")]


def test_a_second_process_waits_for_the_claim_and_reads_the_result(tmp_path):
    log = tmp_path / "log"
    script = (f"import sys; sys.path.insert(0, {str(TESTS)!r}); import jobsteps; "
              f"print(jobsteps.slow(x=5.0, log={str(log)!r}, seconds=4).tolist())")
    first = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    while not calls(log):                                   # the first one holds the claim
        time.sleep(0.1)
    second = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120)
    assert first.wait(timeout=120) == 0 and second.returncode == 0, second.stderr
    assert "being computed by another process; waiting for it" in second.stderr
    assert len(calls(log)) == 1                             # computed once, read by the other
    assert second.stdout == first.stdout.read() == "[5.0, 5.0, 5.0]\n"


def test_ensure_computes_what_a_job_needs_first_and_counts(tmp_path):
    log = tmp_path / "log"
    jobsteps.square(x=2, log=str(log))                      # already in the zoo
    wanted = [jobsteps.plus_one.job(x=2, log=str(log)), jobsteps.plus_one.job(x=3, log=str(log))]
    order = jobs.in_order(wanted)
    assert [j.step.kind for j in order] == ["test.square", "test.plus_one"] * 2
    counts = jobs.ensure(wanted, "local", progress=False)
    assert counts["cached"] == 1 and counts["computed"] == 3 and counts["failed"] == 0
    assert set(counts["keys"]) == {j.key for j in order[1:]}
    assert [c.split(" ", 1)[1] for c in calls(log)] == ["square 2", "plus_one 2", "square 3",
                                                        "plus_one 3"]
    assert jobs.ensure(wanted, "local", progress=False)["computed"] == 0
    assert jobsteps.plus_one(x=3, log=str(log)) == 10
    with pytest.raises(ParameterError, match="executor='dask' is not allowed"):
        jobs.ensure(wanted, "dask")


def squares_plus_one(xs, log):
    """Declared by calling, as a chapter's `results`: the squares are found in one pass, and
    `plus_one` of their sum, whose argument is a result, in the next."""
    found = [jobsteps.square(x=x, log=log) for x in xs]
    return jobsteps.plus_one(x=sum(found), log=log)


def test_a_declaring_pass_finds_every_call_before_the_first_use_and_computes_nothing(tmp_path):
    log = str(tmp_path / "log")
    done = jobs.declared(squares_plus_one, [1, 2, 3], log)
    assert [j.describe() for j in done.jobs] == ["test.square"] * 3 and not done.ended
    assert done.missing == done.jobs and not calls(tmp_path / "log")
    jobsteps.square(x=2, log=log)
    done = jobs.declared(squares_plus_one, [1, 2, 3], log)
    assert [j.args["x"] for j in done.missing] == [1, 3]           # the cached one is read
    with pytest.raises(ParameterError, match="executor="):          # a bad value is raised
        jobs.declared(jobs.ensure, [], "dask")


def test_rounds_compute_each_job_once_and_a_rerun_reads_them(tmp_path):
    log = str(tmp_path / "log")
    before = len(jobs.COMPUTED)
    values, keys, computed = jobs.computed_by_rounds([(squares_plus_one, ([1, 2], log), {})],
                                                     progress=False)
    assert values == [(1 + 4) ** 2 + 1]
    assert [c.split(" ", 1)[1] for c in calls(tmp_path / "log")] == [
        "square 1", "square 2", "square 5", "plus_one 5"]           # square 5: plus_one's need
    assert set(jobs.COMPUTED[before:]) == computed == keys and len(keys) == 4
    values, keys, computed = jobs.computed_by_rounds([(squares_plus_one, ([1, 2], log), {})],
                                                     progress=False)
    assert values == [26] and not computed and len(keys) == 4
    assert len(calls(tmp_path / "log")) == 4


def test_a_pending_result_passes_along_and_refuses_what_needs_its_value(tmp_path):
    job = jobsteps.square.job(x=3, log=str(tmp_path / "log"))
    p = jobs.Pending(job)
    assert p.anything[0](1) + 2 is p and p.items() is p
    for use in (bool, len, iter, float, int, str, lambda v: f"{v:.1f}", lambda v: 1 in v,
                lambda v: {**v}):
        with pytest.raises(jobs.NotReady, match="test.square"):
            use(p)
    assert not hasattr(p, "__array__") and "test.square" in repr(p)
    from reprolib.victims import trained_victim
    asked = {"dataset": "fashion-mnist", "attack": "badnets", "profile": "smoke"}
    assert jobs.Pending(trained_victim.job(**asked)).asked == asked   # known without training


def test_repro_plan_lists_every_job_missing_then_cached(capsys):
    argv = ["plan", "attacks", "--profile", "smoke", "--dataset", "fashion-mnist", "--device",
            "cpu", "-p", "attacks=[badnets, blended]", "--throughput", "1000"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "3 jobs: 0 cached, 3 missing" in out and "victim clean seed 0" in out
    # 3 victims of 2,000 images × 3 epochs at 1,000 images/s: 6 s each
    assert out.count("~6 s") == 3 and "Missing jobs: 3, about 18 s in all" in out
    ch, planned = book.planned_jobs("attacks", profile="smoke", dataset="fashion-mnist",
                                    device="cpu", params={"attacks": ["badnets", "blended"]})
    assert [j.describe() for j in planned] == ["victim clean seed 0", "victim badnets 0.1 seed 0",
                                               "victim blended 0.1 seed 0"]
    jobs.ensure(planned, progress=False)
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "3 jobs: 3 cached, 0 missing" in out and out.count("cached  ") == 3
    assert main(["plan", "attacks", "--throughput", "0"]) == 2
    assert "--throughput=0.0 is out of range" in capsys.readouterr().err


def test_the_plan_counts_every_class_of_a_reversal_and_a_pass_for_clears_detection(monkeypatch):
    from reprolib.experiments import clear as clear_ex
    from reprolib.experiments import linf_pruning as linf_ex
    victim = {"dataset": "fashion-mnist", "attack": "badnets", "profile": "smoke", "seed": 0}
    budget = {"steps": 10, "batch_size": 32}
    reversal = linf_ex.reversed_triggers.job(victim=victim, n=100, seed=0, budget=budget)
    assert reversal.work() == 10 * 32 * 10                          # Fashion-MNIST's 10 labels
    monkeypatch.setattr(linf_ex, "n_classes", lambda args: 100)     # as on CIFAR-100
    assert reversal.work() == 10 * 32 * 100
    clean = {"dataset": "fashion-mnist", "attack": None, "profile": "smoke", "seed": 0}
    detection = clear_ex.examined.job(run=None, k=5, dim=8, clean=clean)
    assert detection.work() == pytest.approx(2000 / 3)              # one forward pass
