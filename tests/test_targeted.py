import pytest
import torch

from reprolib.attacks.targeted import mislabelled_copies
from reprolib.config import ParameterError, Recipe
from reprolib.train import predict, trained
from reprolib.zoo import Zoo


def test_mislabelled_copies_add_only_the_reported_images(fashion):
    train, test = fashion[0].sample(1000, 0), fashion[1]
    target, label = test.images[0], int(test.labels[0])
    attacker = (label + 1) % 10
    t = mislabelled_copies(train, target, label, attacker, copies=30, seed=1)
    assert len(t.data) == 1030 and torch.equal(t.indices, torch.arange(1000, 1030))
    assert torch.equal(t.data.images[:1000], train.images)
    assert torch.equal(t.data.labels[:1000], train.labels)
    assert (t.data.labels[t.indices] == attacker).all()
    copies = t.data.images[t.indices]
    assert len(copies.flatten(1).unique(dim=0)) > 10                  # augmented, not one image
    # each copy is the target moved by at most 2 pixels, possibly mirrored: same ink, roughly
    ink = copies.flatten(1).float().sum(1)
    assert (ink <= target.float().sum() + 1).all() and (ink > 0.6 * target.float().sum()).all()
    with pytest.raises(ParameterError, match="attacker_class=3 is the target's own class"):
        mislabelled_copies(train, test.images[0], 3, 3)
    with pytest.raises(ParameterError, match="target must be one uint8 image"):
        mislabelled_copies(train, test.images[:2], label, attacker)


def test_the_copies_move_the_target_and_leave_the_rest_of_the_test_set(fashion, tmp_path):
    train, test = fashion[0].sample(4000, 0), fashion[1].sample(500, 0)
    target, label = test.images[0], int(test.labels[0])
    attacker = (label + 1) % 10
    t = mislabelled_copies(train, target, label, attacker, copies=50)
    recipe = Recipe(epochs=4, batch_size=64, lr=0.2, schedule="onecycle", nesterov=True,
                    augment=False)
    zoo = Zoo(tmp_path)
    clean, _ = trained("small_cnn", train, recipe, progress=False, zoo=zoo)
    attacked, _ = trained("small_cnn", t.data, recipe, progress=False, zoo=zoo)
    rest = test.subset(torch.arange(1, 500))
    assert predict(attacked, test.subset(torch.tensor([0])))[0] == attacker
    assert predict(clean, test.subset(torch.tensor([0])))[0] != attacker
    agree = (predict(attacked, rest) == predict(clean, rest)).float().mean()
    assert agree > 0.85, agree
