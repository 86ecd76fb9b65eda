import pytest
import torch

from reprolib.attacks import patterns
from reprolib.config import ParameterError

# gen_51_pattern_ids() of MESA's released code
CODE_IDS = [0, 1, 2, 3, 5, 7, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 21, 23, 26, 27, 28, 29, 30,
            40, 41, 42, 43, 45, 56, 57, 58, 59, 61, 68, 69, 70, 78, 84, 85, 86, 94, 97, 98, 99,
            101, 106, 108, 113, 114, 170, 186]


def test_the_512_patterns_fall_into_the_codes_51_classes():
    classes = patterns.pattern_classes()
    assert len(classes) == 51 and classes == CODE_IDS
    orbits = [patterns.equivalents(i) for i in classes]
    assert sum(len(o) for o in orbits) == 512                 # the classes partition all ids
    assert set().union(*orbits) == set(range(512))


def test_pattern_bits_fill_the_mask_row_by_row_from_the_top_bit():
    assert torch.equal(patterns.pattern(170), torch.tensor([[0., 1, 0], [1, 0, 1], [0, 1, 0]]))
    assert torch.equal(patterns.pattern(1), torch.tensor([[0., 0, 0], [0, 0, 0], [0, 0, 1]]))
    assert all(patterns.pattern_id(patterns.pattern(i)) == i for i in range(512))
    assert patterns.equivalents(1) == {1, 4, 64, 256, 510, 507, 447, 255}   # corners, inverted
    with pytest.raises(ParameterError, match="pattern_id=512"):
        patterns.pattern(512)
