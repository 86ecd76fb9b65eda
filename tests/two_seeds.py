"""One chapter over two seeds, for nbval: the ℓ∞ chapter at the smoke profile, seed 1 executed
first (as `repro run --seeds 0 1` does, into OUT-seed1/), then seed 0's notebook written to OUT
with seed 1's results file as its `pooled`, so that CI checks the pooling and the verdicts over
seeds.

    python tests/two_seeds.py build/two-seeds
    REPRO_PROFILE=smoke pytest --nbval-lax build/two-seeds
"""
import sys
from pathlib import Path

import nbformat
from papermill.iorw import load_notebook_node
from papermill.parameterize import parameterize_notebook

from reprolib import book

ROOT = Path(__file__).resolve().parent.parent
CHAPTER = "linf_pruning"


def write(out: Path) -> Path:
    out = out.resolve()
    other = out.with_name(f"{out.name}-seed1")
    for folder in (out, other):
        folder.mkdir(parents=True, exist_ok=True)
    book.execute(CHAPTER, {"profile": "smoke", "seed": 1, "pooled": []}, other / CHAPTER, ROOT,
                 progress=False)
    nb = load_notebook_node(str(ROOT / "notebooks" / f"{CHAPTER}.ipynb"))
    pooled = [str(other / f"{CHAPTER}.json")]
    nbformat.write(parameterize_notebook(nb, {"seed": 0, "pooled": pooled}),
                   out / f"{CHAPTER}.ipynb")
    return out / f"{CHAPTER}.ipynb"


if __name__ == "__main__":
    write(Path(sys.argv[1]))
