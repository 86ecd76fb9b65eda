"""Profiles, the training recipe, the chapters' scale knobs, and parameter validation.

A profile sets scale knobs only (model, how many images, how long to train); dataset, seed and
device are separate parameters. Every check raises `ParameterError` naming the parameter, the
value and what is allowed.
"""
from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parent.parent    # the project: notebooks/, book/, reprolib/


def cache_home() -> Path:
    """Where downloaded data and trained models live unless told otherwise."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "repro"


class ParameterError(ValueError):
    """A parameter has a value that is not allowed; the message says which and what is."""


def check_choice(name: str, value, allowed) -> object:
    allowed = list(allowed)
    if value not in allowed:
        raise ParameterError(f"{name}={value!r} is not allowed; choose one of: "
                             + ", ".join(repr(a) for a in allowed))
    return value


def check_range(name: str, value, *, low=None, high=None, low_open=False, high_open=False,
                integer=False):
    """Check that `value` is a number (an integer if asked) inside the given bounds."""
    kind = "an integer" if integer else "a number"
    bounds = []
    if low is not None:
        bounds.append(f"{'>' if low_open else '≥'} {low}")
    if high is not None:
        bounds.append(f"{'<' if high_open else '≤'} {high}")
    allowed = kind + (" " + " and ".join(bounds) if bounds else "")
    numeric = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if not numeric or (integer and not float(value).is_integer()) or math.isnan(value):
        raise ParameterError(f"{name}={value!r} is not allowed; expected {allowed}")
    if (low is not None and (value < low or (low_open and value == low))) or \
       (high is not None and (value > high or (high_open and value == high))):
        raise ParameterError(f"{name}={value!r} is out of range; expected {allowed}")
    return int(value) if integer else float(value)


SCHEDULES = ("cosine", "onecycle", "constant", "warmup", "multistep")


AUGMENTS = (True, False, "flip")


@dataclass(frozen=True)
class Recipe:
    """How a model is trained: SGD with momentum and weight decay under a per-step schedule."""
    epochs: int
    batch_size: int = 128
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    schedule: str = "cosine"
    label_smoothing: float = 0.0
    milestones: tuple[int, ...] = ()   # multistep: the lr drops tenfold after each of these epochs
    augment: bool | str = True    # random crop (4-px zero padding) + horizontal flip; "flip": flip only
    post_augment: bool = False    # after the attack's per-batch step: WaNet's crop, rotation, flip

    def __post_init__(self):
        check_range("epochs", self.epochs, low=1, integer=True)
        check_range("batch_size", self.batch_size, low=2, integer=True)
        check_range("lr", self.lr, low=0, low_open=True)
        check_range("momentum", self.momentum, low=0, high=1, high_open=True)
        check_range("weight_decay", self.weight_decay, low=0)
        check_range("label_smoothing", self.label_smoothing, low=0, high=1, high_open=True)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_choice("nesterov", self.nesterov, (True, False))
        check_choice("augment", self.augment, AUGMENTS)
        check_choice("post_augment", self.post_augment, (True, False))
        object.__setattr__(self, "milestones", tuple(self.milestones))
        for m in self.milestones:
            check_range("milestones", m, low=1, high=self.epochs - 1, integer=True)
        if self.milestones and self.schedule != "multistep":
            raise ParameterError(f"milestones={list(self.milestones)} need schedule='multistep', "
                                 f"not {self.schedule!r}")

    def replace(self, **changes) -> "Recipe":
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise ParameterError(f"recipe has no field {sorted(unknown)[0]!r}; fields: "
                                 + ", ".join(f.name for f in fields(self)))
        return Recipe(**{**self.__dict__, **changes})

    def describe(self) -> str:
        """The recipe in a few words, for a chapter's page."""
        schedule = ({"multistep": "divided by 10 after epochs "
                     + ", ".join(str(m) for m in self.milestones)}.get(self.schedule)
                    or self.schedule)
        augment = {True: "crop and flip", "flip": "flip"}.get(self.augment, "no augmentation") + \
            (", then WaNet's crop, rotation and flip" if self.post_augment else "")
        return (f"{self.epochs} epochs of batch {self.batch_size}, SGD lr {self.lr:g} "
                f"({schedule}), weight decay {self.weight_decay:g}, {augment}")

    def rescaled(self, epochs: int) -> "Recipe":
        """The same recipe over `epochs`, its milestones moved in proportion: a paper's schedule
        at a smaller profile's length."""
        check_range("epochs", epochs, low=1, integer=True)
        moved = sorted({min(max(round(m * epochs / self.epochs), 1), epochs - 1)
                        for m in self.milestones}) if epochs > 1 else []
        return self.replace(epochs=epochs, milestones=tuple(moved),
                            schedule=self.schedule if moved or not self.milestones else "constant")


@dataclass(frozen=True)
class Profile:
    name: str
    model: str
    n_train: int | None          # at most this many training images; None: all
    n_test: int | None           # at most this many test images; None: all
    recipe: Recipe = field(repr=False)


PROFILES = {
    # CI scale. No augmentation: in 96 steps random crops keep a corner trigger from taking hold;
    # 3 epochs, because with 2 a BadNets backdoor took hold for some seeds and not others.
    "smoke": Profile("smoke", model="small_cnn", n_train=2000, n_test=500,
                     recipe=Recipe(epochs=3, batch_size=64, lr=0.2, schedule="onecycle",
                                   nesterov=True, augment=False)),
    # Fashion-MNIST, 2-core CPU: about 90 % test accuracy in about 2.5 minutes.
    "quick": Profile("quick", model="small_cnn", n_train=None, n_test=None,
                     recipe=Recipe(epochs=4, batch_size=128, lr=0.05, schedule="onecycle",
                                   nesterov=True)),
    # BackdoorBench's attack recipe: batch 128, SGD lr 0.01, momentum 0.9, wd 5e-4, cosine.
    "paper": Profile("paper", model="preact_resnet18", n_train=None, n_test=None,
                     recipe=Recipe(epochs=100)),
}


# Where a dataset needs its own model and recipe at a profile. CIFAR-10 at `quick`: on the
# Fashion-MNIST profile the small CNN reaches 71 % CA and Blended 42 % ASR. A wider net over ten
# epochs reaches 80 % in about 3.7 minutes a victim on a 2-core CPU; crops cost CA that short.
BY_DATASET = {
    ("quick", "cifar10"): Profile("quick", model="small_cnn_wide", n_train=None, n_test=None,
                                  recipe=Recipe(epochs=10, batch_size=128, lr=0.1,
                                                schedule="onecycle", nesterov=True,
                                                augment="flip")),
}


def profile(name: str, dataset: str | None = None) -> Profile:
    """Profile `name`, as it is for `dataset` (`BY_DATASET`; the same for every dataset
    otherwise)."""
    check_choice("profile", name, PROFILES)
    return BY_DATASET.get((name, dataset), PROFILES[name])


# Each chapter's scale knobs, one row a knob: its (smoke, quick, paper) values. A notebook
# parameter of the same name left at None takes its profile's value from here.
SCALES = {
    "linf_pruning": {
        "nc_steps":         (100, 600, None),     # Neural Cleanse Adam steps; None: the
                                                  # reference's budget (neural_cleanse.budget)
    },
    "neural_polarizer": {
        "warm_epochs":      (1, 5, 5),            # NPD's warm-up (the reference's 5)
        "npd_epochs":       (3, 50, 50),          # NPD's epochs (the reference's 50)
        "ft_epochs":        (3, 100, 100),        # FT and FP (BackdoorBench's 100)
        "clean_ratios":     ([0.05, 0.01], [0.05, 0.01, 0.005, 0.001],
                             [0.05, 0.01, 0.005, 0.001]),   # the clean-data figure
    },
    "none": {
        "none_epochs":      (1, 5, 20),           # NONE's fine-tuning (the README's 20)
        "abl_epochs":       ([1, 1, 0, 1], [2, 3, 1, 4], [10, 40, 20, 4]),  # ABL's four phases
        "natural_schedule": ([1, 1], [3, 3], [10, 40]),   # natural setting: rounds, epochs each
        "scan_steps":       (20, 150, 150),       # Adam steps of one REASR scan
        "check_images":     (300, 2000, 10000),   # test images a scanned trigger is measured on
    },
    "mesa": {
        "n_patterns":       (1, 3, 51),           # black-and-white pattern classes (all 51)
        "n_random":         (1, 1, 10),           # random-colour patterns (the paper's 10)
        "rounds":           (2, 5, 10),           # the baseline's restarts (the paper's 10)
        "inject_rate":      (0.2, 0.1, 0.01),     # the attack's stamping rate (the code's 1 %)
        "inject_epochs":    (1, 3, 10),           # the attack's epochs (the code's 10)
        "search_epochs":    (1, 3, 10),           # the generators' epochs (the code's 10)
        "retrain_epochs":   (1, 5, 10),           # the retraining's epochs (the code's 10)
    },
    "comparison": {
        "nc_steps":         (100, 600, None),     # as the ℓ∞ chapter's Neural Cleanse
        "search_batch":     (32, 128, 128),       # MESA's generators (the code's 128); the
                                                  # smoke defender holds 100 images
    },
    "clear": {
        "draws_copies":     (1, 6, 10),           # (target, class) draws per attack; at quick
                                                  # enough for about 3 successes (1 of 2 did)
        "draws_collision":  (2, 8, 20),
        "draws_brew":       (1, 2, 10),
        "brew_steps":       (10, 120, 240),       # gradient-matching steps (the paper's 240)
        "restarts":         (1, 1, 8),            # gradient-matching restarts (the paper's 8)
        "pool_size":        (500, 2500, 2500),    # the benchmark's fine-tuning set
        "clean_pools":      (3, 10, 20),          # clean fine-tuning sets, to calibrate the score
        "clean_models":     (1, 1, 10),           # clean models from scratch, to calibrate it
        "scratch_epochs":   (1, 1, 10),           # CLEAR's fine-tuning from scratch
    },
}


# How many seeds a chapter runs by default at smoke, quick and paper. At quick, three where a
# seed costs minutes on a 2-core CPU (attacks, ℓ∞); one where it costs ten minutes or more
# (MESA, CLEAR, NONE, the Neural Polarizer, the comparison), which `--seeds 0 1 2` raises.
SEEDS = {
    "attacks":          (1, 3, 3),
    "linf_pruning":     (1, 3, 3),
    "mesa":             (1, 1, 3),
    "clear":            (1, 1, 3),
    "none":             (1, 1, 3),
    "neural_polarizer": (1, 1, 3),
    "comparison":       (1, 1, 3),
}


def seeds(chapter: str, profile_name: str) -> int:
    """How many seeds `chapter` runs by default at `profile_name` (`SEEDS`; 1 if unlisted)."""
    column = list(PROFILES).index(check_choice("profile", profile_name, PROFILES))
    return SEEDS.get(chapter, (1, 1, 1))[column]


def scale(chapter: str, profile_name: str, **given) -> SimpleNamespace:
    """`chapter`'s scale knobs at `profile_name`, each replaced by its value in `given` unless
    that is None (a notebook parameter left at its default)."""
    knobs = SCALES.get(chapter, {})
    column = list(PROFILES).index(check_choice("profile", profile_name, PROFILES))
    unknown = set(given) - set(knobs)
    if unknown:
        raise ParameterError(f"{sorted(unknown)[0]!r} is not a scale knob of {chapter!r}; "
                             f"its knobs: {', '.join(knobs) or 'none'}")
    return SimpleNamespace(**{name: copy.deepcopy(values[column]) if given.get(name) is None
                              else given[name] for name, values in knobs.items()})
