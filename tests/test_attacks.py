import math

import pytest
import torch

from reprolib.attacks import ATTACKS, attack
from reprolib.attacks.blended import LUMA, blend_image
from reprolib.attacks.wanet import warp, warp_field
from reprolib.config import ParameterError
from reprolib.data import ImageSet


def toy(n=200, channels=3, seed=0):
    """Random images in [20, 200), so that every trigger changes every image it touches."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(20, 200, (n, channels, 32, 32), dtype=torch.uint8, generator=g)
    return ImageSet(images, torch.arange(n) % 10, tuple("abcdefghij"), (0.5,) * channels,
                    (0.25,) * channels)


def changed(before: ImageSet, after: ImageSet) -> torch.Tensor:
    return ((after.images != before.images).flatten(1).any(1)
            | (after.labels != before.labels)).nonzero().flatten()


# --- the triggers ---------------------------------------------------------------------------

def test_badnets_is_the_bottom_right_3x3_white_square():
    images = toy(4).images
    stamped = attack("badnets").apply(images)
    where = (stamped != images).any(dim=(0, 1)).nonzero().tolist()
    assert where == [[r, c] for r in (29, 30, 31) for c in (29, 30, 31)]
    assert (stamped[..., 29:, 29:] == 255).all()
    assert torch.equal(images, toy(4).images)            # the input is not modified


def test_blended_mixes_one_fixed_image_with_weight_alpha():
    images = toy(3).images
    t = blend_image(3)
    assert t.shape == (3, 32, 32) and t.std() > 20      # a real picture, not a flat colour
    out = attack("blended", alpha=0.2).apply(images)
    expected = (0.8 * images.float() + 0.2 * t).floor()
    assert torch.equal(out, expected.to(torch.uint8))
    grey = attack("blended").apply(toy(2, channels=1).images)
    luma = (torch.tensor(LUMA).view(3, 1, 1) * t).sum(0)
    assert torch.equal(grey[:, 0], (0.8 * toy(2, channels=1).images[:, 0].float() + 0.2 * luma)
                       .floor().to(torch.uint8))


def test_sig_adds_a_horizontal_sinusoid_to_every_row():
    flat = torch.full((2, 3, 32, 32), 128, dtype=torch.uint8)
    out = attack("sig").apply(flat).float()
    row = 128 + 40 * torch.sin(2 * math.pi * torch.arange(32) * 6 / 32)
    assert torch.equal(out, row.floor().expand_as(out))  # same in every row and channel
    assert 78 <= out.max() - out.min() <= 80             # δ = 40 each way
    clipped = attack("sig").apply(torch.full((1, 1, 32, 32), 250, dtype=torch.uint8))
    assert clipped.max() == 255                           # clipped, not wrapped around


def test_wanet_warp_is_deterministic_for_a_seed_and_stays_in_range():
    a, b = warp_field(4, 0.5, 32, seed=7), warp_field(4, 0.5, 32, seed=7)
    assert torch.equal(a, b) and not torch.equal(a, warp_field(4, 0.5, 32, seed=8))
    assert a.abs().max() <= 1
    line = torch.linspace(-1, 1, 32)
    identity = torch.stack(torch.meshgrid(line, line, indexing="xy"), dim=2)
    shift = (a[0] - identity).abs() * 16                  # in pixels
    assert 0.1 < shift.mean() < 0.5 and shift.max() < 2   # "about a quarter of a pixel"
    x = torch.rand(5, 3, 32, 32) * 255
    y = warp(x, a)
    flat = lambda t: t.flatten(1)  # noqa: E731
    assert (flat(y).min(1).values >= flat(x).min(1).values - 1e-4).all()
    assert (flat(y).max(1).values <= flat(x).max(1).values + 1e-4).all()
    images = toy(4).images
    out = attack("wanet", grid_seed=7).apply(images)
    assert out.dtype == torch.uint8 and torch.equal(out, attack("wanet", grid_seed=7).apply(images))
    assert not torch.equal(out, images) and not torch.equal(out, attack("wanet").apply(images))


def test_every_trigger_works_on_one_channel_images():
    images = toy(3, channels=1).images
    for name in ATTACKS:
        out = attack(name).apply(images)
        assert out.shape == images.shape and out.dtype == torch.uint8 and not torch.equal(out, images)


# --- the bookkeeping ------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_poison_indices_are_exactly_the_changed_images(name):
    clean = toy(300)
    a = attack(name)
    p = a.poison(clean, ratio=0.05 if name == "sig" else 0.1, target=2, seed=1)
    n = round((0.05 if name == "sig" else 0.1) * 300)
    assert len(p.indices) == n and torch.equal(p.indices, p.indices.unique())   # sorted, distinct
    assert torch.equal(changed(clean, p.data), p.indices)
    assert torch.equal(p.data.images[p.indices], a.apply(clean.images[p.indices]))
    if a.clean_label:
        assert (clean.labels[p.indices] == 2).all() and torch.equal(p.data.labels, clean.labels)
    elif a.all_to_all:
        assert torch.equal(p.data.labels[p.indices], (clean.labels[p.indices] + 1) % 10)
    else:
        assert (p.data.labels[p.indices] == 2).all()
    again = a.poison(clean, ratio=0.05 if name == "sig" else 0.1, target=2, seed=1)
    other = a.poison(clean, ratio=0.05 if name == "sig" else 0.1, target=2, seed=2)
    assert torch.equal(again.indices, p.indices) and torch.equal(again.data.images, p.data.images)
    assert not torch.equal(other.indices, p.indices)


def test_dirty_label_poison_is_drawn_from_the_whole_set_as_in_backdoorbench():
    p = attack("badnets").poison(toy(1000), ratio=0.5, target=0, seed=0)
    drawn_from_target = (toy(1000).labels[p.indices] == 0).sum().item()
    assert 20 < drawn_from_target < 80                   # about 10 % of 500


def test_sig_takes_the_whole_target_class_at_most():
    clean = toy(300)                                      # 30 images per class
    assert len(attack("sig").poison(clean, ratio=0.1, target=4, seed=0).indices) == 30
    with pytest.raises(ParameterError, match=r"ratio=0.2 asks for 60 .* class 4 has 30; "
                                             r"allowed: ratio ≤ 0.1000"):
        attack("sig").poison(clean, ratio=0.2, target=4, seed=0)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_triggered_test_set_is_every_non_target_image_with_its_true_label(name):
    test = toy(50)
    a = attack(name)
    backdoor = a.triggered(test, target=3)
    keep = torch.ones(50, dtype=torch.bool) if a.all_to_all else test.labels != 3
    assert len(backdoor) == (50 if a.all_to_all else 45)
    assert torch.equal(backdoor.labels, test.labels[keep])
    assert torch.equal(backdoor.images, a.apply(test.images[keep]))


def test_wanet_cross_images_get_fresh_noise_in_each_batch_and_keep_their_label():
    clean = toy(200)
    p = attack("wanet").poison(clean, ratio=0.1, target=0, seed=0)
    assert len(p.cross) == 2 * len(p.indices) == 40
    assert not set(p.cross.tolist()) & set(p.indices.tolist())
    assert torch.equal(p.data.images[p.cross], clean.images[p.cross])  # noise only in training
    x = clean.images.float() / 255
    idx = torch.arange(200)
    g = torch.Generator().manual_seed(0)
    out1, y1 = p.per_batch(x.clone(), p.data.labels.clone(), idx, g)
    out2, _ = p.per_batch(x.clone(), p.data.labels.clone(), idx, g)
    touched = (out1 != x).flatten(1).any(1).nonzero().flatten()
    assert torch.equal(touched, p.cross) and torch.equal(y1, p.data.labels)
    assert not torch.equal(out1[p.cross], out2[p.cross])             # fresh noise
    replay, _ = p.per_batch(x.clone(), p.data.labels.clone(), idx, torch.Generator().manual_seed(0))
    assert torch.equal(replay, out1)                                  # but seeded
    part = idx[::3]
    sub, _ = p.per_batch(x[part].clone(), p.data.labels[part], part, g)
    assert torch.equal((sub != x[part]).flatten(1).any(1).nonzero().flatten(),
                       torch.isin(part, p.cross).nonzero().flatten())


# --- the registry ---------------------------------------------------------------------------

def test_registry_names_and_parameters_are_checked():
    assert sorted(ATTACKS) == ["badnets", "badnets_all2all", "blended", "sig", "wanet"]
    assert attack("blended", alpha=0.3).settings() == {"name": "blended", "alpha": 0.3,
                                                       "image": "cartoon"}
    with pytest.raises(ParameterError, match="attack='trojan' is not allowed; choose one of: "
                                             "'badnets', 'badnets_all2all', 'blended', 'sig', "
                                             "'wanet'"):
        attack("trojan")
    with pytest.raises(ParameterError, match="blended has no parameter beta; allowed: alpha, image"):
        attack("blended", beta=0.1)
    for name, bad in [("blended", {"alpha": 0}), ("blended", {"alpha": 1.5}),
                      ("sig", {"delta": -5}), ("wanet", {"k": 1}), ("wanet", {"s": 0}),
                      ("badnets", {"size": 40}), ("blended", {"image": "kitty"})]:
        key, value = next(iter(bad.items()))
        with pytest.raises(ParameterError, match=f"{key}={value!r}"):
            attack(name, **bad)
    with pytest.raises(ParameterError, match="ratio=1.5"):
        attack("badnets").poison(toy(), 1.5, 0, 0)
    with pytest.raises(ParameterError, match="target=10"):
        attack("badnets").poison(toy(), 0.1, 10, 0)
    with pytest.raises(ParameterError, match="target=-1"):
        attack("sig").triggered(toy(), -1)


def test_wanet_trains_by_backdoorbenchs_recipe_constant_lr_and_augmentation_after_the_warp():
    from reprolib.config import PROFILES
    paper = PROFILES["paper"].recipe
    r = attack("wanet").recipe(paper)
    assert (r.lr, r.schedule, r.milestones, r.epochs) == (0.01, "constant", (), 100)
    assert not r.augment and r.post_augment        # nothing before the warp, all of it after
    assert attack("badnets").recipe(paper) == paper


def test_wanet_victims_take_the_attacks_recipe_only_when_asked(fashion, tmp_path):
    from reprolib.config import PROFILES
    from reprolib.victims import victim
    common = dict(profile="smoke", device="cpu", progress=False,
                  recipe=PROFILES["smoke"].recipe.replace(epochs=1))
    own = victim("fashion-mnist", attack="wanet", attack_recipes=True, **common)
    shared = victim("fashion-mnist", attack="wanet", **common)
    assert own.card["recipe"]["post_augment"] and own.card["recipe"]["lr"] == 0.01
    assert own.card["recipe"]["schedule"] == "constant"
    assert not shared.card["recipe"]["post_augment"]


def test_the_post_warp_augmentation_crops_rotates_and_flips_each_image():
    from reprolib.data import crop_rotate_flip
    x = torch.zeros(4000, 1, 32, 32)
    x[:, :, 10, 8] = 1.0                                    # one lit pixel, left of centre
    out = crop_rotate_flip(x, torch.Generator().manual_seed(0))
    again = crop_rotate_flip(x, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    assert set(out.unique().tolist()) <= {0.0, 1.0}         # nearest pixel, zero fill
    lit = out.flatten(1).argmax(1)
    rows, cols = lit // 32, lit % 32
    kept = out.flatten(1).amax(1) == 1
    flipped = (cols > 15) & kept
    assert 0.45 < flipped.float().mean() < 0.55             # flipped with probability 0.5
    cols = torch.where(flipped, 31 - cols, cols)
    # moved by a crop of at most 5 px and a rotation of at most 10° about the centre, whose
    # arc at this distance (about 10 px) is under 2 px
    assert kept.float().mean() > 0.95                        # it stays inside the image
    assert ((rows - 10).abs() <= 7)[kept].all() and ((cols - 8).abs() <= 7)[kept].all()
    moved = ((rows != 10) | (cols != 8)) & kept
    assert 0.75 < moved.float().mean() < 0.95               # the crop moves 0.8 · 120/121 of them
