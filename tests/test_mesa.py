import math

import pytest
import torch

from reprolib.config import ParameterError
from reprolib.defenses import mesa
from reprolib.train import evaluate
from reprolib.triggers import paste


def test_the_generator_maps_noise_to_triggers_in_the_unit_cube():
    g = mesa.Generator(hidden=32)
    out = g(torch.rand(8, mesa.NOISE, generator=torch.Generator().manual_seed(0)))
    assert out.shape == (8, mesa.TRIGGER) and (out > 0).all() and (out < 1).all()
    # every chunk of the noise reaches the output (the skip inputs)
    z = torch.rand(8, mesa.NOISE, requires_grad=True)
    g.eval()
    g(z).sum().backward()
    assert all(chunk.abs().sum() > 0 for chunk in z.grad.chunk(4, dim=1))
    with pytest.raises(ParameterError, match="noise=30 is not allowed; expected a multiple of 4"):
        mesa.Generator(noise=30)


def mine_estimate(dependent: bool, steps: int = 600) -> float:
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)

    def pairs(n):
        x = torch.rand(n, 4, generator=gen)
        y = (x + 0.05 * torch.randn(n, 4, generator=gen) if dependent
             else torch.rand(n, 4, generator=gen))
        return x, torch.rand(n, 4, generator=gen), y

    mine = mesa.Mine(mesa.Statistics(4, 4, hidden=64), lr=1e-3)
    for _ in range(steps):
        mine.step(*pairs(256))
    with torch.no_grad():
        return mesa.dv_bound(mine.t, *pairs(20000)).item()


def test_mine_is_near_zero_for_independent_inputs_and_positive_for_dependent_ones():
    independent, dependent = mine_estimate(False), mine_estimate(True)
    assert abs(independent) < 0.05, independent
    assert dependent > 1.0, dependent


def test_a_lower_beta_spreads_the_generated_triggers_more(tiny_badnets, expect):
    # α = 1 and lr 1e-3 (the code: 0.1, 2e-4) so that 150 steps let the entropy term act; the
    # trigger sits where this model's BadNets patch does
    t = tiny_badnets
    settings = mesa.Settings(betas=(0.9, 0.5), epochs=30, batch_size=100, hidden=64, alpha=1.0,
                             lr=1e-3)
    found = mesa.search(t.model, t.defender, 0, settings, location=(29, 29), seed=0)
    spread = {b: mesa.sample(g, 500).std(0).mean().item() for b, g in found.generators.items()}
    expect("spread at β 0.5 / at β 0.9", spread[0.5] / spread[0.9], above=1.2)
    assert found.hinge[0.9][-1] > found.hinge[0.9][0] and len(found.mi[0.5]) == 30
    # the β = 0.9 triggers work on the backdoored model: most triggered images go to the target
    triggers = mesa.sample(found.generators[0.9], len(t.test))
    x = t.test.normalize(t.test.images)
    xs = paste(x, triggers, 29, 29, torch.tensor(t.test.mean), torch.tensor(t.test.std))
    with torch.no_grad():
        expect("β 0.9 triggers' ASR", (t.model(xs).argmax(1) == 0).float().mean().item(), above=0.8)


def test_the_split_cuts_the_test_set_into_two_disjoint_parts(fashion):
    test = fashion[1].sample(1000, 0)
    defender, held_out = mesa.split(test)
    assert len(defender) == 800 and len(held_out) == 200
    joined = torch.cat([defender.images, held_out.images]).flatten(1)
    assert len(joined.unique(dim=0)) == len(test.images.flatten(1).unique(dim=0))
    assert torch.equal(mesa.split(test)[1].images, held_out.images)
    with pytest.raises(ParameterError, match="fraction=1 is out of range"):
        mesa.split(test, fraction=1)


class Constant(torch.nn.Module):
    def __init__(self, value):
        super().__init__()
        self.value = value
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, z):
        return torch.full((len(z), 9), self.value)


def test_the_ensemble_draws_each_trigger_from_one_sub_model_at_random():
    draw = mesa.mixture([Constant(0.0), Constant(0.5), Constant(1.0)])
    out = draw(3000, torch.Generator().manual_seed(0))
    assert out.shape == (3000, 9) and (out == out[:, :1]).all()        # whole triggers
    share = torch.stack([(out[:, 0] == v).float().mean() for v in (0.0, 0.5, 1.0)])
    assert torch.allclose(share, torch.full((3,), 1 / 3), atol=0.04)


def test_the_baseline_reverses_working_triggers_from_independent_starts(tiny_patch, expect):
    t = tiny_patch
    triggers = mesa.reverse(t.model, t.defender, 0, mesa.ReverseSettings(rounds=4))
    assert triggers.shape == (4, 9) and (triggers >= 0).all() and (triggers <= 1).all()
    assert len(triggers.unique(dim=0)) >= 2     # starts differ; two may end on the planted pattern
    works = [mesa.trigger_asr(t.model, t.held_out, mesa.fixed(x), 0) for x in triggers]
    expect("best reversed trigger's ASR", max(works), above=0.9)
    # a random 3×3 patch does not fire the backdoor
    noise = torch.rand(1, 9, generator=torch.Generator().manual_seed(0))
    expect("random patch's ASR", mesa.trigger_asr(t.model, t.held_out, mesa.fixed(noise), 0),
           below=0.3)


def test_retraining_on_the_true_trigger_removes_what_plain_fine_tuning_keeps(tiny_patch, expect):
    t = tiny_patch
    recipe = mesa.RETRAIN.replace(epochs=10, batch_size=64)
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    asr = {}
    for name, triggers in (("clean", None), ("ideal", mesa.fixed(t.patch.tensor()))):
        tuned = mesa.retrain(t.model, t.defender, triggers, recipe, rate=0.2)
        asr[name] = evaluate(tuned, t.held_out, t.backdoor, 0)["asr"]
    expect("ASR after clean fine-tuning", asr["clean"], above=0.8)
    expect("ASR after retraining on the true trigger", asr["ideal"], below=0.3)
    assert all(torch.equal(before[k], v) for k, v in t.model.state_dict().items())


def test_detection_singles_out_the_target_class(tiny_patch, expect):
    t = tiny_patch
    found = mesa.detect(t.model, t.defender, t.held_out,
                        mesa.Settings(betas=(0.9,), epochs=6, batch_size=64), classes=[0, 3, 7])
    expect("target class's score", found[0], above=0.3)
    expect("other classes' highest score", max(found[3], found[7]), below=0.1)
    with pytest.raises(ParameterError, match="give one β"):
        mesa.detect(t.model, t.defender, t.held_out, mesa.Settings(), classes=[0])


def test_the_entropy_estimate_matches_known_distributions_and_punishes_collapse():
    g = torch.Generator().manual_seed(0)
    uniform = torch.rand(2000, 9, generator=g)                        # h = 0
    gaussian = 0.1 * torch.randn(2000, 9, generator=g)                # h = 9/2 log(2πe·0.01)
    assert abs(mesa.entropy(uniform)) < 1.5        # biased up near the cube's faces, in 9-D
    assert abs(mesa.entropy(gaussian) - 4.5 * math.log(2 * math.pi * math.e * 0.01)) < 0.5
    # two far-apart points, slightly blurred: a large per-value spread, a tiny entropy
    two = (torch.rand(2000, 1, generator=g) < 0.5).float().expand(-1, 9) \
        + 1e-3 * torch.randn(2000, 9, generator=g)
    assert two.std(0).mean() > uniform.std(0).mean() and mesa.entropy(two) < mesa.entropy(uniform) - 20
    with pytest.raises(ParameterError, match="samples has 1 row"):
        mesa.entropy(uniform[:1])


def test_the_search_is_repeatable_and_leaves_the_callers_rng_alone(tiny_patch):
    t = tiny_patch
    settings = mesa.Settings(betas=(0.9,), epochs=1, batch_size=100, hidden=16)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = mesa.search(t.model, t.defender, 0, settings, seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    second = mesa.search(t.model, t.defender, 0, settings, seed=5)
    assert torch.equal(mesa.sample(first.generators[0.9], 10),
                       mesa.sample(second.generators[0.9], 10))
