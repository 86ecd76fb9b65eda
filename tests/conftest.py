from pathlib import Path

import pytest

from reprolib import data

ROOT = Path(__file__).resolve().parent.parent
CIFAR10_MINI = ROOT.parent / "shared" / "data" / "cifar10-mini"


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No test reads or writes the user's caches, or goes to the network unless it says so."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setenv("REPRO_CACHE_DIR", str(tmp_path / "zoo"))
    monkeypatch.delenv("REPRO_DATA_DIR", raising=False)
    monkeypatch.setenv("REPRO_OFFLINE", "1")


@pytest.fixture(scope="session")
def cifar_mini() -> Path:
    assert (CIFAR10_MINI / "cifar-10-batches-py").is_dir(), \
        f"the CIFAR-10 test subset is missing: expected it at {CIFAR10_MINI}"
    return CIFAR10_MINI


@pytest.fixture(scope="session")
def fashion():
    """Fashion-MNIST (train, test) from Debian's dataset-fashion-mnist, which .ci/run installs."""
    return data.load("fashion-mnist", download=False)
