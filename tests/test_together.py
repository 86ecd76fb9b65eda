"""Several trainings at once (`reprolib.together`): each model as it would be alone."""
import copy
import json

import pytest
import torch

from reprolib import book, data, jobs, models, together, victims
from reprolib.attacks import attack
from reprolib.config import ParameterError, Recipe
from reprolib.train import train
from reprolib.victims import trained_victim
from reprolib.zoo import Zoo
from test_book import project_copy

RECIPE = Recipe(epochs=2, batch_size=64, lr=0.05, schedule="onecycle", nesterov=True,
                augment=True, label_smoothing=0.1)


def in_float64(monkeypatch):
    """Batches give float64 inputs. In float32 a vmapped (grouped) convolution adds in another
    order than a plain one, about 1e-5 of a gradient, and training amplifies that; in float64
    the two computations agree to rounding, so any difference left is a difference in what was
    computed."""
    monkeypatch.setattr(data, "normalize", lambda images, mean, std: (
        images.double() / 255 - torch.as_tensor(mean, dtype=torch.float64).view(1, -1, 1, 1))
        / torch.as_tensor(std, dtype=torch.float64).view(1, -1, 1, 1))


@pytest.mark.parametrize("own_recipes", [True, False], ids=["own recipes", "one recipe"])
def test_models_trained_together_equal_the_models_trained_alone(fashion, monkeypatch,
                                                                own_recipes):
    in_float64(monkeypatch)
    sets = [fashion[0].sample(192, seed=s) for s in range(3)]
    wanet = attack("wanet")                  # a per-batch attack with a recipe of its own
    poisoned = wanet.poison(sets[2], 0.1, 0, 0)
    sets[2] = poisoned.data
    per_batch = [None, None, poisoned.per_batch]
    recipes = ([RECIPE, RECIPE.replace(lr=0.02, schedule="multistep", milestones=(1,),
                                       augment="flip"), wanet.recipe(RECIPE)]
               if own_recipes else RECIPE)
    nets = [models.build("small_cnn", 10, 1, seed=s).double() for s in (0, 1, 2)]
    alone = [copy.deepcopy(n) for n in nets]

    histories = together.train_together(nets, sets, recipes, seeds=[5, 6, 7],
                                        per_batch=per_batch, progress=False)
    for net, single, s, r, seed, step, history in zip(nets, alone, sets,
                                                      recipes if own_recipes else [RECIPE] * 3,
                                                      [5, 6, 7], per_batch, histories):
        expected = train(single, s, r, seed=seed, per_batch=step, progress=False)
        mine, theirs = net.state_dict(), single.state_dict()
        assert mine.keys() == theirs.keys()
        for k in mine:
            assert torch.allclose(mine[k], theirs[k], rtol=0, atol=1e-9), k
        assert history.loss == pytest.approx(expected.loss, abs=1e-9)
        assert history.accuracy == expected.accuracy
    # and the three did train, each its own way
    untrained = models.build("small_cnn", 10, 1, seed=0).double()
    assert not torch.equal(nets[0].state_dict()["conv1.weight"], untrained.conv1.weight)
    assert histories[0].loss != histories[1].loss


@pytest.mark.compile
def test_compiled_they_are_the_same_models(fashion, monkeypatch):
    in_float64(monkeypatch)
    sets = [fashion[0].sample(128, seed=s) for s in range(2)]
    recipe = Recipe(epochs=1, batch_size=64, lr=0.05, augment=True)
    eager = [models.build("small_cnn", 10, 1, seed=s).double() for s in (0, 1)]
    compiled = [copy.deepcopy(n) for n in eager]
    together.train_together(eager, sets, recipe, seeds=[0, 1], progress=False)
    together.train_together(compiled, sets, recipe, seeds=[0, 1], compile=True, progress=False)
    for a, b in zip(eager, compiled):
        for k, v in a.state_dict().items():          # the BatchNorm statistics too
            assert torch.allclose(v, b.state_dict()[k], rtol=0, atol=1e-9), k


def test_what_cannot_be_trained_together_is_named(fashion):
    small, large = fashion[0].sample(64, seed=0), fashion[0].sample(128, seed=0)
    cnn = [models.build("small_cnn", 10, 1, seed=s) for s in (0, 1)]
    with pytest.raises(ParameterError, match=r"sets: \[64, 128\] images; trained together"):
        together.train_together(cnn, [small, large], RECIPE, seeds=[0, 1], progress=False)
    with pytest.raises(ParameterError, match=r"seeds: 1 given for 2 nets"):
        together.train_together(cnn, [small, small], RECIPE, seeds=[0], progress=False)
    with pytest.raises(ParameterError, match=r"recipes: they differ in epochs, momentum; "
                                             r"trained together, models share their epochs, "):
        together.train_together(cnn, [small, small], [RECIPE, RECIPE.replace(epochs=3,
                                                                             momentum=0.8)],
                                seeds=[0, 1], progress=False)
    mixed = [cnn[0], models.build("small_cnn_wide", 10, 1, seed=0)]
    with pytest.raises(ParameterError, match=r"nets: .* share one architecture"):
        together.train_together(mixed, [small, small], RECIPE, seeds=[0, 1], progress=False)
    with pytest.raises(ParameterError, match="most"):
        together.groups([], most=0)


def victim_job(attack_name, **more):
    return trained_victim.job(**{"dataset": "fashion-mnist", "attack": attack_name,
                                 "profile": "smoke", "device": "cpu", "progress": False,
                                 "recipe": Recipe(epochs=1, batch_size=64, lr=0.05,
                                                  augment=False), **more})


def test_victims_are_grouped_by_architecture_recipe_and_size():
    asked = [victim_job(None), victim_job("badnets"),
             victim_job("sig", recipe=Recipe(epochs=2, batch_size=64)),   # more epochs: apart
             victim_job("wanet", attack_recipes=True),      # WaNet's own lr and augmentation
             victim_job("badnets", model="small_cnn_wide"), victim_job("blended")]
    grouped = [[job.describe() for job, _ in g] for g in together.groups(asked, most=3)]
    assert grouped == [["victim clean seed 0", "victim badnets 0.1 seed 0",
                        "victim wanet 0.1 seed 0"], ["victim blended 0.1 seed 0"],
                       ["victim sig 0.1 seed 0"], ["victim badnets 0.1 seed 0"]]


def test_victims_trained_together_are_what_the_chapter_reads(tmp_path, monkeypatch):
    asked = [victim_job(None), victim_job("badnets"), victim_job("blended")]
    computed = together.victims(asked[:1] + asked, most=2, device="cpu", progress=False)
    assert computed == [job.key for job in asked]
    assert together.victims(asked, device="cpu", progress=False) == []      # all kept now
    cards = [job.card() for job in asked]
    assert [c["trained_together"] for c in cards] == [2, 2, 1]

    before = list(jobs.COMPUTED)
    read = [trained_victim(**job.args) for job in asked]
    assert jobs.COMPUTED == before                    # the chapter trains none of them again
    assert [v.card["key"] for v in read] == [job.key for job in asked]
    for v, card in zip(read, cards):
        assert v.scores() == pytest.approx(card["metrics"])

    # the same victims trained one by one, in a zoo of their own: the same card, and (float32
    # rounding apart, which training amplifies) the same model
    monkeypatch.setenv("REPRO_CACHE_DIR", str(tmp_path / "alone"))
    for job, card in zip(asked, cards):
        alone = trained_victim(**job.args).card
        assert set(alone) == set(card) - {"trained_together"}
        assert alone["spec"] == card["spec"] and alone["recipe"] == card["recipe"]
        assert alone["metrics"]["ca"] == pytest.approx(card["metrics"]["ca"], abs=0.03)


def test_smoke_victims_trained_together_are_the_victims_trained_alone(tmp_path, monkeypatch):
    # the smoke profile's own victims (2000 images, 3 epochs, batch 64), in float64 (see
    # in_float64); BadNets' poisoned set beside the clean one
    in_float64(monkeypatch)
    skeleton = victims.Setting.skeleton
    monkeypatch.setattr(victims.Setting, "skeleton", lambda s, seed: skeleton(s, seed).double())
    asked = [trained_victim.job(dataset="fashion-mnist", attack=a, profile="smoke",
                                device="cpu", progress=False) for a in (None, "badnets")]
    assert together.victims(asked, device="cpu", progress=False) == [j.key for j in asked]
    stacked = [trained_victim(**job.args) for job in asked]
    monkeypatch.setenv("REPRO_CACHE_DIR", str(tmp_path / "alone"))
    for job, mine in zip(asked, stacked):
        alone = trained_victim(**job.args)
        assert alone.card["metrics"] == pytest.approx(mine.card["metrics"], abs=1e-12)
        theirs = alone.model.state_dict()
        for k, v in mine.model.state_dict().items():
            assert torch.allclose(v, theirs[k], rtol=0, atol=1e-9), k


@pytest.mark.notebook
def test_a_run_with_together_trains_its_victims_first_and_its_page_reads_them(tmp_path):
    root = project_copy(tmp_path)
    params = book.check_run(["attacks"], profile="smoke", dataset="fashion-mnist", device="cpu",
                            pairs=["attacks=['badnets', 'blended']"], root=root)
    book.run("attacks", profile="smoke", dataset="fashion-mnist", device="cpu",
             params=params["attacks"], root=root, progress=False, together=4)
    record = json.loads((root / "book" / "results" / "attacks.json").read_text())["record"]
    # the clean model and two victims, trained at once; the page computed none of them
    assert record["trained_before"]["victims"] == 3 and record["trained_before"]["at_once"] == 4
    victims = [c for c in Zoo().entries() if c["spec"]["job"] == "victim"]
    assert sorted(c["trained_together"] for c in victims) == [3, 3, 3]
    assert record["jobs"]["computed"] == record["jobs"]["jobs"] - 3
