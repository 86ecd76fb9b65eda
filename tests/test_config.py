import math

import pytest
import torch

from reprolib import config, devices, models, provenance
from reprolib.config import ParameterError, Recipe


def test_unknown_profile_names_parameter_value_and_choices():
    with pytest.raises(ParameterError) as err:
        config.profile("fast")
    message = str(err.value)
    assert "profile='fast'" in message
    for name in ("smoke", "quick", "paper"):
        assert name in message


@pytest.mark.parametrize("field, value, allowed", [
    ("epochs", 0, "an integer ≥ 1"),
    ("epochs", 2.5, "an integer ≥ 1"),
    ("epochs", True, "an integer ≥ 1"),
    ("batch_size", 1, "an integer ≥ 2"),
    ("lr", 0.0, "a number > 0"),
    ("lr", math.nan, "a number > 0"),
    ("momentum", 1.0, "a number ≥ 0 and < 1"),
    ("weight_decay", -1e-4, "a number ≥ 0"),
    ("label_smoothing", 1.5, "a number ≥ 0 and < 1"),
])
def test_recipe_rejects_out_of_range_values(field, value, allowed):
    with pytest.raises(ParameterError) as err:
        Recipe(**{"epochs": 1, field: value})
    assert f"{field}={value!r}" in str(err.value)
    assert allowed in str(err.value)


def test_recipe_rejects_unknown_schedule_and_fields():
    with pytest.raises(ParameterError, match="schedule='step'.*'cosine', 'onecycle'"):
        Recipe(epochs=1, schedule="step")
    with pytest.raises(ParameterError, match="recipe has no field 'epoch'"):
        Recipe(epochs=1).replace(epoch=3)
    assert Recipe(epochs=1).replace(epochs=3).epochs == 3


def test_profiles_are_scale_only_and_name_real_models():
    for name, p in config.PROFILES.items():
        assert p.name == name
        assert p.model in models.MODELS
    paper = config.profile("paper").recipe
    assert (paper.epochs, paper.batch_size, paper.lr, paper.momentum, paper.weight_decay,
            paper.schedule, paper.label_smoothing) == (100, 128, 0.01, 0.9, 5e-4, "cosine", 0.0)


def test_device_validation():
    with pytest.raises(ParameterError, match="device='tpu'.*'auto', 'cpu', 'cuda'"):
        devices.resolve("tpu")
    with pytest.raises(ParameterError, match="device='auto:1'.*only 'cuda' takes an index"):
        devices.resolve("auto:1")
    assert devices.resolve("cpu") == torch.device("cpu")
    if torch.cuda.is_available():
        assert devices.resolve("auto").type == "cuda"
    else:
        assert devices.resolve("auto") == torch.device("cpu")
        with pytest.raises(ParameterError, match="no CUDA GPU"):
            devices.resolve("cuda")


def test_the_code_version_takes_the_named_commit_over_git(monkeypatch):
    from reprolib import __version__
    monkeypatch.setenv("REPRO_CODE_COMMIT", "0123456789ab")
    assert provenance.code_version() == f"{__version__}+0123456789ab"
    monkeypatch.delenv("REPRO_CODE_COMMIT")
    assert provenance.code_version().startswith(f"{__version__}+")     # this checkout's commit


def test_a_dataset_can_have_its_own_model_and_recipe_at_a_profile():
    fashion, cifar = config.profile("quick", "fashion-mnist"), config.profile("quick", "cifar10")
    assert fashion is config.profile("quick") and cifar.model in models.MODELS
    assert cifar.recipe.augment == "flip" and cifar.recipe.describe().endswith(", flip")
    assert config.profile("paper", "cifar10") is config.profile("paper")
    assert models.choose("auto", "quick", "preact_resnet18", "cifar10") == "small_cnn_wide"
    assert models.choose("auto", "quick", "preact_resnet18", "fashion-mnist") == "small_cnn"
    with pytest.raises(ParameterError, match="augment='crop'"):
        Recipe(epochs=1, augment="crop")
