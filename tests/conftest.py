import os
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from reprolib import data
from reprolib.attacks import attack
from reprolib.config import Recipe
from reprolib.train import trained
from reprolib.zoo import Zoo

ROOT = Path(__file__).resolve().parent.parent
CIFAR10_MINI = ROOT / "tests" / "data" / "cifar10-mini"   # 200 real CIFAR-10 images


# The zoo of the session's shared fixtures (the smoke victims) and of the chapters' loops that
# read them through their jobs; set before any fixture runs, so that no test touches the user's.
SESSION_ZOO = Path(tempfile.mkdtemp(prefix="repro-test-zoo-"))
os.environ["REPRO_CACHE_DIR"] = str(SESSION_ZOO)
os.environ["REPRO_OFFLINE"] = "1"
os.environ.pop("REPRO_DATA_DIR", None)
os.environ.pop("REPRO_EXECUTOR", None)


def pytest_addoption(parser):
    parser.addoption("--train-seed", type=int, default=0, metavar="N",
                     help="seed of the trained fixtures' data, poison and weights (tiny_badnets, "
                          "tiny_patch): the training-outcome tests must pass at any")


def pytest_collection_modifyitems(items):
    for item in items:
        if "expect" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.outcome)


@pytest.fixture(scope="session")
def train_seed(request) -> int:
    return request.config.getoption("train_seed")


@pytest.fixture
def expect(record_property):
    """Asserts that a training outcome is on the right side of its bound, and records the value,
    the bound and the margin between them (tests/margins.py tabulates them over seeds)."""
    def check(name: str, value: float, *, above: float | None = None, below: float | None = None):
        assert (above is None) != (below is None), "give one bound: above= or below="
        side, bound = (">", above) if above is not None else ("<", below)
        record_property(name, f"{value:.4f} {side} {bound:.4f}")
        assert (value > bound if side == ">" else value < bound), \
            f"{name} = {value:.4f}, wanted {side} {bound:.4f}"
    return check


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch, request):
    """No test reads or writes the user's caches, or goes to the network unless it says so.
    Each test has a zoo of its own, but for the tests of the chapters' loops
    (test_experiments_*), which share the session's: their jobs read the smoke victims."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    shared = request.module.__name__.split(".")[-1].startswith("test_experiments")
    monkeypatch.setenv("REPRO_CACHE_DIR", str(SESSION_ZOO if shared else tmp_path / "zoo"))
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


@pytest.fixture(scope="session")
def tiny_badnets(fashion, train_seed, tmp_path_factory):
    """A small CNN with a BadNets backdoor (4,000 images, 4 epochs, no augmentation, target 0),
    its training set and poison indices, the test set, its triggered version, and 500 clean
    training images for the defender.
    Shared by the defense tests, which must leave the model unchanged."""
    train, test = fashion
    train, test = train.sample(4000, train_seed), test.sample(500, train_seed)
    badnets = attack("badnets")
    poisoned = badnets.poison(train, 0.1, 0, train_seed)
    recipe = Recipe(epochs=4, batch_size=64, lr=0.2, schedule="onecycle", nesterov=True,
                    augment=False)
    model, _ = trained("small_cnn", poisoned.data, recipe, seed=train_seed, progress=False,
                       zoo=Zoo(tmp_path_factory.mktemp("zoo")))
    keep = torch.ones(len(train), dtype=torch.bool)
    keep[poisoned.indices] = False
    return SimpleNamespace(model=model.eval(), train=poisoned.data, poison_indices=poisoned.indices,
                           test=test, backdoor=badnets.triggered(test, 0),
                           defender=poisoned.data.subset(keep.nonzero().flatten()[:500]))


@pytest.fixture(scope="session")
def tiny_patch(fashion, train_seed, tmp_path_factory):
    """A small CNN trained (as `tiny_badnets`) with MESA's pattern 170 stamped at a random place
    on 10 % of 4,000 images (target 0), and the test set cut into the defender's images and the
    held-out evaluation images as MESA cuts it."""
    from reprolib.attacks.patch import Patch
    from reprolib.defenses.mesa import split

    train, test = fashion
    train, test = train.sample(4000, train_seed), test.sample(500, train_seed)
    patch = Patch.black_and_white(170, channels=1)
    poisoned = patch.poison(train, 0.1, 0, train_seed)
    recipe = Recipe(epochs=4, batch_size=64, lr=0.2, schedule="onecycle", nesterov=True,
                    augment=False)
    model, _ = trained("small_cnn", poisoned.data, recipe, seed=train_seed, progress=False,
                       zoo=Zoo(tmp_path_factory.mktemp("zoo")))
    defender, held_out = split(test)
    return SimpleNamespace(model=model.eval(), patch=patch, defender=defender, held_out=held_out,
                           backdoor=patch.triggered(held_out, 0))


@pytest.fixture(scope="session")
def smoke_victims(fashion, tmp_path_factory):
    """The smoke profile's clean, BadNets and Blended models on Fashion-MNIST (2,000 images, 3
    epochs), as the chapters ask for them, in the session's zoo, and the settings that made
    them: what the tests of `reprolib.experiments` run the chapters' loops on."""
    from reprolib.victims import trained_victim

    common = dict(ratio=0.1, target=0, seed=0, profile="smoke", device="cpu", progress=False)
    return SimpleNamespace(
        clean=trained_victim(dataset="fashion-mnist", attack=None, **common),
        badnets=trained_victim(dataset="fashion-mnist", attack="badnets", **common),
        blended=trained_victim(dataset="fashion-mnist", attack="blended", **common),
        common=common)


@pytest.fixture(autouse=True)
def no_open_figures():
    """Every figure a test draws is closed after it."""
    yield
    import matplotlib.pyplot as plt
    plt.close("all")
