import pytest
import torch

from reprolib import models
from reprolib.config import ParameterError
from reprolib.data import ImageSet
from reprolib.defenses import linf_pruning as lp
from reprolib.attacks import attack
from reprolib.gradcam import cams, gradcam, mass_in, trigger_cells


def test_the_three_norms_of_a_hand_made_map():
    maps = torch.zeros(1, 2, 2, 2)
    maps[0, 0] = torch.tensor([[3.0, -4.0], [0.0, 0.0]])
    maps[0, 1] = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    n = lp.channel_norms(maps)
    assert n["l1"].tolist() == [[7.0, 4.0]]
    assert n["l2"].tolist() == [[5.0, 2.0]]
    assert n["linf"].tolist() == [[4.0, 1.0]]


def test_a_local_spike_leads_linf_and_a_diffuse_rise_leads_l1():
    clean = torch.rand(50, 8, 4, 4, generator=torch.Generator().manual_seed(0))
    triggered = clean.clone()
    triggered[:, 3, 3, 3] += 2.0          # one strong peak: n∞ rises by up to 2, n₁ by 2
    triggered[:, 5] += 0.3                # a weak rise everywhere: n₁ rises by 4.8, n∞ by 0.3
    assert lp.rank_by_change(clean, triggered, "linf")[0] == 3
    assert lp.rank_by_change(clean, triggered, "l1")[0] == 5
    assert lp.rank_mean_gap(clean, triggered)[0] == 5
    with pytest.raises(ParameterError, match="norm='l3'"):
        lp.rank_by_change(clean, triggered, "l3")


def test_fine_pruning_ranks_dormant_channels_first_and_random_is_a_permutation():
    clean = torch.ones(10, 4, 2, 2)
    clean[:, 2] = 0.0
    clean[:, 0] = 0.5
    assert lp.rank_dormant(clean).tolist()[:2] == [2, 0]
    order = lp.rank_random(64, seed=1)
    assert sorted(order.tolist()) == list(range(64))
    assert torch.equal(order, lp.rank_random(64, seed=1))


def _maps_of(model, x):
    got = []
    hook = model.avgpool.register_forward_hook(lambda mod, args, out: got.append(args[0]))
    model(x)
    hook.remove()
    return got[0]


def test_pruning_a_channel_zeroes_exactly_that_channels_output():
    model = models.build("small_cnn", 10, 1, seed=0).eval()
    x = torch.randn(6, 1, 32, 32)
    pruned = lp.prune(model, [5, 17])
    before, after = _maps_of(model, x), _maps_of(pruned, x)
    assert before[:, [5, 17]].abs().sum() > 0
    assert torch.all(after[:, [5, 17]] == 0)
    others = [k for k in range(64) if k not in (5, 17)]
    assert torch.equal(after[:, others], before[:, others])
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), pruned.parameters()))
    with pytest.raises(ParameterError, match="channels are 0..63"):
        lp.prune(model, [64])


def test_the_pooled_shortcut_predicts_what_the_pruned_model_predicts():
    model = models.build("small_cnn", 10, 1, seed=0).eval()
    images = torch.randint(0, 256, (40, 1, 32, 32), dtype=torch.uint8)
    data = ImageSet(images, torch.arange(40) % 10, tuple("abcdefghij"), (0.2,), (0.3,))
    pooled = lp.Pooled.of(model, data)
    x = data.normalize(images)
    with torch.no_grad():
        for chosen in ([], [0, 1, 2], list(range(0, 64, 2))):
            full = lp.prune(model, chosen)(x).argmax(1)
            assert torch.equal(lp.pruned_predictions(model, pooled, torch.tensor(chosen,
                               dtype=torch.long)), full)


def test_the_sweep_grid_and_both_stopping_rules():
    assert lp.counts_up_to(64) == list(range(33))
    assert lp.counts_up_to(512)[:3] == [0, 5, 10] and lp.counts_up_to(512)[-1] == 256
    curve = {"n": [0, 1, 2, 3, 4], "ca": [0.90, 0.895, 0.885, 0.86, 0.80],
             "asr": [0.99, 0.6, 0.04, 0.01, 0.0]}
    assert lp.stop_at_asr(curve) == 2
    assert lp.stop_at_asr({**curve, "asr": [1.0] * 5}) is None
    assert lp.stop_at_ca_drop(curve) == 2
    with pytest.raises(ParameterError, match="needs n=0"):
        lp.stop_at_ca_drop({"n": [1, 2], "ca": [0.9, 0.9]})


def test_gradcam_of_a_pooled_linear_head_is_the_weighted_map():
    # logit_c = w_c · mean(A) + b, so ∂logit_c/∂A_k = w_ck / HW everywhere
    model = models.build("small_cnn", 10, 1, seed=0).eval()
    x = torch.randn(4, 1, 32, 32)
    classes = torch.tensor([0, 3, 3, 9])
    cam = gradcam(model, x, classes, upsample=False)
    with torch.no_grad():
        maps = _maps_of(model, x)
    w = model.head.weight[classes][:, :, None, None]
    expected = torch.relu((w * maps).sum(1)) / 16
    assert torch.allclose(cam, expected, atol=1e-5)
    assert gradcam(model, x, classes).shape == (4, 32, 32)


def test_mass_in_a_region():
    cam = torch.zeros(2, 4, 4)
    cam[0, 3, 3], cam[0, 0, 0] = 3.0, 1.0
    region = torch.zeros(4, 4, dtype=torch.bool)
    region[2:, 2:] = True
    share = mass_in(cam, region)
    assert share[0] == 0.75 and torch.isnan(share[1])


def test_rankings_and_their_top_k_overlap():
    clean = torch.rand(20, 6, 3, 3, generator=torch.Generator().manual_seed(0))
    synthetic, real = clean.clone(), clean.clone()
    synthetic[:, 4, 0, 0] += 5
    real[:, 4, 1, 1] += 5
    real[:, 2, 1, 1] += 4
    orders = lp.rankings(clean, synthetic, real, seed=0)
    assert list(orders) == list(lp.RANKINGS)
    assert all(sorted(o.tolist()) == list(range(6)) for o in orders.values())
    assert orders["linf"][0] == 4 and orders["oracle_linf"][:2].tolist() == [4, 2]
    assert "oracle_linf" not in lp.rankings(clean, synthetic)
    assert lp.top_k_overlap(orders["linf"], orders["oracle_linf"], 1) == 1.0
    assert lp.top_k_overlap(torch.tensor([0, 1, 2]), torch.tensor([1, 2, 0]), 2) == 1 / 3


def test_looking_at_a_model_leaves_its_mode_and_batchnorm_statistics_alone():
    model = models.build("small_cnn", 10, 1, seed=0).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.randint(0, 256, (8, 1, 32, 32), dtype=torch.uint8)
    data = ImageSet(images, torch.arange(8), tuple("abcdefghij"), (0.2,), (0.3,))
    lp.feature_maps(model, data)
    gradcam(model, data.normalize(images), torch.zeros(8, dtype=torch.long))
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_cams_are_gradcam_of_the_models_own_predictions(tiny_badnets):
    t = tiny_badnets
    images = t.test.images[:6]
    x = t.test.normalize(images)
    with torch.no_grad():
        pred = t.model(x).argmax(1)
    assert torch.allclose(cams(t.model, images, t.test.normalize), gradcam(t.model, x, pred))
    coarse = cams(t.model, images, t.test.normalize, upsample=False)
    assert coarse.shape == (6, 4, 4)


def test_the_trigger_cells_are_where_the_trigger_writes():
    badnets = attack("badnets")                       # a 3×3 patch in the bottom-right corner
    cells = trigger_cells(badnets, 1, (32, 32), (4, 4))
    assert cells.sum() == 1 and cells[3, 3]
    assert trigger_cells(badnets, 1, (32, 32), (32, 32)).sum() == 9
    assert trigger_cells(attack("blended"), 1, (32, 32), (4, 4)).all()
