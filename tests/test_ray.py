"""The Ray executor: jobs as Ray tasks on a local instance (2 CPUs), a killed worker's job
retried, and a smoke chapter run through Ray giving the in-process run's tables."""
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from reprolib import book, jobs
from reprolib.zoo import Zoo

import jobsteps
from test_book import project_copy

ray = pytest.importorskip("ray", reason="the [cluster] extra (ray) is part of [dev]")
pytestmark = pytest.mark.ray            # `make check` leaves these out: each starts Ray
TESTS = Path(__file__).resolve().parent
RAY = Path(sys.executable).with_name("ray")


@pytest.fixture
def local_ray(tmp_path, monkeypatch):
    """A Ray instance in this process with 2 CPUs, its workers able to import `jobsteps` and
    sharing this test's zoo; shut down after the test."""
    monkeypatch.setenv("PYTHONPATH", str(TESTS))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"REPRO_CACHE_DIR": os.environ["REPRO_CACHE_DIR"],
                                       "PYTHONPATH": str(TESTS)}})
    yield
    ray.shutdown()


def test_ray_computes_each_missing_job_once_after_what_it_needs(local_ray, tmp_path):
    log = tmp_path / "log"
    jobsteps.square(x=2, log=str(log))                       # cached before the run
    wanted = [jobsteps.plus_one.job(x=x, log=str(log)) for x in (2, 3, 4)]
    counts = jobs.ensure(wanted, "ray", progress=False)
    assert counts["cached"] == 1 and counts["computed"] == 5 and counts["failed"] == 0
    lines = [line.split(" ", 1)[1] for line in log.read_text().splitlines()]
    assert sorted(lines) == sorted(["square 2", "plus_one 2", "square 3", "plus_one 3",
                                    "square 4", "plus_one 4"])
    for x in (3, 4):                                         # each after the square it reads
        assert lines.index(f"square {x}") < lines.index(f"plus_one {x}")
    assert [jobsteps.plus_one(x=x, log=str(log)) for x in (2, 3, 4)] == [5, 10, 17]
    assert len(log.read_text().splitlines()) == 6           # read back, nothing recomputed


def test_a_killed_worker_is_retried_and_leaves_nothing_partial(local_ray, tmp_path):
    log, marker = tmp_path / "log", tmp_path / "pid"

    def kill_the_first_attempt():
        while not marker.exists() or not marker.read_text():
            time.sleep(0.1)
        time.sleep(0.5)
        os.kill(int(marker.read_text()), signal.SIGKILL)

    killer = threading.Thread(target=kill_the_first_attempt)
    killer.start()
    job = jobsteps.dies_once.job(marker=str(marker), log=str(log))
    counts = jobs.ensure([job], "ray", progress=False)
    killer.join(timeout=60)
    assert counts["computed"] == 1 and counts["failed"] == 0
    assert len(log.read_text().splitlines()) == 2           # the killed attempt and the retry
    assert torch.equal(job(), torch.arange(4.0))
    assert not [p.name for p in Zoo().root.iterdir() if p.name.endswith(".tmp")]


def copied(folder: Path) -> Path:
    folder.mkdir()
    return project_copy(folder)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TIMED = ("seconds", "time %")       # wall times differ from run to run; nothing else may


def tables(root: Path, paper: str) -> dict:
    result = json.loads((root / "book" / "results" / f"{paper}.json").read_text())
    untimed = {name: [{k: v for k, v in row.items() if not any(t in k for t in TIMED)}
                      for row in rows] for name, rows in result["tables"].items()}
    return {"tables": untimed, "comparison": result["comparison"], "jobs": result["record"]["jobs"]}


def test_a_smoke_chapter_through_ray_gives_the_in_process_tables(tmp_path, monkeypatch):
    """The Neural Polarizer chapter at smoke through a Ray instance the test starts (2 CPUs),
    against the same chapter in one process with one torch thread, as each Ray task has: the
    arithmetic of a CPU convolution depends on how many threads split it."""
    monkeypatch.setenv("REPRO_OFFLINE", "1")
    local = copied(tmp_path / "local")
    monkeypatch.setenv("REPRO_CACHE_DIR", str(tmp_path / "zoo-local"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    book.run("neural_polarizer", profile="smoke", dataset="fashion-mnist", device="cpu",
             root=local, progress=False)
    monkeypatch.delenv("OMP_NUM_THREADS")

    port = free_port()
    started = subprocess.run([str(RAY), "start", "--head", f"--port={port}", "--num-cpus=2",
                              "--include-dashboard=false", "--disable-usage-stats"],
                             capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr
    try:
        remote = copied(tmp_path / "ray")
        monkeypatch.setenv("REPRO_CACHE_DIR", str(tmp_path / "zoo-ray"))
        monkeypatch.setenv("REPRO_EXECUTOR", "ray")
        monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
        book.run("neural_polarizer", profile="smoke", dataset="fashion-mnist", device="cpu",
                 root=remote, progress=False)
    finally:
        subprocess.run([str(RAY), "stop", "--force"], capture_output=True, timeout=120)
    a, b = tables(local, "neural_polarizer"), tables(remote, "neural_polarizer")
    assert json.loads((remote / "book" / "results" / "neural_polarizer.json").read_text())[
        "record"]["executor"] == "ray"
    assert b["jobs"]["computed"] == b["jobs"]["jobs"] == a["jobs"]["jobs"] > 20
    assert a["tables"] == b["tables"] and a["comparison"] == b["comparison"]


def test_two_concurrent_runs_compute_every_job_once(tmp_path, monkeypatch):
    """Two runs of the smoke NPD chapter at once on one zoo: every job is computed by one of
    them (the other waits on its claim and reads it); both give the same tables."""
    root = copied(tmp_path / "root")
    env = {**os.environ, "REPRO_CACHE_DIR": str(tmp_path / "zoo"), "REPRO_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    script = ("import sys, shutil; from pathlib import Path; from reprolib import book; "
              "root = Path(sys.argv[1]); book.run('neural_polarizer', profile='smoke', "
              "dataset='fashion-mnist', device='cpu', root=root, progress=False); "
              "shutil.copy(root / 'book/results/neural_polarizer.json', sys.argv[2])")
    runs = [subprocess.Popen([sys.executable, "-c", script, str(root), str(tmp_path / f"{i}.json")],
                             env=env, stderr=subprocess.PIPE, text=True) for i in range(2)]
    errors = [r.communicate(timeout=1200)[1] for r in runs]
    assert [r.returncode for r in runs] == [0, 0], errors
    records = [json.loads((tmp_path / f"{i}.json").read_text()) for i in range(2)]
    counted = [r["record"]["jobs"] for r in records]
    assert counted[0]["jobs"] == counted[1]["jobs"] > 20
    assert counted[0]["computed"] + counted[1]["computed"] == counted[0]["jobs"]
    assert records[0]["tables"] == records[1]["tables"]
    assert not list((root / "book" / ".partial").iterdir())
