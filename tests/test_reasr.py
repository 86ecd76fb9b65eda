import pytest
import torch

from reprolib.defenses import reasr
from reprolib.config import ParameterError


def test_a_bounded_mask_keeps_only_its_largest_values():
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(3, 1, 8, 8, generator=g)
    cut = reasr.bounded(mask, 5)
    for m, c in zip(mask, cut):
        kept = c.flatten() != 0
        assert kept.sum() == 5
        assert torch.equal(c.flatten()[kept], m.flatten()[kept])
        assert m.flatten()[kept].min() >= m.flatten()[~kept].max()


def test_the_scan_finds_the_backdoor_label_inside_the_bound(tiny_badnets, expect):
    t = tiny_badnets
    fit, check = t.defender.sample(240, 0), t.test
    s = reasr.scan(t.model, fit, check, area=0.02, steps=150, seed=0)   # 20 pixels ≥ the 3×3 patch
    assert (s.masks.flatten(1) != 0).sum(1).max() <= 20
    assert s.label == 0 and s.reasr[1:].max() < s.max  # no other label is as easy to reach
    expect("REASR of the backdoor label", s.max, above=0.6)


def test_reasr_counts_only_other_class_images(tiny_badnets, expect):
    t = tiny_badnets
    k = len(t.test.classes)
    masks, patterns = torch.zeros(k, 1, 32, 32), torch.zeros(k, 1, 32, 32)
    masks[:, :, -3:, -3:], patterns[:, :, -3:, -3:] = 1, 1   # the true trigger, for every label
    rates = reasr.reasr(t.model, t.test, masks, patterns)
    backdoor = (t.model(t.test.normalize(t.backdoor.images)).argmax(1) == 0).float().mean()
    assert rates[0] == pytest.approx(backdoor.item(), abs=1e-6)   # the attack's own ASR
    expect("other labels' highest REASR", rates[1:].max().item(), below=0.2)
    with pytest.raises(ParameterError, match="masks has 2 triggers; expected one per class"):
        reasr.reasr(t.model, t.test, masks[:2], patterns[:2])
    with pytest.raises(ParameterError, match="area=0"):
        reasr.scan(t.model, t.test, t.test, area=0)
