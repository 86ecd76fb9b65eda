"""Backdoored (and clean twin) models, asked for the same way by every chapter.

    v = victim("fashion-mnist", attack="blended", ratio=0.1, target=0, seed=0, profile="quick")
    v.model, v.train, v.poison_indices, v.test, v.backdoor, v.scores()

`victim` is the step `trained_victim` of `jobs.py` called with every argument: its weights are
kept in the zoo under a key of those arguments, so five chapters that need the same BadNets
model train it once, and a chapter can declare its victims as jobs that an executor trains all
at once. Reading one back samples and poisons its data again (`setting`, every step seeded) and
loads the weights; the last eight read stay in memory. `attack=None` gives the clean twin: the
same training images, recipe and seed, without poison.

    injected(clean_victim, Patch.black_and_white(170, channels=1), rate=0.01, target=0, recipe=r)

gives MESA's kind of victim instead: a trained clean model fine-tuned with the trigger stamped on
each image of each batch with probability `rate` (cached in the zoo the same way).
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from functools import cached_property, lru_cache

import torch
import torch.nn as nn

from . import config, data, devices, models
from .attacks import Attack, Poisoned, attack as make_attack
from .attacks.base import check_target_class
from .attacks.patch import Patch
from .jobs import Kept, step
from .provenance import code_digest
from .train import evaluate, train
from .zoo import Zoo


@dataclass(frozen=True)
class Victim:
    model: nn.Module
    card: dict                  # the zoo card: spec, training history, wall time, device
    train: data.ImageSet        # what the model was trained on (poisoned unless clean)
    test: data.ImageSet         # the clean test set
    target: int
    poisoned: Poisoned | None   # None for a clean model
    backdoor: data.ImageSet | None  # the attack's triggered non-target test images, true labels
    original: data.ImageSet     # the training set before poisoning
    asked: dict | None = None   # victim()'s arguments: what a job of this victim is given

    @property
    def attack(self) -> Attack | None:
        return self.poisoned.attack if self.poisoned else None

    @property
    def poison_indices(self) -> torch.Tensor:
        return self.poisoned.indices if self.poisoned else torch.empty(0, dtype=torch.long)

    def clean_subset(self, n: int, seed: int = 0, balanced: bool = False,
                     untouched: bool = True) -> data.ImageSet:
        """`n` clean training images drawn from `seed`: the defender's small clean set that most
        defenses assume. `untouched`: only images the attack did not touch; False: the clean
        originals of any training images, as BackdoorBench draws them (a clean-label attack at
        10 % can touch a whole class). `balanced`: n / classes from each class (n must then be
        a multiple of the number of classes)."""
        touched = torch.zeros(len(self.train), dtype=torch.bool)
        if self.poisoned and untouched:
            touched[self.poisoned.indices.cpu()] = True
            touched[self.poisoned.cross.cpu()] = True
        pool = (~touched).nonzero().flatten()
        config.check_range("n", n, low=1, high=len(pool), integer=True)
        order = pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))]
        if not balanced:
            return self.original.subset(order[:n].sort().values)
        classes = len(self.train.classes)
        if n % classes:
            raise config.ParameterError(f"n={n} is not allowed with balanced=True; expected a "
                                        f"multiple of the {classes} classes")
        labels = self.original.labels.cpu()[order]
        chosen = [order[labels == k][:n // classes] for k in range(classes)]
        if any(len(c) < n // classes for c in chosen):
            raise config.ParameterError(
                f"n={n} is not allowed with balanced=True; a class has fewer than {n // classes} "
                f"{'untouched ' if untouched else ''}images"
                + ("; untouched=False draws from the clean originals" if untouched else ""))
        return self.original.subset(torch.cat(chosen).sort().values)

    @property
    def backdoor_targets(self) -> torch.Tensor | None:
        """Per triggered test image, the class the backdoor sends it to."""
        if self.backdoor is None:
            return None
        return self.attack.backdoor_labels(self.backdoor.labels, self.target,
                                           len(self.test.classes))

    def scores(self, model: nn.Module | None = None) -> dict[str, float]:
        """CA, and ASR and RA when attacked, of `model` (default: this victim's own, measured
        once: every defense's DER is read against it)."""
        if model is None or model is self.model:
            return dict(self._own_scores)
        return evaluate(model, self.test, self.backdoor, self.backdoor_targets)

    @cached_property
    def _own_scores(self) -> dict[str, float]:
        return evaluate(self.model, self.test, self.backdoor, self.backdoor_targets)


@lru_cache(maxsize=4)
def datasets(name: str, data_dir: str | None, n_train: int | None, n_test: int | None,
             seed: int) -> tuple[data.ImageSet, data.ImageSet]:
    """The (train, test) sets of a profile's scale: at most `n_train` and `n_test` images (all
    if None or if the dataset is smaller, as the 200-image CIFAR-10 fixture of the tests is),
    sampled from `seed` (read once per process)."""
    train_set, test_set = data.load(name, data_dir)
    return at_most(train_set, n_train, seed), at_most(test_set, n_test, seed)


def at_most(images: data.ImageSet, n: int | None, seed: int) -> data.ImageSet:
    return images if n is None or n >= len(images) else images.sample(n, seed)


def victim(dataset: str = "fashion-mnist", *, attack: str | Attack | None = "badnets",
           ratio: float = 0.1, target: int = 0, seed: int = 0, profile: str = "quick",
           model: str | None = None, recipe: config.Recipe | None = None,
           attack_recipes: bool = False, device: str | torch.device = "auto",
           data_dir: str | None = None, progress: bool = True, **attack_params) -> Victim:
    """A model of `profile` (its architecture and recipe unless `model` and `recipe` are given)
    trained on `dataset` poisoned by `attack` (a name, with `attack_params`, or an Attack), or
    clean if None, through the zoo (`trained_victim`). `attack_recipes`: the attack changes the
    recipe as its reference code does (`Attack.recipe`: WaNet's constant lr and post-warp
    augmentation). The model comes in eval mode, so that looking at it never moves its
    BatchNorm statistics."""
    return trained_victim(dataset=dataset, attack=attack, ratio=ratio, target=target, seed=seed,
                          profile=profile, model=model, recipe=recipe,
                          attack_recipes=attack_recipes, device=device, data_dir=data_dir,
                          progress=progress, **attack_params)


@dataclass(frozen=True)
class Setting:
    """What a victim is trained on and by, and scored with: everything but its weights."""
    model_name: str
    recipe: config.Recipe
    train: data.ImageSet        # poisoned unless clean
    test: data.ImageSet
    original: data.ImageSet     # the training set before poisoning
    poisoned: Poisoned | None
    backdoor: data.ImageSet | None
    backdoor_targets: torch.Tensor | None

    def score(self, model: nn.Module) -> dict[str, float]:
        return evaluate(model, self.test, self.backdoor, self.backdoor_targets)

    def skeleton(self, seed: int) -> nn.Module:
        return models.build(self.model_name, len(self.train.classes), self.train.images.shape[1],
                            seed=seed)


def checked(dataset: str = "fashion-mnist", *, attack: str | Attack | None = "badnets",
            ratio: float = 0.1, target: int = 0, seed: int = 0, profile: str = "quick",
            model: str | None = None, recipe: config.Recipe | None = None,
            attack_recipes: bool = False, data_dir: str | None = None,
            **attack_params) -> tuple[str, Attack | None]:
    """Every argument of `victim(...)` checked, without poisoning or training: the first bad
    one raises `ParameterError` naming it. Returns the model's name and the attack (None for a
    clean twin). A chapter declaring its jobs calls it for each victim, so that a bad value
    stops the run before any job starts."""
    config.check_choice("dataset", dataset, data.DATASETS)
    p = config.profile(profile, dataset)
    model_name = config.check_choice("model", model or p.model, tuple(models.MODELS))
    config.check_range("seed", seed, low=0, high=2**32 - 1, integer=True)
    if isinstance(attack, Attack) and attack_params:
        raise config.ParameterError(f"attack parameters {sorted(attack_params)} were given with "
                                    f"an Attack object; set them on the object instead")
    if attack is None:
        if attack_params:
            raise config.ParameterError(f"attack parameters {sorted(attack_params)} were given "
                                        f"with attack=None")
        return model_name, None
    atk = attack if isinstance(attack, Attack) else make_attack(attack, **attack_params)
    train_set, _ = datasets(dataset, data_dir, p.n_train, p.n_test, seed)
    check_target_class(target, train_set)
    atk.poison_indices(train_set.labels, ratio, target, seed)     # the ratio, for this attack
    return model_name, atk


def setting(dataset: str = "fashion-mnist", *, attack: str | Attack | None = "badnets",
            ratio: float = 0.1, target: int = 0, seed: int = 0, profile: str = "quick",
            model: str | None = None, recipe: config.Recipe | None = None,
            attack_recipes: bool = False, data_dir: str | None = None,
            **attack_params) -> Setting:
    """The `Setting` of the victim `victim(...)` gives for these arguments (`checked`): the
    data sampled and poisoned again (every step of it is seeded), without training."""
    model_name, atk = checked(dataset, attack=attack, ratio=ratio, target=target, seed=seed,
                              profile=profile, model=model, data_dir=data_dir, **attack_params)
    p = config.profile(profile, dataset)
    recipe = recipe or p.recipe
    train_set, test_set = datasets(dataset, data_dir, p.n_train, p.n_test, seed)
    if atk is None:
        return Setting(model_name, recipe, train_set, test_set, train_set, None, None, None)
    poisoned = atk.poison(train_set, ratio, target, seed)
    backdoor = atk.triggered(test_set, target)
    return Setting(model_name, atk.recipe(recipe) if attack_recipes else recipe, poisoned.data,
                   test_set, train_set, poisoned, backdoor,
                   atk.backdoor_labels(backdoor.labels, target, len(test_set.classes)))


def _data_args(args: dict) -> dict:
    """`args` less where the work runs and whether it shows a bar: what `setting` takes
    (`data_dir` stays: it is not keyed, the copy's pixels are, but it is where the data is)."""
    return {k: v for k, v in args.items() if k not in ("device", "progress", "zoo")}


def _read_victim(kept: Kept, args: dict) -> Victim:
    """The victim with its kept weights, on the device `args` ask for, in the layout training
    leaves a model in (so that it computes exactly what the one just trained did)."""
    s = setting(**_data_args(args))
    net = s.skeleton(args.get("seed", 0))
    net.load_state_dict(kept.tensors)
    net = net.to(devices.resolve(args.get("device", "auto")),
                 memory_format=torch.channels_last).eval()
    return Victim(net, kept.record, s.train, s.test, args.get("target", 0), s.poisoned,
                  s.backdoor, s.original, args)


def _sets(args: dict) -> tuple[data.ImageSet, data.ImageSet]:
    p = config.profile(args.get("profile", "quick"), args["dataset"])
    return datasets(args["dataset"], args.get("data_dir"), p.n_train, p.n_test,
                    args.get("seed", 0))


def sizes(args: dict) -> tuple[int, int]:
    """The numbers of training and test images of the victim asked for by `args` (without
    training it)."""
    train_set, test_set = _sets(args)
    return len(train_set), len(test_set)


def n_classes(args: dict) -> int:
    """The number of classes of the victim asked for by `args` (without training it)."""
    return len(_sets(args)[0].classes)


def _victim_work(args: dict) -> float:
    p = config.profile(args.get("profile", "quick"), args["dataset"])
    return sizes(args)[0] * (args.get("recipe") or p.recipe).epochs


def _victim_name(args: dict) -> str:
    attack = args.get("attack")
    name = "clean" if attack is None else getattr(attack, "name", attack)
    return (f"victim {name}" + (f" {args.get('ratio', 0.1):g}" if attack is not None else "")
            + f" seed {args.get('seed', 0)}")


@step("victim", read=_read_victim, work=_victim_work, describe=_victim_name,
      known=lambda args: {"asked": args}, memo=8, signature=victim,
      check=lambda args: checked(**_data_args(args)))
def trained_victim(**args) -> Kept:
    """The victim `victim(**args)` gives, trained: keeps its weights, training history and
    scores."""
    s = setting(**_data_args(args))
    seed, device = args.get("seed", 0), devices.resolve(args.get("device", "auto"))
    net = s.skeleton(seed)
    label = s.poisoned.attack.name if s.poisoned else "clean"
    history = train(net, s.train, s.recipe, seed=seed, device=device,
                    progress=args.get("progress", True), desc=f"{label} {s.model_name}",
                    per_batch=s.poisoned.per_batch if s.poisoned else None)
    return Kept(net.state_dict(), {"recipe": asdict(s.recipe), "history": asdict(history),
                                   "dataset_source": s.train.source, "metrics": s.score(net)})


def injected(base: Victim, patch: Patch, *, rate: float = 0.01, target: int = 0,
             recipe: config.Recipe, seed: int = 0, zoo: Zoo | None = None,
             progress: bool = True) -> Victim:
    """`base`'s model (a clean one) fine-tuned on its training set by `recipe`, each image of
    each batch getting `patch` and label `target` with probability `rate`, as MESA injects its
    backdoors. No image is poisoned for good, so `poison_indices` is empty."""
    if base.poisoned is not None:
        raise config.ParameterError(f"base is a {base.attack.name} victim; injected() starts "
                                    f"from a clean model (victim(..., attack=None))")
    config.check_range("rate", rate, low=0, high=1, low_open=True)
    config.check_range("target", target, low=0, high=len(base.test.classes) - 1, integer=True)
    device = models.model_device(base.model)
    per_batch = patch.per_batch(rate, target, base.train.mean, base.train.std)
    spec = {"from": base.card["key"], "attack": patch.settings(), "rate": rate, "target": target,
            "recipe": asdict(recipe), "seed": seed, "code": code_digest(__name__)}

    def fit():
        model = copy.deepcopy(base.model)
        history = train(model, base.train, recipe, seed=seed, device=device, progress=progress,
                        desc=f"inject {patch.name}", per_batch=per_batch)
        return model.state_dict(), {"history": asdict(history), "device": devices.name(device)}

    card, weights = (zoo or Zoo()).fetch(spec, fit)
    model = copy.deepcopy(base.model)
    model.load_state_dict(weights)
    poisoned = Poisoned(base.train, torch.empty(0, dtype=torch.long), target, patch, per_batch)
    return Victim(model.to(device).eval(), card, base.train, base.test, target, poisoned,
                  patch.triggered(base.test, target), base.original)
