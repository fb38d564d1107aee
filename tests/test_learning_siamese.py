"""Learning-regression tests of the recipes without negatives (BYOL, SimSiam): as
tests/test_learning.py, in a file of their own so that the two test workers share the learning
runs (each file stays in one worker)."""

import pytest
from conftest import NEEDS_REAL_CIFAR, real_cifar_root
from learning import SIAMESE, assert_learns

ROOT = real_cifar_root()
pytestmark = [*NEEDS_REAL_CIFAR, pytest.mark.slow]


@pytest.mark.parametrize("name", SIAMESE)
def test_a_short_run_without_negatives_beats_its_untrained_encoder(name, tmp_path):
    assert_learns(name, ROOT, tmp_path / name)
