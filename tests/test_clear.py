import numpy as np
import pytest
import torch
from scipy.spatial import Delaunay

from reprolib.config import ParameterError, Recipe
from reprolib.data import ImageSet
from reprolib.defenses import clear


def test_the_lp_hull_test_agrees_with_a_triangulation_in_2d():
    rng = np.random.default_rng(0)
    for trial in range(3):
        vertices = rng.normal(size=(7, 2))
        points = rng.uniform(-2.5, 2.5, size=(300, 2))
        truth = Delaunay(vertices).find_simplex(points) >= 0
        assert 0 < truth.sum() < len(points)
        assert np.array_equal(clear.inside_hull(vertices, points), truth)
    # the vertices themselves and their mean are inside
    assert clear.inside_hull(vertices, np.vstack([vertices, vertices.mean(0)])).all()
    with pytest.raises(ParameterError, match="vertices have 2 dimensions and points 3"):
        clear.inside_hull(vertices, np.zeros((1, 3)))


def clusters(planted=10, seed=0):
    """Three classes of 200 points in 16-D; `planted` points of class 0's cluster labelled 2."""
    g = torch.Generator().manual_seed(seed)
    centres = 6 * torch.eye(16)[:3]
    z = torch.cat([c + 0.5 * torch.randn(200, 16, generator=g) for c in centres])
    labels = torch.arange(3).repeat_interleave(200)
    poisons = torch.randperm(200, generator=g)[:planted]
    labels[poisons] = 2
    return z, labels, poisons.sort().values


def test_the_neighbourhood_step_flags_exactly_the_planted_mislabelled_points():
    z, labels, poisons = clusters()
    hood = clear.neighbourhood(z, labels, k=20)
    assert torch.equal(hood.flagged.nonzero().flatten(), poisons)
    assert (hood.majority[poisons] == 0).all() and (hood.share[poisons] >= 0.5).all()
    with pytest.raises(ParameterError, match="k=600 is out of range"):
        clear.neighbourhood(z, labels, k=600)


def test_the_planted_points_form_one_pocket_of_label_2_among_class_0():
    z, labels, poisons = clusters()
    # pull the planted points together, as poisons that collide in feature space
    z[poisons] = z[poisons[0]] + 0.05 * torch.randn(len(poisons), 16,
                                                    generator=torch.Generator().manual_seed(1))
    found = clear.pockets(z, labels, clear.neighbourhood(z, labels, k=20))
    assert len(found) == 1 and torch.equal(found[0], poisons)


def test_the_tight_hull_encloses_the_pocket_with_fewer_vertices_than_it_started_with():
    g = torch.Generator().manual_seed(0)
    pool = torch.randn(400, 2, generator=g)                       # class s, in 2-D
    pocket = 0.1 * torch.randn(5, 2, generator=g) + torch.tensor([0.3, -0.2])
    z = torch.cat([pool, pocket])
    hull = clear.wrap(z, torch.arange(400, 405), torch.arange(400), most=160)
    assert hull is not None and hull.enclosure >= 0.8 and 3 <= len(hull.vertices) < 40
    inside = clear.inside_hull(z[hull.vertices].numpy(), pocket.numpy())
    assert inside.mean() == hull.enclosure
    # dropping the farthest vertex would leave too little of the pocket inside
    assert clear.inside_hull(z[hull.vertices[:-1]].numpy(), pocket.numpy()).mean() < 0.8
    # a pocket far outside the class cannot be wrapped by its images
    far = torch.cat([pool, pocket + 10])
    assert clear.wrap(far, torch.arange(400, 405), torch.arange(400), most=20) is None


def test_features_are_unit_penultimate_vectors_and_pca_keeps_the_most_variance(tiny_badnets):
    t = tiny_badnets
    z = clear.features(t.model, t.test)
    assert z.shape == (len(t.test), 64) and torch.allclose(z.norm(dim=1), torch.ones(len(z)))
    low = clear.features(t.model, t.test, dim=8)
    assert low.shape == (len(t.test), 8)
    variance = low.var(0)
    assert (variance[:-1] >= variance[1:] - 1e-6).all()              # leading directions first
    assert variance.sum() > 0.5 * (z - z.mean(0)).var(0).sum()
    with pytest.raises(ParameterError, match="dim=65 is out of range"):
        clear.features(t.model, t.test, dim=65)


def labelled_set(labels):
    """A stand-in training set carrying `labels` (the images do not matter here)."""
    images = torch.zeros(len(labels), 1, 32, 32, dtype=torch.uint8)
    return ImageSet(images, labels.clone(), tuple(map(str, range(3))), (0.5,), (0.5,))


def test_detection_wraps_the_planted_pocket_and_the_mitigation_sets_fix_or_drop_it():
    z, labels, poisons = clusters()
    g = torch.Generator().manual_seed(1)
    z[poisons] = z[labels == 0].mean(0) + 0.05 * torch.randn(len(poisons), 16, generator=g)
    found = clear.detect(z, labels, k=20)
    assert len(found) == 1
    f = found[0]
    assert torch.equal(f.pocket, poisons) and (f.label, f.hull_class) == (2, 0)
    assert f.hull is not None and f.hull.enclosure >= 0.8 and f.score > 0
    assert (labels[f.hull.vertices] == 0).all() and not torch.isin(f.hull.vertices, poisons).any()
    data = labelled_set(labels)
    fixed = clear.relabelled(data, found)
    assert (fixed.labels[poisons] == 0).all()
    others = torch.ones(600, dtype=torch.bool)
    others[poisons] = False
    assert torch.equal(fixed.labels[others], labels[others])
    dropped = clear.deleted(data, found)
    assert len(dropped) == 590 and torch.equal(dropped.labels, labels[others])
    # with every label right there is nothing to find
    z, labels, _ = clusters(planted=0)
    assert clear.detect(z, labels, k=20) == []


def test_the_model_score_and_the_flags_come_from_wrapped_pockets_only():
    z, labels, poisons = clusters()
    z[poisons] = z[labels == 0].mean(0) + 0.05 * torch.randn(
        len(poisons), 16, generator=torch.Generator().manual_seed(1))
    found = clear.detect(z, labels, k=20, enclosure=0.8)
    assert clear.model_score(found) == found[0].score > 0
    assert torch.equal(clear.flagged(found), poisons)
    unwrapped = [clear.Found(poisons, 2, 0, None, 0.0)]
    assert clear.model_score(unwrapped) == 0 and len(clear.flagged(unwrapped)) == 0
    assert clear.model_score([]) == 0


def test_the_decision_slice_is_the_models_prediction_on_the_plane(tiny_badnets):
    t = tiny_badnets
    origin, toward, across = t.test.images[0], t.test.images[1], t.test.images[2]
    grid = clear.decision_slice(t.model, t.test, origin, toward, across, extent=1.0, steps=3)
    assert grid.shape == (3, 3)
    points = torch.stack([origin, toward]).float()
    expected = t.model(t.test.normalize(points)).argmax(1)
    assert grid[1, 1] == expected[0] and grid[1, 2] == expected[1]   # a = 0 and a = 1 on the row b = 0
    with pytest.raises(ParameterError, match="steps=1 is out of range"):
        clear.decision_slice(t.model, t.test, origin, toward, across, steps=1)


def test_head_only_fine_tuning_keeps_the_features_and_the_original(tiny_badnets, expect):
    t = tiny_badnets
    head = t.model.head.weight.detach().clone()
    relabelled = t.defender.with_images(t.defender.images, (t.defender.labels + 1) % 10)
    tuned = clear.fine_tuned(t.model, relabelled, Recipe(epochs=30, lr=0.05, augment=False),
                             head_only=True)
    assert torch.equal(t.model.head.weight, head)                      # a copy was tuned
    x = t.test.normalize(t.test.images[:50])
    with torch.no_grad():
        assert torch.equal(tuned.features(x), t.model.features(x))
        moved = (tuned(x).argmax(1) == (t.model(x).argmax(1) + 1) % 10).float().mean()
    expect("share moved to the shifted label", moved.item(), above=0.5)   # the head learnt it


def test_examine_runs_the_whole_detection_on_a_models_features(tiny_badnets):
    t = tiny_badnets
    data = t.defender.subset(torch.arange(300))
    e = clear.examine(t.model, data, k=10, dim=4)
    z = clear.features(t.model, data, dim=4)
    assert torch.allclose(e.z, z)
    hood = clear.neighbourhood(z, data.labels, k=10)
    assert torch.equal(e.hood.flagged, hood.flagged)
    assert len(e.found) == len(clear.pockets(z, data.labels, hood))
    # Deep k-NN reads the features themselves, not CLEAR's PCA projection
    full = clear.neighbourhood(clear.features(t.model, data), data.labels, k=10)
    assert torch.equal(e.knn.flagged, full.flagged) and clear.features(t.model, data).shape[1] == 64
    assert e.score == clear.model_score(e.found) and e.seconds > 0


def test_the_widest_hull_holds_poisons_among_their_class_and_not_those_far_away():
    g = torch.Generator().manual_seed(0)
    z = torch.cat([torch.randn(300, 2, generator=g),                  # class 1, around 0
                   0.1 * torch.randn(4, 2, generator=g),             # poisons inside it
                   torch.tensor([[9.0, 9.0], [9.2, 9.1]])])          # poisons far outside
    labels = torch.cat([torch.ones(300, dtype=torch.long), torch.zeros(6, dtype=torch.long)])
    assert clear.widest_hull_share(z, labels, torch.arange(300, 304), 1) == 1.0
    assert clear.widest_hull_share(z, labels, torch.arange(304, 306), 1) == 0.0
    # poisons that carry the hull's class are not its vertices: they are what it must hold
    assert clear.widest_hull_share(z, torch.ones(306, dtype=torch.long),
                                   torch.arange(304, 306), 1) == 0.0
