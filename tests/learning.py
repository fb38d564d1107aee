"""Short seeded runs on real CIFAR-10 whose kNN must beat their own untrained encoder.

Shared by ``tests/test_learning.py`` (seed 0 of each recipe, in CI) and
``bench/learning_margins.py`` (the spread over seeds that the pinned margins come from, and the
broken variants that each test must catch). Every run is an ordinary ``contrastlab fit`` of a
shipped preset with the overrides below; the untrained encoder's kNN is the run's own first
``knn/top1`` point (step 0), so a run measures its gain against itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import torch

from contrastlab.app.cli import main
from contrastlab.runs.records import read_rows

EPOCHS, SCHEDULE_EPOCHS, STEPS_PER_EPOCH = 4, 10, 32
STEPS = EPOCHS * STEPS_PER_EPOCH
"""Each run trains the first 4 epochs (128 steps of 64 images) of a 10-epoch cosine schedule: the
early phase of a real run, at its high learning rate (a whole 128-step schedule spends half of
it at a rate too low to leave the early dip of kNN)."""

COMMON = [
    "--data.train_subset",
    "2048",
    "--data.eval_subset",
    "1000",
    "--data.batch_size",
    "64",
    "--trainer.max_epochs",
    str(SCHEDULE_EPOCHS),
    "--trainer.check_val_every_n_epoch",
    str(EPOCHS),
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.callbacks+=learning.StopAfterEpochs",
    "--model.augment.scale",
    "[0.4, 1.0]",
    "--model.augment.jitter_prob",
    "0.5",
    "--model.augment.grayscale_prob",
    "0.1",
    # the schedule and statistics the margins were measured with, before the presets took the
    # ContrastiveCrop authors' cosine floor, per-epoch steps and normalisation
    "--model.lr_floor",
    "0",
    "--model.lr_batch",  # the learning rates as measured, not scaled to the batch of 64
    "null",
    "--model.lr_interval",
    "step",
    "--model.augment.std",
    "[0.2470, 0.2435, 0.2616]",
]
"""What every recipe shares: CIFAR-10 at 32 px with milder views than the recipe (crops of
40-100% of the image, colour jitter half the time, grayscale a tenth): with the recipe's views,
kNN first falls below the untrained encoder's and needs about 300 steps to climb back, too long
for CI; with these it rises from the start (bench/RESULTS.md). The network is
:func:`tiny_convnext`'s."""


class StopAfterEpochs(pl.Callback):
    """Ends training after :data:`EPOCHS` epochs (after that epoch's kNN)."""

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch + 1 >= EPOCHS:
            trainer.should_stop = True


@dataclass(frozen=True)
class Recipe:
    """A shipped preset, its overrides for the short run, and the pinned kNN margin (points
    above the untrained encoder) that the run must exceed; ``None`` while no CI-sized run of the
    recipe has been measured to leave the early dip (``bench/learning_margins.py`` probes it)."""

    preset: str
    overrides: tuple[str, ...]
    margin: float | None


def tiny_convnext(lr: float) -> tuple[str, ...]:
    """The options for timm's tiny test ConvNeXt with AdamW at ``lr``.

    Every recipe trains timm's 0.2 M-parameter test ConvNeXt (LayerNorm, 64 features, a 1 px
    stem so that 32 px images keep a 4x4 map) with AdamW, ConvNeXt's own optimiser. On the CIFAR
    ResNet-18 BYOL and SimSiam do not leave the early dip within a CI-sized run: its BatchNorm,
    identity in the untrained encoder, costs about 4.7 kNN points once it holds the data's
    statistics (a zero learning rate alone does that), and without negatives BYOL and SimSiam
    take longer than MoCo to make that up (bench/RESULTS.md). A network without batch statistics
    has no such offset, so its whole gain is learning (a zero learning rate gains exactly 0).
    Its steps are also 4-7x cheaper than the ResNet-18's, which is what moved MoCo v2, SynCo and
    SimCLR + ContrastiveCrop onto it too: on a 2-core AVX2 CPU their three ResNet runs took
    1,700 s of CI, these take about 70 s each."""
    return (
        "--model.backbone",
        "timm/test_convnext",
        "--model.backbone_kwargs",
        '{"patch_size": 1}',
        "--model.cifar_stem",
        "false",
        "--model.optimizer",
        "adamw",
        "--model.lr",
        str(lr),
        "--model.weight_decay",
        "0.05",
    )


RECIPES: dict[str, Recipe] = {
    "mocov2": Recipe(
        "cifar10/mocov2",
        (*tiny_convnext(lr=0.002), "--model.queue_size", "1024"),
        # seeds 0-2 gained +6.10, +4.60, +4.30; a zero learning rate +0.00 (a frozen queue
        # +3.70: not caught, see BROKEN)
        margin=2.0,
    ),
    "mocov2_synco": Recipe(
        "cifar10/mocov2_synco",
        (
            *tiny_convnext(lr=0.002),
            "--model.queue_size",
            "1024",
            "--model.synthetic.init_args.n_hard",
            "256",
            "--model.synthetic_warmup_epochs",
            "1",
        ),
        margin=2.0,  # seeds 0-2 gained +5.00, +4.20, +4.40; a zero learning rate +0.00
    ),
    "simclr_ccrop": Recipe(
        "cifar10/simclr_ccrop",
        (
            *tiny_convnext(lr=0.002),
            "--model.temperature",
            "0.1",
            "--model.crop.init_args.warmup_epochs",
            "2",
            "--model.crop.init_args.interval",
            "1",
            "--model.base_temperature",
            "null",
        ),
        # seeds 0-2 gained +6.70, +3.80, +6.40; a zero learning rate +0.00 (positives paired
        # with another image +3.70: not caught, see BROKEN)
        margin=1.5,
    ),
    "byol": Recipe(
        "cifar10/byol",
        tiny_convnext(lr=0.002),
        margin=1.5,  # seeds 0-2 gained +5.40, +4.80, +3.70; a zero learning rate +0.00
    ),
    "simsiam": Recipe(
        "cifar10/simsiam",
        # the projector the margin was measured with; zero-init residuals are a ResNet's
        (
            *tiny_convnext(lr=0.001),
            "--model.proj_layers",
            "2",
            "--model.zero_init_residual",
            "false",
        ),
        margin=0.5,  # seeds 0-4 gained +1.20, +3.70, +2.50, +2.70, +4.70; a zero lr +0.00
    ),
}
PINNED = [name for name, recipe in RECIPES.items() if recipe.margin is not None]
"""The recipes whose margins are pinned: the learning-regression tests."""


def fit_arguments(name: str, root: Path, run_dir: Path, seed: int = 0) -> list[str]:
    recipe = RECIPES[name]
    return [
        "fit",
        "--config",
        recipe.preset,
        "--data.root",
        str(root),
        "--trainer.default_root_dir",
        str(run_dir),
        f"--seed_everything={seed}",
        f"--model.seed={seed}",
        *COMMON,
        *recipe.overrides,
    ]


def assert_learns(name: str, root: Path, run_dir: Path) -> None:
    """Seed 0 of recipe ``name`` must beat its untrained encoder's kNN by its pinned margin."""
    untrained, trained = knn_gain(name, root, run_dir)
    margin = RECIPES[name].margin
    print(f"{name}: kNN {untrained:.2f}% untrained -> {trained:.2f}% after {STEPS} steps")
    assert trained > untrained + margin, (
        f"{name} learned {trained - untrained:+.2f} points in {STEPS} steps "
        f"({untrained:.2f}% -> {trained:.2f}%); the pinned margin is {margin}"
    )


def knn_gain(name: str, root: Path, run_dir: Path, seed: int = 0) -> tuple[float, float]:
    """Run recipe ``name``; return (untrained, trained) kNN top-1 from its ``metrics.csv``."""
    main(fit_arguments(name, root, run_dir, seed))
    _, rows = read_rows(run_dir / "metrics.csv")
    knn = [(int(r["epoch"]), float(r["knn/top1"])) for r in rows if r.get("knn/top1")]
    assert knn[0][0] == -1 and len(knn) >= 2, knn
    return knn[0][1], knn[-1][1]


# ----------------------------------------------------------------------------- broken methods


@contextlib.contextmanager
def patched(owner: object, name: str, value: object) -> Iterator[None]:
    original = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, original)


def frozen_queue() -> contextlib.AbstractContextManager:
    """MoCo's queue never takes the new keys: negatives stay the random initial vectors."""
    from contrastlab.negatives.queue import KeyQueue

    return patched(KeyQueue, "push", lambda self, keys, indices, labels=None: None)


def no_stop_gradient() -> contextlib.AbstractContextManager:
    """SimSiam's loss with the stop-gradient removed (the targets receive gradients)."""
    import contrastlab.methods.simsiam as simsiam

    def loss(p1, p2, z1, z2):
        cos = torch.nn.functional.cosine_similarity
        return -(cos(p1, z2).mean() + cos(p2, z1).mean()) / 2

    return patched(simsiam, "simsiam_loss", loss)


def zero_learning_rate() -> contextlib.AbstractContextManager:
    """Every optimiser step with a learning rate of 0 (BN statistics still move)."""
    from contrastlab.methods import base

    def factor(*args, **kwargs) -> float:
        return 0.0

    return patched(base, "schedule_factor", factor)


def shuffled_positives() -> contextlib.AbstractContextManager:
    """SimCLR's positive of each view is another image's view: nothing to be invariant to."""
    import contrastlab.methods.simclr as simclr

    original = simclr.ntxent_logits

    def logits(z, candidates, offset=0):
        found, positives = original(z, candidates, offset)
        return found, positives.roll(1)

    return patched(simclr, "ntxent_logits", logits)


Breakage = tuple[str, Callable[[], contextlib.AbstractContextManager]]

BROKEN: dict[str, list[Breakage]] = {
    "mocov2": [
        ("a zero learning rate", zero_learning_rate),
        (
            "a queue that never updates (not caught: fixed random negatives still teach)",
            frozen_queue,
        ),
    ],
    "mocov2_synco": [("a zero learning rate", zero_learning_rate)],
    "simclr_ccrop": [
        ("a zero learning rate", zero_learning_rate),
        ("positives paired with another image (not caught: it still learns)", shuffled_positives),
    ],
    "byol": [("a zero learning rate", zero_learning_rate)],
    "simsiam": [
        ("a zero learning rate", zero_learning_rate),
        ("the stop-gradient removed (not caught: no collapse yet)", no_stop_gradient),
    ],
}
"""For each recipe, the broken variants that bench/learning_margins.py runs: the first is the
one its test must fail on. The others show what 128 steps cannot catch: SimSiam without the
stop-gradient has not collapsed yet (``tests/test_frameworks.py`` checks the stop-gradient
itself), and MoCo against a queue that never updates still learns from its 1,024 fixed random
negatives, and SimCLR with each view's positive taken from another image still gains
(``tests/test_frameworks.py`` checks the queue's update and NT-Xent's pairs)."""
