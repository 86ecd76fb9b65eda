"""A chapter killed at any point and run again: it finishes with the results of a run never
killed, and every job finished before a kill is read back, not computed again."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reprolib.zoo import Zoo

from test_book import project_copy

pytestmark = pytest.mark.notebook

ATTACKS = ["badnets", "blended", "sig", "wanet"]        # with the clean twin: five victims
RUN = ("import sys; from pathlib import Path; from reprolib import book; "
       "book.run('attacks', profile='smoke', dataset='fashion-mnist', device='cpu', "
       f"params={{'attacks': {ATTACKS}, 'seeds': [0]}}, root=Path(sys.argv[1]), progress=False)")


def start(root: Path, zoo: Path) -> subprocess.Popen:
    """The chapter's run, in a process group of its own (its kernel is a child)."""
    return subprocess.Popen([sys.executable, "-c", RUN, str(root)], start_new_session=True,
                            env={**os.environ, "REPRO_CACHE_DIR": str(zoo)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def entries(zoo: Path) -> dict[str, int]:
    """Each finished entry of the zoo, by key, with when its card was written (ns)."""
    return {c["key"]: Zoo(zoo).paths(c["key"])[1].stat().st_mtime_ns for c in Zoo(zoo).entries()}


def outcome(root: Path) -> dict:
    """What a run's results file says, wall times and the run record aside."""
    found = json.loads((root / "book" / "results" / "attacks.json").read_text())
    rows = [{k: v for k, v in r.items() if k != "train_s"} for r in found["tables"]["no_defense"]]
    return {"rows": rows, "measured": found["measured"], "comparison": found["comparison"]}


def test_a_run_killed_at_ten_points_resumes_to_the_results_of_one_never_killed(tmp_path):
    (tmp_path / "whole").mkdir()
    (tmp_path / "killed").mkdir()
    whole = project_copy(tmp_path / "whole")
    done = subprocess.run([sys.executable, "-c", RUN, str(whole)], capture_output=True,
                          text=True, env={**os.environ, "REPRO_CACHE_DIR": str(tmp_path / "z1")})
    assert done.returncode == 0, done.stderr[-2000:]

    root, zoo = project_copy(tmp_path / "killed"), tmp_path / "z2"
    # killed once the zoo holds n of the five victims, at once or 1.5 s later: in a job's
    # training, between two jobs, while the process starts or declares, after the last job
    for n in range(1, 6):
        for delay in (0.0, 1.5):
            before = entries(zoo)
            run = start(root, zoo)
            while len(entries(zoo)) < n and run.poll() is None:
                time.sleep(0.05)
            time.sleep(delay)
            assert run.poll() is None, "the run ended before the kill"
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
            after = entries(zoo)
            assert all(after[k] == when for k, when in before.items()), "a cached job recomputed"

    before = entries(zoo)
    final = start(root, zoo)
    assert final.wait(timeout=600) == 0, final.stderr.read()[-2000:]
    assert all(entries(zoo)[k] == when for k, when in before.items())
    record = json.loads((root / "book" / "results" / "attacks.json").read_text())["record"]
    assert record["jobs"]["cached"] == len(before) and record["jobs"]["jobs"] == 5
    assert outcome(root) == outcome(whole)
    assert not list((root / "book" / ".partial").iterdir())     # the killed runs' pages swept
