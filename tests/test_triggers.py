import pytest
import torch

from reprolib.config import ParameterError
from reprolib.triggers import blend, decode, mask_search, paste


def test_blend_blends_mask_and_pattern_in_pixel_space():
    images = torch.full((2, 1, 4, 4), 100, dtype=torch.uint8)
    mask = torch.zeros(1, 4, 4)
    mask[0, 3, 3], mask[0, 0, 0] = 1.0, 0.5
    pattern = torch.ones(1, 4, 4)
    out = blend(images, mask, pattern)
    assert out[0, 0, 3, 3] == 255 and out[0, 0, 0, 0] == 178   # 0.5·100 + 0.5·255, rounded
    assert (out[:, :, 1:3, 1:3] == 100).all()


def test_a_pasted_trigger_changes_exactly_its_window():
    x = torch.randn(4, 3, 32, 32)
    triggers = torch.rand(4, 27)
    mean, std = torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.25, 0.3])
    out = paste(x, triggers, 5, 29, mean, std)
    changed = (out != x).any(1)
    assert changed[:, 5:8, 29:32].all() and changed.sum() == 4 * 9
    expected = (triggers.view(4, 3, 3, 3) - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    assert torch.allclose(out[:, :, 5:8, 29:32], expected)
    with pytest.raises(ParameterError, match=r"\(row, col\)=\(5, 30\) is not allowed"):
        paste(x, triggers, 5, 30, mean, std)


def test_a_mask_search_starts_where_asked_and_moves_only_its_triggers():
    search = mask_search(3, (1, 4, 4), mask_start=-1.0, lr=0.1, seed=0, device=torch.device("cpu"))
    mask, pattern = search.triggers()
    assert mask.shape == (3, 1, 4, 4) and pattern.shape == (3, 1, 4, 4)
    assert torch.allclose(mask, decode(torch.tensor(-1.0)).expand_as(mask))
    again = mask_search(3, (1, 4, 4), mask_start=-1.0, lr=0.1, seed=0, device=torch.device("cpu"))
    assert torch.equal(search.pattern_param, again.pattern_param)       # the seed draws them
    x = torch.rand(2, 1, 4, 4)
    blended, mask, pattern = search.blended(x)
    assert blended.shape == (3, 2, 1, 4, 4)
    assert torch.allclose(blended[1, 0], (1 - mask[1]) * x[0] + mask[1] * pattern[1])
    weight = torch.ones(1, requires_grad=True)         # a stand-in for the model's weights
    before = search.pattern_param.detach().clone()
    search.step((blended.sum() * weight).sum())
    assert weight.grad is None                          # only the triggers get gradients
    # Adam's first step moves each value by lr against its gradient's sign: d/dΔ = m·(B images)
    assert torch.allclose(search.pattern_param.detach(), before - 0.1, atol=1e-4)
