"""The papers' own setting in miniature: every chapter with `model="paper"` (PreAct-ResNet18 or
ResNet-18, as its reference has it) read through the CIFAR-10 reader from the 200-image fixture
in tests/data/cifar10-mini, at the smoke profile, so that every branch only the paper's models
take (512-channel layers, ResNet layer maps, the reference recipes) runs in CI.

    python tests/paper_setting.py build/paper-setting        # writes the notebooks
    REPRO_DATA_DIR=tests/data/cifar10-mini pytest --nbval-lax build/paper-setting

The fixture holds 160 training and 40 test images, and a ResNet trains at about 65 images a
second on a 2-core CPU; `SMALLER` is what each chapter's smoke defaults ask beyond that.
"""
import sys
from pathlib import Path

import nbformat
from papermill.iorw import load_notebook_node
from papermill.parameterize import parameterize_notebook

ROOT = Path(__file__).resolve().parent.parent
SETTING = {"profile": "smoke", "model": "paper", "dataset": "cifar10", "device": "cpu"}
SMALLER = {
    # SIG poisons only target-class images, and class 0 has 9 of the 160
    "attacks": {"ratio": 0.05},
    "linf_pruning": {"ratio": 0.05, "n_defender": 100, "n_stats": 30,
                     "nc_steps": 3},           # Neural Cleanse: 10 labels × 32 images a step
    "neural_polarizer": {"ratio": 0.05, "clean_ratio": 0.125, "clean_ratios": [0.125, 0.0625],
                         "poison_ratios": [0.05, 0.025]},   # class-balanced: 1-2 images a class
    "mesa": {"search_batch": 16, "reverse_batch": 16},      # the defender holds 32 test images
    "none": {"ratio": 0.05, "fit_images": 20, "attacks": ["badnets", "badnets_all2all"],
             "areas": [0.06], "scan_steps": 2},   # a REASR scan: 10 labels × 24 images a step
    # the Neural Polarizer chapter's victims and clean data, so that their jobs are shared; two
    # attacks, a dirty-label one and WaNet with its own recipe, as the smoke pass runs all five
    # (the five took 304 s of the pass's 820 s, nearly all of it the ResNet's compute)
    "comparison": {"ratio": 0.05, "clean_ratio": 0.125, "nc_images": 100, "nc_steps": 3,
                   "search_batch": 16, "attacks": ["badnets", "wanet"]},
    # the transfer setting's fine-tuning set, and the poisons of one class in it
    "clear": {"pool_size": 100, "k_transfer": 20, "poisons": 5},
}


def write(out: Path) -> list[Path]:
    """Each chapter's notebook with the paper setting and `SMALLER` injected, in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for chapter, smaller in SMALLER.items():
        nb = load_notebook_node(str(ROOT / "notebooks" / f"{chapter}.ipynb"))
        nb = parameterize_notebook(nb, {**SETTING, **smaller})
        nbformat.write(nb, out / f"{chapter}.ipynb")
        written.append(out / f"{chapter}.ipynb")
    return written


if __name__ == "__main__":
    write(Path(sys.argv[1]))
