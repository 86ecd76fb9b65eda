import pytest
import torch

from reprolib.attacks.patch import Patch
from reprolib.attacks.patterns import pattern
from reprolib.config import ParameterError, Recipe
from reprolib.victims import injected, victim


def blank(n, channels=1):
    return torch.zeros(n, channels, 32, 32, dtype=torch.uint8)


def windows(before, after):
    """Per image, the top-left corner of the 3×3 box that holds every changed pixel."""
    changed = (before != after).any(1)
    corners = []
    for c in changed:
        rows, cols = c.nonzero(as_tuple=True)
        corners.append((rows.min().item(), cols.min().item()))
        assert rows.max() - rows.min() <= 2 and cols.max() - cols.min() <= 2
    return corners


def test_each_image_gets_the_pattern_in_one_window_of_its_own():
    images = blank(200)
    out = Patch.black_and_white(511, channels=1).apply(images)        # all white: every pixel shows
    corners = windows(images, out)
    assert all((out[i, 0, r:r + 3, c:c + 3] == 255).all() and (out[i] > 0).sum() == 9
               for i, (r, c) in enumerate(corners))
    assert len(set(corners)) > 100                                     # places differ per image
    assert torch.equal(out, Patch.black_and_white(511, channels=1).apply(images))   # from seed
    assert not torch.equal(out, Patch.black_and_white(511, channels=1, seed=1).apply(images))


def test_a_pattern_lands_with_its_own_bits_on_every_channel():
    images = torch.full((5, 3, 32, 32), 128, dtype=torch.uint8)
    out = Patch.black_and_white(170, channels=3).apply(images)
    for i, (r, c) in enumerate(windows(images, out)):     # on grey, all 9 pixels change
        assert torch.equal(out[i, :, r:r + 3, c:c + 3], (pattern(170) * 255).to(torch.uint8).expand(3, 3, 3))


def test_random_patches_are_whole_grey_levels_and_differ_by_draw():
    a, b = Patch.random(3, draw=0), Patch.random(3, draw=1)
    assert len(a.values) == 27 and a != b and a == Patch.random(3, draw=0)
    levels = a.tensor() * 255
    assert torch.allclose(levels, levels.round(), atol=1e-4)


def test_bad_patches_are_refused_with_the_parameter_named():
    with pytest.raises(ParameterError, match="values has 8 entries; expected 9 per channel"):
        Patch(tuple([0.5] * 8))
    with pytest.raises(ParameterError, match=r"values=1.5 is out of range"):
        Patch(tuple([1.5] * 9))
    with pytest.raises(ParameterError, match="the patch has 1 channel"):
        Patch.black_and_white(1, channels=1).apply(blank(2, channels=3))


def test_the_injection_step_poisons_each_image_with_the_rate_at_one_place_per_batch():
    patch = Patch.black_and_white(511, channels=1)
    step = patch.per_batch(0.3, target=7, mean=(0.0,), std=(1.0,))
    x, y = torch.zeros(2000, 1, 32, 32), torch.zeros(2000, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    out, labels = step(x, y, torch.arange(2000), g)
    hit = (out != 0).flatten(1).any(1)
    assert 500 < hit.sum() < 700 and torch.equal(hit, labels == 7) and (labels[~hit] == 0).all()
    assert ((out[hit] == 1).flatten(1).sum(1) == 9).all()
    assert (out[hit] == 1).any(0).sum() == 9                   # the same window for the batch
    again, _ = patch.per_batch(0.3, 7, (0.0,), (1.0,))(x, y, None, torch.Generator().manual_seed(0))
    assert torch.equal(again, out)
    with pytest.raises(ParameterError, match="rate=1.5 is out of range"):
        patch.per_batch(1.5, 7, (0.0,), (1.0,))


def test_injection_fine_tunes_a_clean_model_and_is_cached(fashion):
    clean = victim("fashion-mnist", attack=None, profile="smoke", device="cpu", progress=False)
    patch = Patch.black_and_white(170, channels=1)
    recipe = Recipe(epochs=1, batch_size=64, lr=1e-3, weight_decay=0, schedule="constant",
                    augment=False)
    before = {k: v.clone() for k, v in clean.model.state_dict().items()}
    v = injected(clean, patch, rate=0.2, target=0, recipe=recipe, progress=False)
    assert not v.card["cached"] and v.card["spec"]["from"] == clean.card["key"]
    assert all(torch.equal(before[k], t) for k, t in clean.model.state_dict().items())
    assert any(not torch.equal(before[k], t) for k, t in v.model.state_dict().items())
    assert v.attack is patch and len(v.poison_indices) == 0 and (v.backdoor.labels != 0).all()
    again = injected(clean, patch, rate=0.2, target=0, recipe=recipe, progress=False)
    assert again.card["cached"] and all(torch.equal(a, b) for a, b in zip(
        v.model.state_dict().values(), again.model.state_dict().values()))
    badnets = victim("fashion-mnist", attack="badnets", profile="smoke", device="cpu",
                     progress=False)
    with pytest.raises(ParameterError, match="base is a badnets victim"):
        injected(badnets, patch, recipe=recipe)
