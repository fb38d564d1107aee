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
from conftest import real_cifar_root
from learning import PINNED, RECIPES, STEPS, knn_gain

ROOT = real_cifar_root()
pytestmark = [
    pytest.mark.realdata,
    pytest.mark.slow,
    pytest.mark.skipif(
        ROOT is None,
        reason="real CIFAR-10 not found under ../shared/data or "
        "$CONTRASTLAB_DATA (cifar-10-batches-py/)",
    ),
]


@pytest.mark.parametrize("name", PINNED)
def test_a_short_run_beats_its_untrained_encoder(name, tmp_path):
    untrained, trained = knn_gain(name, ROOT, tmp_path / name)
    margin = RECIPES[name].margin
    print(f"{name}: kNN {untrained:.2f}% untrained -> {trained:.2f}% after {STEPS} steps")
    assert trained > untrained + margin, (
        f"{name} learned {trained - untrained:+.2f} points in {STEPS} steps "
        f"({untrained:.2f}% -> {trained:.2f}%); the pinned margin is {margin}"
    )
