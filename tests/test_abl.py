import pytest
import torch

from reprolib.config import ParameterError
from reprolib.defenses import abl


def test_lga_ascends_below_gamma_and_descends_above():
    logits = torch.zeros(4, 3, requires_grad=True)      # CE = ln 3 ≈ 1.10
    labels = torch.tensor([0, 1, 2, 0])
    above, = torch.autograd.grad(abl.lga(0.5)(logits, labels), logits)
    below, = torch.autograd.grad(abl.lga(2.0)(logits, labels), logits)
    plain, = torch.autograd.grad(torch.nn.functional.cross_entropy(logits, labels), logits)
    assert torch.allclose(above, plain) and torch.allclose(below, -plain)


def test_settings_are_checked():
    with pytest.raises(ParameterError, match="isolation_ratio=0"):
        abl.Settings(isolation_ratio=0)
    with pytest.raises(ParameterError, match=r"finetune_epochs\[1\]=-1"):
        abl.Settings(finetune_epochs=(1, -1))


def test_abl_isolates_low_loss_images_and_unlearns_them(tiny_badnets, expect):
    t = tiny_badnets
    s = abl.Settings(isolation_epochs=3, finetune_epochs=(2, 0), unlearning_epochs=2,
                     augment=False)
    result = abl.abl("small_cnn", t.train, s, seed=0, progress=False)
    assert len(result.isolated) == 40 and not result.model.training
    loss = result.isolation_loss
    assert torch.equal(result.isolated, loss.argsort()[:40])
    poison = torch.zeros(len(loss), dtype=torch.bool)
    poison[t.poison_indices.cpu()] = True
    # ABL's premise: under LGA the backdoor images are learned far faster than the rest
    expect("poison / clean mean LGA loss", (loss[poison].mean() / loss[~poison].mean()).item(),
           below=0.1)
    isolated = t.train.subset(result.isolated.sort().values)
    assert abl.per_image_loss(result.model, isolated).mean() > loss[result.isolated].mean()
