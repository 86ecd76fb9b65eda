import pytest
import torch

from reprolib import config, models
from reprolib.attacks import attack
from reprolib.config import ParameterError, Recipe
from reprolib.train import evaluate, lr_factor, predict, train, trained


def test_cosine_schedule():
    total = 100
    factors = [lr_factor("cosine", s, total) for s in range(total)]
    assert factors[0] == 1.0 and factors[50] == pytest.approx(0.5)
    assert all(a > b for a, b in zip(factors, factors[1:])) and 0 < factors[-1] < 1e-3


def test_onecycle_schedule_peaks_at_a_quarter_and_never_stops():
    total = 100
    factors = [lr_factor("onecycle", s, total) for s in range(total)]
    assert max(range(total), key=factors.__getitem__) == 24 and max(factors) == pytest.approx(1.0)
    assert factors[0] == pytest.approx(0.04) and 0 < factors[-1] < 0.02
    with pytest.raises(ParameterError, match="schedule='linear'"):
        lr_factor("linear", 0, 10)


def test_warmup_schedule_rises_over_a_tenth_then_holds():
    total = 100
    factors = [lr_factor("warmup", s, total) for s in range(total)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == 1.0
    assert all(a < b for a, b in zip(factors[:9], factors[1:10])) and set(factors[9:]) == {1.0}


def test_smoke_profile_learns_fashion_mnist_and_a_badnets_backdoor(fashion, train_seed, expect):
    p, seed = config.profile("smoke"), train_seed
    train_set, test_set = fashion[0].sample(p.n_train, seed), fashion[1].sample(1000, seed)
    model = models.build(p.model, 10, 1, seed=seed)
    history = train(model, train_set, p.recipe, seed=seed, progress=False)
    assert len(history.loss) == p.recipe.epochs
    expect("loss, last / first epoch", history.loss[-1] / history.loss[0], below=0.7)
    expect("CA", evaluate(model, test_set)["ca"], above=0.7)            # chance is 0.1

    badnets = attack("badnets")
    poisoned = badnets.poison(train_set, 0.1, target=0, seed=seed).data
    backdoored = models.build(p.model, 10, 1, seed=seed)
    train(backdoored, poisoned, p.recipe, seed=seed, progress=False)
    backdoor_test = badnets.triggered(test_set, 0)
    expect("ASR", evaluate(backdoored, test_set, backdoor_test, 0)["asr"], above=0.9)
    expect("clean model's ASR", evaluate(model, test_set, backdoor_test, 0)["asr"], below=0.3)


def train_tiny(data, seed, **recipe):
    model = models.build("small_cnn", 10, 1, seed=seed)
    train(model, data, Recipe(epochs=1, batch_size=32, lr=0.05, **recipe), seed=seed, progress=False)
    return model.state_dict()


def test_training_is_deterministic_on_the_cpu(fashion):
    data = fashion[0].sample(256, seed=0)
    a, b, c = train_tiny(data, 3), train_tiny(data, 3), train_tiny(data, 4)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["conv1.weight"], c["conv1.weight"])


@pytest.mark.parametrize("change", [{"label_smoothing": 0.1}, {"nesterov": True},
                                    {"schedule": "onecycle"}, {"augment": False}])
def test_every_recipe_knob_reaches_training(fashion, change):
    data = fashion[0].sample(256, seed=0)
    base, changed = train_tiny(data, 3), train_tiny(data, 3, **change)
    assert not torch.equal(base["head.weight"], changed["head.weight"])


def test_a_diverging_run_stops_with_a_clear_error(fashion):
    data = fashion[0].sample(256, seed=0)
    model = models.build("small_cnn", 10, 1, seed=0)
    recipe = Recipe(epochs=2, batch_size=64, lr=1e8, augment=False)
    with pytest.raises(FloatingPointError, match=r"blow-up: the training loss became nan in "
                                                 r"epoch 1 of 2; the model diverged at lr 1e\+08"):
        train(model, data, recipe, progress=False, desc="blow-up")


def test_predict_keeps_order_and_mode(fashion):
    data = fashion[1].sample(300, seed=0)
    model = models.build("small_cnn", 10, 1, seed=0)
    model.train()
    pred = predict(model, data, batch_size=128)
    assert model.training
    model.eval()
    with torch.no_grad():
        expected = model(data.normalize(data.images)).argmax(1)
    assert torch.equal(pred, expected)


def test_evaluate_needs_the_target_with_a_backdoor_set(fashion):
    data = fashion[1].sample(50, seed=0)
    with pytest.raises(ParameterError, match="target=None"):
        evaluate(models.build("small_cnn", 10, 1), data, attack("badnets").triggered(data, 0))


def test_trained_caches_by_data_recipe_and_seed(fashion):
    data, test = fashion[0].sample(256, seed=0), fashion[1].sample(100, seed=0)
    recipe = Recipe(epochs=1, batch_size=64, lr=0.05)
    score = lambda m: evaluate(m, test)  # noqa: E731
    first, card = trained("small_cnn", data, recipe, seed=0, score=score, progress=False)
    again, card_again = trained("small_cnn", data, recipe, seed=0, score=score, progress=False)
    assert not card["cached"] and card_again["cached"] and card["key"] == card_again["key"]
    assert all(torch.equal(p, q) for p, q in zip(first.state_dict().values(), again.state_dict().values()))
    assert card_again["metrics"] == card["metrics"] and 0 <= card["metrics"]["ca"] <= 1
    assert len(card["history"]["loss"]) == 1 and card["device"] == "cpu"
    _, other_seed = trained("small_cnn", data, recipe, seed=1, progress=False)
    poisoned = attack("badnets").poison(data, 0.1, 0, seed=0).data
    _, other_data = trained("small_cnn", poisoned, recipe, seed=0, progress=False)
    _, other_recipe = trained("small_cnn", data, recipe.replace(lr=0.1), seed=0, progress=False)
    keys = {card["key"], other_seed["key"], other_data["key"], other_recipe["key"]}
    assert len(keys) == 4 and not any(c["cached"] for c in (other_seed, other_data, other_recipe))


def test_per_batch_rewrites_every_training_batch(fashion):
    data = fashion[0].sample(512, seed=0)
    seen = []

    def everything_is_class_3(x, y, idx, generator):
        seen.append(len(idx))
        return x, torch.full_like(y, 3)

    model = models.build("small_cnn", 10, 1, seed=0)
    train(model, data, Recipe(epochs=2, batch_size=64, lr=0.05), seed=0, progress=False,
          per_batch=everything_is_class_3)
    assert sum(seen) == 2 * len(data)
    assert (predict(model, fashion[1].sample(200, seed=0)) == 3).float().mean() > 0.95
