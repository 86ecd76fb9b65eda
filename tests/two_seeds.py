"""One chapter over two seeds, for nbval: the ℓ∞ chapter at the smoke profile with seeds 0 and
1, so that CI runs a second seed's notebook, pools both and checks the verdicts over seeds.

    python tests/two_seeds.py build/two-seeds
    REPRO_PROFILE=smoke pytest --nbval-lax build/two-seeds
"""
import sys
from pathlib import Path

import nbformat
from papermill.iorw import load_notebook_node
from papermill.parameterize import parameterize_notebook

ROOT = Path(__file__).resolve().parent.parent
CHAPTER, SEEDS = "linf_pruning", [0, 1]


def write(out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    nb = load_notebook_node(str(ROOT / "notebooks" / f"{CHAPTER}.ipynb"))
    nbformat.write(parameterize_notebook(nb, {"seeds": SEEDS}), out / f"{CHAPTER}.ipynb")
    return out / f"{CHAPTER}.ipynb"


if __name__ == "__main__":
    write(Path(sys.argv[1]))
