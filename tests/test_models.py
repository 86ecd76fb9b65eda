import pytest
import torch
import torch.nn as nn

from reprolib import models
from reprolib.config import ParameterError


@pytest.mark.parametrize("name, width", [("preact_resnet18", 512), ("resnet18", 512), ("small_cnn", 64)])
@pytest.mark.parametrize("channels", [1, 3])
def test_features_then_head(name, width, channels):
    model = models.build(name, num_classes=7, in_channels=channels, seed=0).eval()
    x = torch.randn(4, channels, 32, 32)
    features = model.features(x)
    assert features.shape == (4, width)
    assert isinstance(model.head, nn.Linear) and model.head.in_features == width
    assert model(x).shape == (4, 7)
    assert torch.allclose(model(x), model.head(features))


def test_preact_resnet18_has_backdoorbench_layout():
    model = models.build("preact_resnet18")
    assert sum(p.numel() for p in model.parameters()) == 11_171_146   # BackdoorBench, CIFAR-10
    names = dict(model.named_modules())
    conv = names["layer4.1.conv1"]
    assert isinstance(conv, nn.Conv2d) and (conv.in_channels, conv.out_channels) == (512, 512)
    state = model.state_dict()
    for key in ("conv1.weight", "layer1.0.bn1.running_mean", "layer2.0.shortcut.0.weight",
                "layer4.1.bn2.weight", "layer4.1.conv2.weight", "head.weight"):
        assert key in state
    assert "layer1.0.shortcut.0.weight" not in state        # identity shortcut in the first stage
    assert "bn.weight" not in state and "bn1.weight" not in state  # no BN after the stem or layer4


def test_resnet18_matches_kuangliu_parameter_count():
    assert sum(p.numel() for p in models.build("resnet18").parameters()) == 11_173_962


def test_seeded_build_is_repeatable_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = models.build("small_cnn", seed=5)
    b = models.build("small_cnn", seed=5)
    assert torch.equal(torch.rand(3), expected)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    c = models.build("small_cnn", seed=6)
    assert not torch.equal(a.conv1.weight, c.conv1.weight)


def test_unknown_model_and_bad_arguments():
    with pytest.raises(ParameterError, match="model='vgg19'.*'preact_resnet18', 'resnet18', 'small_cnn'"):
        models.build("vgg19")
    with pytest.raises(ParameterError, match="in_channels=4"):
        models.build("small_cnn", in_channels=4)
    with pytest.raises(ParameterError, match="num_classes=1"):
        models.build("small_cnn", num_classes=1)


@pytest.mark.parametrize("stride, in_planes", [(1, 8), (2, 4)])
def test_preact_block_computes_the_reference_forward(stride, in_planes):
    torch.manual_seed(0)
    block = models.PreActBlock(in_planes, 8, stride).eval()
    for bn in (block.bn1, block.bn2):                     # non-trivial statistics
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    x = torch.randn(2, in_planes, 8, 8)
    pre = torch.relu(block.bn1(x))
    residual = block.conv2(torch.relu(block.bn2(block.conv1(pre))))
    # BackdoorBench: a projection shortcut reads the pre-activated input, the identity reads x.
    shortcut = block.shortcut(pre) if stride != 1 else x
    assert torch.allclose(block(x), residual + shortcut, atol=1e-6)


def test_model_device_is_where_the_weights_are():
    net = models.build("small_cnn", 10, 1, seed=0)
    assert models.model_device(net) == torch.device("cpu")
    assert models.model_device(net.to("meta")) == torch.device("meta")
