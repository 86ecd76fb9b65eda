import pytest
import torch

from reprolib.config import ParameterError
from reprolib.defenses import mesa


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
