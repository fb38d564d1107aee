"""Shared fixtures: tiny datasets written in the real on-disk formats."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import ClassVar

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from callbacks import StopAfterFirstEpoch  # noqa: F401 (conftest.StopAfterFirstEpoch)

WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
"""pytest-xdist's worker processes (1 without it): they share the machine's cores."""
THREADS = max(1, min(2, os.cpu_count() or 1) // WORKERS)
torch.set_num_threads(THREADS)
if WORKERS > 1:  # the runs the tests launch share the cores too
    os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
os.environ["CONTRASTLAB_PRECISION"] = "32-true"
"""Every run and evaluation loop of the tests (and of the processes they launch) trains in fp32
without timing the candidates first: each test session starts with an empty cache, and the
timings cost several minutes of CI (bf16 probes on CPUs without bf16 arithmetic, fp32 at a
full batch, twice). The numbers tests compare are fp32 on every CPU. tests/test_precision.py
unsets it to test the measurement."""


LONGEST_FIRST = (
    "test_learning.py",  # 760 s of worker time on a 2-core AMD EPYC (2026-12-03)
    "test_distributed.py",  # 510 s
    "test_crashproof.py",  # 270 s
    "test_reproduce.py",  # 210 s
    "test_training.py",  # 155 s
    "test_folders.py",  # 115 s
    "test_classifier.py",  # 95 s
    "test_precision.py",  # 85 s
)
"""The slowest test files, longest first: scripts/test.sh hands whole files to its two workers
in collection order (``--dist loadfile --no-loadscope-reorder``), so the longest start first and
the short ones fill the gaps; the rest follow in their usual order. (xdist's own reordering, by
number of tests, left the five 150 s learning runs to one worker at the end.)"""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: n for n, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable


def device_from_environment(value: str | None) -> torch.device:
    """``CONTRASTLAB_TEST_DEVICE``: ``cpu`` (the default) or ``cuda[:N]``, where the tests'
    training runs (and the tensors of the tests that import :data:`TEST_DEVICE`) go."""
    try:
        device = torch.device(value or "cpu")
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise pytest.UsageError(f"CONTRASTLAB_TEST_DEVICE={value!r}: expected cpu or cuda[:N]")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError(f"CONTRASTLAB_TEST_DEVICE={value!r}, but torch sees no CUDA device")
    return device


TEST_DEVICE = device_from_environment(os.environ.get("CONTRASTLAB_TEST_DEVICE"))
ACCELERATOR = ["--trainer.accelerator", "gpu" if TEST_DEVICE.type == "cuda" else "cpu"]
"""The trainer option that puts the tests' training runs on :data:`TEST_DEVICE`."""


SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def real_cifar_root() -> Path | None:
    """The real CIFAR-10 (``$CONTRASTLAB_DATA`` or ``../shared/data``), or ``None``."""
    for root in (os.environ.get("CONTRASTLAB_DATA"), SHARED_DATA):
        if root and (Path(root) / "cifar-10-batches-py" / "batches.meta").exists():
            return Path(root)
    return None


NEEDS_REAL_CIFAR = [
    pytest.mark.realdata,
    pytest.mark.skipif(
        real_cifar_root() is None,
        reason="real CIFAR-10 not found under ../shared/data or "
        "$CONTRASTLAB_DATA (cifar-10-batches-py/)",
    ),
]
"""The marks of a test module that needs the real CIFAR-10: skipped, with the reason, without."""


def write_cifar(
    root: Path,
    variant: str = "cifar10",
    per_batch: int = 20,
    seed: int = 0,
    structured: bool = False,
) -> Path:
    """Write a tiny CIFAR in the official layout (protocol-2 pickles of dicts).

    With ``structured``, each class has its own colour so that features can separate them.
    """
    rng = np.random.default_rng(seed)
    classes = 10 if variant == "cifar10" else 100
    folder = root / ("cifar-10-batches-py" if variant == "cifar10" else "cifar-100-python")
    folder.mkdir(parents=True, exist_ok=True)
    label_key = "labels" if variant == "cifar10" else "fine_labels"
    names = (
        [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        if variant == "cifar10"
        else ["train", "test"]
    )
    for name in names:
        labels = rng.integers(0, classes, per_batch)
        if structured:
            base = (labels[:, None] * 25 % 256).astype(np.uint8)
            data = np.clip(base + rng.integers(0, 30, (per_batch, 3072)), 0, 255).astype(np.uint8)
        else:
            data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        batch = {"batch_label": name, label_key: labels.tolist(), "data": data}
        with (folder / name).open("wb") as f:
            pickle.dump(batch, f, protocol=2)
    meta_name, key = (
        ("batches.meta", "label_names") if variant == "cifar10" else ("meta", "fine_label_names")
    )
    with (folder / meta_name).open("wb") as f:
        pickle.dump({key: [f"class{i}" for i in range(classes)]}, f, protocol=2)
    return folder


@pytest.fixture(scope="session", autouse=True)
def precision_cache(tmp_path_factory) -> Path:
    """Precision decisions go to a fresh cache directory of the test session (and its
    subprocesses), never the user's."""
    folder = tmp_path_factory.mktemp("cache")
    os.environ["CONTRASTLAB_CACHE"] = str(folder)
    return folder


@pytest.fixture
def tiny_cifar(tmp_path: Path) -> Path:
    write_cifar(tmp_path, structured=True)
    return tmp_path


QUIET_BATCHES_OF_16 = [
    "--data.batch_size",
    "16",
    "--data.eval_batch_size",
    "64",
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.log_every_n_steps",
    "1",
    *ACCELERATOR,
]
"""CLI options of the tiny training runs: batches of 16, no progress bar, log every step, on
the test device."""

TINY_MOCO = ["--model.augment.size", "8", "--model.queue_size", "40", "--model.bn_splits", "2"]
"""CLI options of the tiny MoCo v2 runs: 8-px views, a queue of 40, two BN groups."""


def tiny_moco_fit(run_dir: Path, data_root: Path, epochs: int, *extra: str) -> list[str]:
    """``contrastlab fit`` arguments of a tiny MoCo v2 run of ``epochs`` epochs in ``run_dir``."""
    return [
        "fit",
        "--config",
        "cifar10/mocov2",
        "--data.root",
        str(data_root),
        "--trainer.default_root_dir",
        str(run_dir),
        *TINY_MOCO,
        *QUIET_BATCHES_OF_16,
        "--trainer.max_epochs",
        str(epochs),
        *extra,
    ]


class KeepUntrainedState(pl.Callback):
    """Keeps the model's state dict as it is before the first training step (callbacks'
    ``on_train_start`` runs before the kNN monitor's untrained pass when listed first)."""

    states: ClassVar[list[dict[str, torch.Tensor]]] = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step == 0:
            state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
            KeepUntrainedState.states.append(state)


CCROP_FIRST = [
    "--model.crop.init_args.warmup_epochs",
    "0",
    "--model.crop.init_args.threshold",
    "0.5",
]
"""ContrastiveCrop localises before the first step, so that every step uses its crops."""

CCROP_ONCE = [*CCROP_FIRST, "--model.crop.init_args.interval", "5"]
"""ContrastiveCrop localises before epoch 0 only, so epoch 1 of a resumed run must use the boxes
restored from the checkpoint (a store that did not survive would change the crops)."""


def fit_run(run_dir: Path, data_root: Path, config: str, *options: str) -> dict:
    """``contrastlab fit --config config`` on ``data_root`` into ``run_dir`` with ``options``;
    returns the run's ``last.ckpt``."""
    from contrastlab.app.cli import main
    from contrastlab.runs.resume import load_checkpoint_file

    root = ["--data.root", str(data_root), "--trainer.default_root_dir", str(run_dir)]
    main(["fit", "--config", config, *root, *ACCELERATOR, *options])
    return load_checkpoint_file(run_dir / "checkpoints" / "last.ckpt")
