"""Learning-regression tests: a short seeded run of each framework and plug-in on real CIFAR-10
must beat its own untrained encoder's kNN by a pinned margin (``tests/learning.py``).

The margins sit well inside the gains measured over seeds, and each test fails on a method that
does not learn (a zero learning rate leaves the tiny ConvNeXt's kNN exactly where it started).
Breakages that 128 steps cannot tell from learning (MoCo's queue frozen, SimCLR's positives
taken from another image, SimSiam's stop-gradient removed) are checked on the mechanism by
tests/test_frameworks.py and tests/test_negatives.py: ``python bench/learning_margins.py``
measures both, ``bench/RESULTS.md`` has the table. Skipped, with the reason, when the real data
is absent."""

import pytest
from conftest import NEEDS_REAL_CIFAR, real_cifar_root
from learning import PINNED, assert_learns

ROOT = real_cifar_root()
pytestmark = [*NEEDS_REAL_CIFAR, pytest.mark.slow]


@pytest.mark.parametrize("name", PINNED)
def test_a_short_run_beats_its_untrained_encoder(name, tmp_path):
    assert_learns(name, ROOT, tmp_path / name)
