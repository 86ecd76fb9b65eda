import math

import pytest
import torch

from reprolib import metrics
from reprolib.config import ParameterError


def test_ca_asr_ra_on_a_hand_made_example():
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    clean_pred = torch.tensor([0, 1, 2, 0, 0, 2])
    assert metrics.ca(clean_pred, labels) == pytest.approx(4 / 6)
    # Triggered predictions; the two class-0 images (the target) must not count.
    triggered_pred = torch.tensor([0, 0, 2, 0, 1, 1])
    assert metrics.asr(triggered_pred, labels, target=0) == pytest.approx(2 / 4)
    assert metrics.ra(triggered_pred, labels, target=0) == pytest.approx(2 / 4)


def test_all_to_all_asr_counts_each_image_against_its_own_target():
    labels = torch.tensor([0, 1, 2, 9])
    target = (labels + 1) % 10
    pred = torch.tensor([1, 2, 2, 0])          # three go where the backdoor sends them
    assert metrics.asr(pred, labels, target) == pytest.approx(3 / 4)
    assert metrics.ra(pred, labels, target) == pytest.approx(1 / 4)


def test_asr_undefined_without_non_target_images():
    with pytest.raises(ParameterError, match="target=3"):
        metrics.asr(torch.tensor([3, 3]), torch.tensor([3, 3]), target=3)


@pytest.mark.parametrize("before, after, expected", [
    # BackdoorBench CIFAR-10 rows and the DER derived from them in backdoorbench_reference.md.
    ((0.9132, 0.9503), (0.8996, 0.0148), 0.961),   # BadNets, FT
    ((0.9347, 0.9992), (0.9317, 0.9926), 0.502),   # Blended, FP
    ((0.9125, 0.8973), (0.8573, 0.0043), 0.919),   # WaNet, ANP
])
def test_der_matches_backdoorbench_rows(before, after, expected):
    assert metrics.der(before[0], before[1], after[0], after[1]) == pytest.approx(expected, abs=5e-4)


def test_der_ignores_gains_in_accuracy_and_rises_in_asr():
    assert metrics.der(0.9, 0.5, 0.95, 0.9) == pytest.approx(0.5)
    assert metrics.der(0.9, 1.0, 0.9, 0.0) == pytest.approx(1.0)
    with pytest.raises(ParameterError, match="asr_after=95.0"):
        metrics.der(0.9, 0.9, 0.9, 95.0)


def test_auroc_is_the_chance_an_attacked_score_beats_a_clean_one():
    assert metrics.auroc([0.1, 0.2], [0.3, 0.9]) == 1.0
    assert metrics.auroc([0.3, 0.9], [0.1, 0.2]) == 0.0
    assert metrics.auroc([0.0, 0.0], [0.0]) == 0.5
    assert metrics.auroc([0.1, 0.5], [0.3]) == 0.5
    with pytest.raises(ParameterError, match="got 0 clean and 1 attacked"):
        metrics.auroc([], [1.0])


def test_precision_and_recall_of_flagged_samples():
    p, r = metrics.precision_recall(torch.tensor([1, 2, 3, 4]), torch.tensor([3, 4, 5]), 10)
    assert (p, r) == (0.5, 2 / 3)
    p, r = metrics.precision_recall(torch.tensor([], dtype=torch.long), torch.tensor([1]), 5)
    assert math.isnan(p) and r == 0.0
    with pytest.raises(ParameterError, match="truth is empty"):
        metrics.precision_recall(torch.tensor([1]), torch.tensor([], dtype=torch.long), 5)
