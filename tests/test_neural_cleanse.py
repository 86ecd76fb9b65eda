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


def test_neural_cleanse_finds_a_planted_corner_trigger(tiny_badnets):
    model, test, defender = tiny_badnets.model, tiny_badnets.test, tiny_badnets.defender
    assert evaluate(model, test, tiny_badnets.backdoor, 0)["asr"] > 0.95
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    model.zero_grad(set_to_none=True)
    rev = nc.reverse(model, defender, [0], steps=600, progress=False)
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    mask = rev.masks[0, 0]
    assert rev.success[0] >= 0.99
    # The 3×3 trigger sits in the bottom-right cell of the 4×4 map the model pools over, an
    # 8×8 pixel square that holds 6 % of the image; most of the reversed mask must be there.
    assert mask[-8:, -8:].sum() / mask.sum() > 0.5
    stamped = rev.stamp(test.images, 0)
    assert evaluate(model, test.with_images(stamped), None)["ca"] < 0.2
