"""The training-outcome tests (those that take the `expect` fixture) at several seeds of their
trained fixtures, and each bound's margin: the distance from the bound to the worst seed's value.

    python tests/margins.py                 # seeds 0 1 2, every outcome test
    python tests/margins.py --seeds 3 4 tests/test_none.py
"""
import argparse
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path


def measured(seed: int, tests: list[str], folder: Path) -> dict:
    """{(test, quantity): (value, side, bound)} of one pytest run at `seed`."""
    report = folder / f"seed-{seed}.xml"
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "outcome", "-p",
                          "no:cacheprovider", "-o", "junit_family=xunit1", f"--train-seed={seed}",
                          f"--junitxml={report}", *tests], capture_output=True, text=True)
    print(f"seed {seed}: {run.stdout.strip().splitlines()[-1]}", file=sys.stderr)
    found = {}
    for case in ET.parse(report).iter("testcase"):
        for prop in case.iter("property"):
            value, side, bound = prop.get("value").split()
            found[case.get("name"), prop.get("name")] = (float(value), side, float(bound))
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("tests", nargs="*", default=["tests"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        runs = {seed: measured(seed, args.tests, Path(folder)) for seed in args.seeds}
    keys = sorted({k for run in runs.values() for k in run})
    print("| test | quantity | bound | " + " | ".join(f"seed {s}" for s in args.seeds)
          + " | worst margin |")
    print("|---|---|---|" + "---|" * len(args.seeds) + "---|")
    failed = False
    for test, quantity in keys:
        seen = [runs[s].get((test, quantity)) for s in args.seeds]
        _, side, bound = next(v for v in seen if v)
        margins = [(v - bound if side == ">" else bound - v) for v, _, _ in filter(None, seen)]
        failed |= min(margins) <= 0 or None in seen
        cells = " | ".join("—" if v is None else f"{v[0]:.3f}" for v in seen)
        print(f"| {test} | {quantity} | {side} {bound:g} | {cells} | {min(margins):+.3f} |")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
