import pytest
import torch
import torch.nn.functional as F

from reprolib.attacks.feature_collision import feature_collision
from reprolib.attacks.gradient_matching import gradient_matching
from reprolib.attacks.targeted import draw_target, hits, mislabelled_copies, top_two
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


def test_the_copies_move_the_target_and_leave_the_rest_of_the_test_set(fashion, tmp_path,
                                                                       train_seed, expect):
    train, test = fashion[0].sample(4000, train_seed), fashion[1].sample(500, train_seed)
    target, label = test.images[0], int(test.labels[0])
    attacker = (label + 1) % 10
    t = mislabelled_copies(train, target, label, attacker, copies=100)
    recipe = Recipe(epochs=4, batch_size=64, lr=0.2, schedule="onecycle", nesterov=True,
                    augment=False)
    zoo = Zoo(tmp_path)
    clean, _ = trained("small_cnn", train, recipe, seed=train_seed, progress=False, zoo=zoo)
    attacked, _ = trained("small_cnn", t.data, recipe, seed=train_seed, progress=False, zoo=zoo)
    rest = test.subset(torch.arange(1, 500))
    assert predict(attacked, test.subset(torch.tensor([0])))[0] == attacker
    assert predict(clean, test.subset(torch.tensor([0])))[0] != attacker
    agree = (predict(attacked, rest) == predict(clean, rest)).float().mean()
    expect("agreement on the rest", agree.item(), above=0.85)


def _changed_within(before, after, eps):
    diff = (after.images.int() - before.images.int()).abs().flatten(1)
    return diff.amax(1).max().item() <= eps, diff.amax(1).nonzero().flatten()


def test_feature_collision_moves_only_its_poisons_and_their_features_to_the_target(tiny_badnets,
                                                                                   expect):
    t = tiny_badnets
    pool, target, label = t.defender, t.test.images[0], int(t.test.labels[0])
    attacker = (label + 1) % 10
    atk = feature_collision(t.model, pool, target, label, attacker, n=10, steps=100, seed=3)
    assert len(atk.indices) == 10 and (pool.labels[atk.indices] == attacker).all()
    assert torch.equal(atk.data.labels, pool.labels)                 # clean-label
    within, changed = _changed_within(pool, atk.data, 8)
    assert within and set(changed.tolist()) <= set(atk.indices.tolist()) and len(changed) > 0
    with torch.no_grad():
        goal = t.model.features(pool.normalize(target[None]))
        far = (t.model.features(pool.normalize(pool.images[atk.indices])) - goal).norm(dim=1)
        near = (t.model.features(pool.normalize(atk.data.images[atk.indices])) - goal).norm(dim=1)
    # the 8/255 budget binds: 300 steps moved them no nearer than 100 (0.70-0.80 over seeds)
    expect("poisons' feature distance after / before", (near.mean() / far.mean()).item(), below=0.9)
    with pytest.raises(ParameterError, match="n=10000 is out of range"):
        feature_collision(t.model, pool, target, label, attacker, n=10000)


def test_gradient_matching_aligns_the_poisons_gradient_with_the_targets(tiny_badnets, expect):
    t = tiny_badnets
    train, target, label = t.defender, t.test.images[1], int(t.test.labels[1])
    attacker = (label + 1) % 10
    atk = gradient_matching(t.model, train, target, label, attacker, budget=0.04, steps=150,
                            augment=False, seed=0)
    assert len(atk.indices) == 20 and (train.labels[atk.indices] == attacker).all()
    assert torch.equal(atk.data.labels, train.labels)
    within, changed = _changed_within(train, atk.data, 8)
    assert within and set(changed.tolist()) <= set(atk.indices.tolist()) and len(changed) > 0
    params = list(t.model.parameters())

    def gradient(images, labels):
        loss = F.cross_entropy(t.model(train.normalize(images)), labels)
        return torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)])

    goal = gradient(target[None], torch.tensor([attacker]))
    labels = train.labels[atk.indices]
    before = F.cosine_similarity(gradient(train.images[atk.indices], labels), goal, dim=0)
    after = F.cosine_similarity(gradient(atk.data.images[atk.indices], labels), goal, dim=0)
    expect("gradient cosine gain", (after - before).item(), above=0.05)
    with pytest.raises(ParameterError, match="budget=0.5 gives 250 poisons"):
        gradient_matching(t.model, train, target, label, attacker, budget=0.5)


def test_the_top_two_classes_are_the_models_two_highest_logits(tiny_badnets):
    t = tiny_badnets
    ranked = top_two(t.model, t.test)
    with torch.no_grad():
        logits = t.model(t.test.normalize(t.test.images))
    assert ranked.shape == (len(t.test), 2)
    assert torch.equal(ranked[:, 0], logits.argmax(1))
    assert (logits.gather(1, ranked[:, 1:]) <= logits.gather(1, ranked[:, :1])).all()
    assert (ranked[:, 0] != ranked[:, 1]).all()


def test_a_draw_is_a_correctly_classified_image_and_an_attacker_class_by_pairing():
    ranked = torch.tensor([[3, 1], [2, 0], [1, 4], [0, 2]])
    labels = torch.tensor([3, 1, 1, 0])                 # image 1 is misclassified
    for seed in range(20):
        idx, true, attacker = draw_target(ranked, labels, 5, pairing="nearest", seed=seed)
        assert idx != 1 and true == labels[idx] and attacker == ranked[idx, 1]
        idx, true, attacker = draw_target(ranked, labels, 5, pairing="random", seed=seed)
        assert idx != 1 and true == labels[idx] and attacker != true and 0 <= attacker < 5
    assert draw_target(ranked, labels, 5, pairing="random", seed=4) == \
        draw_target(ranked, labels, 5, pairing="random", seed=4)
    attackers = {draw_target(ranked, labels, 5, pairing="random", seed=s)[2] for s in range(60)}
    assert len(attackers) == 5                          # every class can be drawn (3 targets)
    with pytest.raises(ParameterError, match="pairing='closest' is not allowed"):
        draw_target(ranked, labels, 5, pairing="closest", seed=0)
    with pytest.raises(ParameterError, match="classifies no test image correctly"):
        draw_target(ranked, torch.tensor([4, 4, 4, 4]), 5, pairing="nearest", seed=0)


def test_a_hit_is_the_model_sending_the_target_to_the_attackers_class(tiny_badnets):
    t = tiny_badnets
    pred = predict(t.model, t.test)
    assert hits(t.model, t.test, 7, int(pred[7]))
    assert not hits(t.model, t.test, 7, (int(pred[7]) + 1) % 10)
