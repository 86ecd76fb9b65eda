import pytest
import torch

from reprolib.attacks import attack
from reprolib.config import ParameterError
from reprolib import jobs
from reprolib.victims import trained_victim, victim

SMOKE = dict(profile="smoke", device="cpu", progress=False)


def test_a_victim_is_trained_once_and_its_clean_twin_shares_the_data():
    before = len(jobs.COMPUTED)
    v = victim("fashion-mnist", attack="badnets", **SMOKE)
    assert victim("fashion-mnist", attack="badnets", **SMOKE) is v       # the last eight, kept
    trained_victim.recent.clear()                                         # as a new process
    again = victim("fashion-mnist", attack="badnets", **SMOKE)
    assert jobs.COMPUTED[before:] == [v.card["key"]] and again is not v   # trained once, read
    assert not v.model.training and not again.model.training
    assert all(torch.equal(p, q) for p, q in zip(v.model.state_dict().values(),
                                                  again.model.state_dict().values()))
    assert again.scores() == v.scores() == v.card["metrics"]
    asked = v.card["spec"]["args"]
    assert (asked["dataset"], asked["attack"], asked["ratio"], asked["target"]) == (
        "fashion-mnist", "badnets", 0.1, 0)
    clean = victim("fashion-mnist", attack=None, **SMOKE)
    assert clean.backdoor is None and len(clean.poison_indices) == 0 and clean.attack is None
    assert set(clean.scores()) == {"ca"} and set(v.scores()) == {"ca", "asr", "ra"}
    differs = (v.train.images != clean.train.images).flatten(1).any(1).nonzero().flatten()
    assert torch.equal(differs, v.poison_indices) and len(differs) == 200
    assert torch.equal(v.test.images, clean.test.images)
    assert len(v.backdoor) == int((v.test.labels != 0).sum())
    defender = v.clean_subset(500, seed=1)
    assert len(defender) == 500 and torch.equal(defender.images, v.clean_subset(500, 1).images)
    untouched = clean.train.images[~torch.isin(torch.arange(2000), v.poison_indices)]
    assert (defender.images[:, None] == untouched[None]).flatten(2).all(2).any(1).all()
    with pytest.raises(ParameterError, match="n=1801"):
        v.clean_subset(1801)


def test_the_zoo_key_covers_the_per_batch_noise_of_wanet():
    noisy = victim("fashion-mnist", attack="wanet", **SMOKE)
    plain = victim("fashion-mnist", attack="wanet", cross_ratio=0, **SMOKE)
    assert len(noisy.poisoned.cross) == 400 and len(plain.poisoned.cross) == 0
    assert torch.equal(noisy.train.images, plain.train.images)   # same stored data ...
    assert noisy.card["key"] != plain.card["key"]                  # ... not the same model
    assert not torch.equal(noisy.model.conv1.weight, plain.model.conv1.weight)


def test_victim_parameters_are_checked_before_training():
    for kwargs, message in [
            ({"attack": "blended", "alpha": 2}, "alpha=2"),
            ({"attack": None, "alpha": 0.1}, "attack=None"),
            ({"attack": attack("sig"), "delta": 3}, "set them on the object"),
            ({"model": "vgg"}, "model='vgg' is not allowed"),
            ({"profile": "fast"}, "profile='fast'"),
            ({"attack": "badnets", "target": 12}, "target=12")]:
        with pytest.raises(ParameterError, match=message):
            victim("fashion-mnist", **{**SMOKE, **kwargs})


def test_a_balanced_clean_subset_has_equal_classes_and_no_poison():
    v = victim("fashion-mnist", attack="badnets", **SMOKE)
    subset = v.clean_subset(100, seed=0, balanced=True)
    assert torch.bincount(subset.labels, minlength=10).tolist() == [10] * 10
    poison = v.train.images[v.poison_indices]
    assert not (subset.images[:, None] == poison[None]).flatten(2).all(2).any()
    with pytest.raises(ParameterError, match="n=105 is not allowed with balanced=True"):
        v.clean_subset(105, balanced=True)


def test_a_clean_label_attack_that_took_a_whole_class_leaves_the_originals_to_the_defender():
    train = victim("fashion-mnist", attack=None, **SMOKE).original
    whole = int((train.labels == 0).sum())
    v = victim("fashion-mnist", attack="sig", ratio=whole / len(train), **SMOKE)
    assert len(v.poison_indices) == whole
    with pytest.raises(ParameterError, match="untouched=False draws from the clean originals"):
        v.clean_subset(100, balanced=True)
    subset = v.clean_subset(100, seed=0, balanced=True, untouched=False)
    assert torch.bincount(subset.labels, minlength=10).tolist() == [10] * 10
    originals = v.original.images[v.poison_indices]
    poisoned = v.train.images[v.poison_indices]
    ours = subset.images[subset.labels == 0]
    assert (ours[:, None] == originals[None]).flatten(2).all(2).any(1).all()
    assert not (ours[:, None] == poisoned[None]).flatten(2).all(2).any()


def test_the_victims_own_scores_are_measured_once_and_others_each_time(monkeypatch):
    from reprolib import victims
    from reprolib.train import evaluate
    v = victim("fashion-mnist", attack="badnets", **SMOKE)
    calls = []
    monkeypatch.setattr(victims, "evaluate", lambda *a: calls.append(a[0]) or evaluate(*a))
    first = v.scores()
    first["ca"] = -1.0                                      # the caller's copy, not the cache
    assert v.scores() == v.scores(v.model) == evaluate(v.model, v.test, v.backdoor, 0)
    assert calls == [v.model]
    other = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(1024, 10))
    v.scores(other), v.scores(other)
    assert calls == [v.model, other, other]


def test_a_victim_reads_its_data_from_the_data_dir_it_is_asked_with(cifar_mini):
    """`data_dir` is not keyed, but the training must still read the data from it."""
    with pytest.warns(UserWarning, match="training images"):
        v = victim("cifar10", attack="badnets", data_dir=str(cifar_mini), **SMOKE)
    assert v.train.classes[0] == "airplane" and "data_dir" not in v.card["spec"]["args"]
    assert v.card["dataset_source"] == "official batches"        # the copy, in the model card
