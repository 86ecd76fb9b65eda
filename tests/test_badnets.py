import pytest
import torch

from reprolib.attacks import badnets
from reprolib.config import ParameterError
from reprolib.data import ImageSet


def toy(n=200):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 200, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    return ImageSet(images, torch.arange(n) % 10, tuple("abcdefghij"), (0.5,) * 3, (0.25,) * 3)


def test_trigger_is_the_bottom_right_3x3_white_square():
    images = toy(4).images
    stamped = badnets.stamp(images)
    changed = (stamped != images).any(dim=(0, 1))
    assert changed.nonzero().tolist() == [[r, c] for r in (29, 30, 31) for c in (29, 30, 31)]
    assert (stamped[..., 29:, 29:] == 255).all()
    assert torch.equal(images, toy(4).images)            # the input is not modified


def test_poison_indices_are_exactly_the_changed_images():
    clean = toy()
    poisoned, indices = badnets.poison(clean, ratio=0.1, target=0, seed=1)
    assert len(indices) == round(0.1 * 200)
    changed = ((poisoned.images != clean.images).flatten(1).any(1)
               | (poisoned.labels != clean.labels)).nonzero().flatten()
    assert torch.equal(changed, indices)
    assert (poisoned.labels[indices] == 0).all() and (clean.labels[indices] != 0).all()
    again, same = badnets.poison(clean, 0.1, 0, seed=1)
    assert torch.equal(same, indices) and torch.equal(again.images, poisoned.images)


def test_triggered_test_set_excludes_the_target_class():
    test = toy(50)
    backdoor = badnets.triggered(test, target=3)
    assert len(backdoor) == 45 and (backdoor.labels != 3).all()
    assert (backdoor.images[..., 29:, 29:] == 255).all()


def test_bad_parameters():
    with pytest.raises(ParameterError, match="ratio=1.5"):
        badnets.poison(toy(), 1.5, 0, 0)
    with pytest.raises(ParameterError, match="target=10"):
        badnets.poison(toy(), 0.1, 10, 0)
    with pytest.raises(ParameterError, match="only 180 are outside the target class"):
        badnets.poison(toy(), 0.95, 0, 0)
