"""The classifiers: PreAct-ResNet18 (BackdoorBench's layout), ResNet-18 (kuangliu's CIFAR layout),
and a small CNN for CPU runs.

Every model is `head(features(x))`: `features` maps a normalised image batch to the penultimate
vector, `head` is one `nn.Linear`. Module names follow the reference code, so hooks written against
BackdoorBench (e.g. `layer4.1.conv1`) find the same layers here; only BackdoorBench's final
`linear` is called `head`.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import check_choice, check_range, profile as profile_of


def model_device(model: nn.Module) -> torch.device:
    """The device `model`'s weights are on (its first parameter's)."""
    return next(model.parameters()).device


class PreActBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False))

    def forward(self, x):
        out = F.relu(self.bn1(x))
        # The projection shortcut sees the pre-activated input; the identity shortcut sees x.
        shortcut = self.shortcut(out) if hasattr(self, "shortcut") else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False),
                                          nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def _stages(block, widths=(64, 128, 256, 512), depths=(2, 2, 2, 2)) -> list[nn.Sequential]:
    stages, in_planes = [], 64
    for i, (planes, depth) in enumerate(zip(widths, depths)):
        strides = [1 if i == 0 else 2] + [1] * (depth - 1)
        blocks = []
        for stride in strides:
            blocks.append(block(in_planes, planes, stride))
            in_planes = planes
        stages.append(nn.Sequential(*blocks))
    return stages


class PreActResNet18(nn.Module):
    """BackdoorBench's PreActResNet18: 3×3 stem, four pre-activation stages, no final BN,
    adaptive average pooling (11,171,146 parameters for 10 classes)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.layer1, self.layer2, self.layer3, self.layer4 = _stages(PreActBlock)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(512, num_classes)

    def features(self, x):
        out = self.conv1(x)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.avgpool(out).flatten(1)

    def forward(self, x):
        return self.head(self.features(x))


class ResNet18(nn.Module):
    """kuangliu/pytorch-cifar ResNet18 (the model of the MESA code): 3×3 stem, no max-pool."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1, self.layer2, self.layer3, self.layer4 = _stages(BasicBlock)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(512, num_classes)

    def features(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.avgpool(out).flatten(1)

    def forward(self, x):
        return self.head(self.features(x))


class SmallCNN(nn.Module):
    """Four conv-BN-ReLU layers of widths w, 2w, 4w, 4w (w = 16), max-pooling after the first
    three, global average pooling: about 3 M multiply-adds per image, for CPU runs.

    `conv4` is the last conv layer, on 4×4 maps like PreAct-ResNet18's `layer4`."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 16):
        super().__init__()
        w = (width, 2 * width, 4 * width, 4 * width)
        self.conv1, self.bn1 = nn.Conv2d(in_channels, w[0], 3, 1, 1, bias=False), nn.BatchNorm2d(w[0])
        self.conv2, self.bn2 = nn.Conv2d(w[0], w[1], 3, 1, 1, bias=False), nn.BatchNorm2d(w[1])
        self.conv3, self.bn3 = nn.Conv2d(w[1], w[2], 3, 1, 1, bias=False), nn.BatchNorm2d(w[2])
        self.conv4, self.bn4 = nn.Conv2d(w[2], w[3], 3, 1, 1, bias=False), nn.BatchNorm2d(w[3])
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(w[3], num_classes)

    def features(self, x):
        out = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)      # 16×16
        out = F.max_pool2d(F.relu(self.bn2(self.conv2(out))), 2)    # 8×8
        out = F.max_pool2d(F.relu(self.bn3(self.conv3(out))), 2)    # 4×4
        out = F.relu(self.bn4(self.conv4(out)))                     # 4×4
        return self.avgpool(out).flatten(1)

    def forward(self, x):
        return self.head(self.features(x))


class WideSmallCNN(SmallCNN):
    """The small CNN at width 24 (about 7 M multiply-adds per image): CIFAR-10's `quick` model,
    where width 16 stops near 71 % CA."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__(num_classes, in_channels, width=24)


MODELS = {"preact_resnet18": PreActResNet18, "resnet18": ResNet18, "small_cnn": SmallCNN,
          "small_cnn_wide": WideSmallCNN}


def architecture(model: nn.Module) -> str:
    """The architecture `model` is built as, by class name, a variant counting as its base
    (WideSmallCNN is a SmallCNN): what a defense's per-architecture layer map is keyed by."""
    bases = (PreActResNet18, ResNet18, SmallCNN)
    return next((c.__name__ for c in type(model).__mro__ if c in bases), type(model).__name__)
CHOICES = ("auto", "paper", *MODELS)


def choose(model: str, profile: str, paper_model: str, dataset: str | None = None) -> str:
    """The architecture a run uses. A name is taken as it is; "paper" is `paper_model`, the
    reference's; "auto" is the reference's at the `paper` profile and the profile's own below it
    (a small CNN, for `dataset`), so that `smoke` and `quick` stay cheap."""
    check_choice("model", model, CHOICES)
    if model == "auto":
        return paper_model if profile == "paper" else profile_of(profile, dataset).model
    if model == "paper":
        return check_choice("the reference's model", paper_model, MODELS)
    return model


def build(name: str, num_classes: int = 10, in_channels: int = 3, seed: int | None = None) -> nn.Module:
    """A freshly initialised model; with `seed`, the same seed gives the same initial weights
    without touching the global random state."""
    check_choice("model", name, MODELS)
    check_range("num_classes", num_classes, low=2, integer=True)
    check_choice("in_channels", in_channels, (1, 3))
    if seed is None:
        return MODELS[name](num_classes, in_channels)
    check_range("seed", seed, low=0, high=2**63 - 1, integer=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MODELS[name](num_classes, in_channels)
