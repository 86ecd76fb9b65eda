import pytest
import torch

from reprolib.config import ParameterError
from reprolib.defenses import neural_cleanse as nc
from reprolib.train import evaluate


def test_the_anomaly_index_flags_only_an_abnormally_small_trigger():
    l1 = torch.tensor([40.0, 42, 38, 45, 41, 39, 44, 43, 3, 90])
    index = nc.anomaly_index(l1)
    assert index[8] > 2 and index.argmax() == 8
    assert index[9] < 0            # a large trigger is not suspicious
    rev = nc.Reversal(torch.arange(10), torch.zeros(10, 1, 4, 4), torch.zeros(10, 1, 4, 4), l1,
                      torch.ones(10))
    assert rev.flagged == [8] and rev.suspect == 8


def test_reverse_checks_its_labels(fashion):
    _, test = fashion
    with pytest.raises(ParameterError, match="labels=\\[10\\]"):
        nc.reverse(torch.nn.Linear(1, 1), test.sample(10, 0), [10])


def test_neural_cleanse_finds_a_planted_corner_trigger(tiny_badnets, expect):
    model, test, defender = tiny_badnets.model, tiny_badnets.test, tiny_badnets.defender
    expect("ASR", evaluate(model, test, tiny_badnets.backdoor, 0)["asr"], above=0.95)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    model.zero_grad(set_to_none=True)
    rev = nc.reverse(model, defender, [0], steps=600, progress=False)
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    mask = rev.masks[0, 0]
    expect("reversed trigger's success", rev.success[0].item(), above=0.98)  # the search aims at 0.99
    # The 3×3 trigger sits in the bottom-right cell of the 4×4 map the model pools over, an
    # 8×8 pixel square that holds 6 % of the image; most of the reversed mask must be there.
    expect("mask mass in the trigger's cell", (mask[-8:, -8:].sum() / mask.sum()).item(), above=0.5)
    stamped = rev.stamp(test.images, 0)
    expect("CA with the reversed trigger", evaluate(model, test.with_images(stamped), None)["ca"],
           below=0.2)


def test_the_reference_cost_is_held_at_zero_until_the_trigger_first_succeeds(tiny_badnets):
    model, defender = tiny_badnets.model, tiny_badnets.defender
    # label 0 is the backdoor's: its trigger works within a few rounds; label 5 takes longer
    held = nc.reverse(model, defender, [0, 5], steps=400, round_steps=10, patience=3,
                      hold_cost=True, progress=False)
    costs = held.costs
    assert costs.shape == (40, 2) and (costs[0] == 0).all()
    for label in range(2):
        nonzero = costs[:, label].nonzero().flatten()
        assert len(nonzero), f"label {label}'s trigger never worked"
        first = int(nonzero[0])
        assert first >= 2                          # at least `patience` rounds that worked
        assert costs[first, label] == pytest.approx(1e-3)   # released at init_cost
        assert (costs[:first, label] == 0).all()
    assert int(costs[:, 1].nonzero()[0]) > int(costs[:, 0].nonzero()[0])
    plain = nc.reverse(model, defender, [0, 5], steps=20, round_steps=10, progress=False)
    assert (plain.costs[0] == pytest.approx(1e-3))


def test_the_reference_budget_stops_early_and_counts_epochs():
    assert nc.budget(600, 1000) == {"steps": 600, "batch_size": 32}
    assert nc.budget(None, 1000) == {"steps": 32000, "batch_size": 32, "round_steps": 32,
                                     "hold_cost": True, "early_stop": 25}


def test_early_stopping_ends_the_search_once_the_mask_stops_shrinking(tiny_badnets):
    rev = nc.reverse(tiny_badnets.model, tiny_badnets.defender, [0], steps=3000, round_steps=5,
                     patience=2, early_stop=4, progress=False)
    rounds = len(rev.costs)
    assert rounds < 600                     # stopped before its budget
    assert rev.success[0] >= 0.99
    up, down = (rev.costs[1:, 0] > rev.costs[:-1, 0]), (rev.costs[1:, 0] < rev.costs[:-1, 0])
    assert up.any() and down.any()          # only after the cost went both ways


def test_unlearning_the_reversed_trigger_lowers_the_asr_and_leaves_the_original(tiny_badnets,
                                                                                 expect):
    from reprolib.config import Recipe
    t = tiny_badnets
    before = evaluate(t.model, t.test, t.backdoor, 0)
    weights = {k: v.clone() for k, v in t.model.state_dict().items()}
    rev = nc.reverse(t.model, t.defender, [0], steps=300, progress=False)
    recipe = Recipe(epochs=5, batch_size=64, lr=0.01, augment=False)
    fixed = nc.unlearn(t.model, t.defender, rev, recipe, labels=[0], progress=False)
    after = evaluate(fixed, t.test, t.backdoor, 0)
    expect("ASR before", before["asr"], above=0.95)
    expect("ASR drop", before["asr"] - after["asr"], above=0.5)
    expect("CA drop", before["ca"] - after["ca"], below=0.1)
    assert all(torch.equal(weights[k], v) for k, v in t.model.state_dict().items())
    # nothing flagged, nothing to unlearn: an unchanged copy
    same = nc.unlearn(t.model, t.defender, rev, recipe, labels=[], progress=False)
    assert same is not t.model
    assert all(torch.equal(weights[k], v) for k, v in same.state_dict().items())
    # the control: the same fine-tuning on clean images only removes much less
    from reprolib.defenses.fine_tuning import fine_tune
    plain = evaluate(fine_tune(t.model, t.defender, recipe, progress=False), t.test, t.backdoor, 0)
    expect("ASR after plain fine-tuning − after unlearning", plain["asr"] - after["asr"], above=0.3)
