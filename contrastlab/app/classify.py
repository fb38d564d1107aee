"""The papers' linear probe and semi-supervised fine-tuning on image folders, on the run
machinery: a Lightning ``Trainer`` over any number of processes and nodes, ``last.ckpt`` at
every epoch and at stop signals, exact resume, ``metrics.csv`` and TensorBoard events, a
progress bar with the run's ETA (:mod:`contrastlab.eval.classifier` is what trains).

Each run has its own directory beside the pretraining run's: ``<run dir>/eval/linear_paper/``
and ``<run dir>/eval/finetune_<labels>/`` (the backbone-lr sweep's runs under ``sweep/``).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from contrastlab.app.console import note
from contrastlab.app.fit import RunDirectoryError, RunProgressBar
from contrastlab.distributed import world
from contrastlab.eval.classifier import (
    ClassifierProtocol,
    ClassifierTraining,
    LabelledSplits,
)
from contrastlab.eval.finetune import FinetuneResult
from contrastlab.eval.linear import HOLDOUT_FRACTION, ProbeResult, holdout_split
from contrastlab.io import remove_stale_temporaries
from contrastlab.precision import default_precision
from contrastlab.runs.checkpoints import RunCheckpoint, StagedCheckpointIO, checkpoint_path
from contrastlab.runs.records import run_loggers
from contrastlab.runs.resume import CheckpointError, load_checkpoint_file

if TYPE_CHECKING:
    from contrastlab.app.evaluate import Evaluation


@dataclass(frozen=True)
class Launch:
    """Where a classifier run trains: Lightning's ``accelerator``, ``devices`` per node and
    ``num_nodes`` (under ``torchrun`` they must match its processes), ``precision`` (default:
    bf16 autocast where it is fast, else fp32), data-loader ``workers`` (default: the
    pretraining run's), and whether to show the progress bar."""

    accelerator: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    precision: str | None = None
    workers: int | None = None
    progress: bool = True

    @property
    def processes(self) -> int:
        return self.devices * self.num_nodes


def check_resumable(path: Path, checkpoint: dict, protocol: ClassifierProtocol) -> None:
    """A resumed classifier run keeps the protocol it was started with."""
    saved = (checkpoint.get("contrastlab") or {}).get("protocol")
    if saved is None:
        raise CheckpointError(f"{path} is not a classifier run's checkpoint")
    wanted = asdict(protocol)
    changes = [f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in wanted.items() if saved.get(k) != v]
    if changes:
        raise CheckpointError(
            f"cannot resume {path} with other settings ({'; '.join(changes)}): drop them, or "
            f"remove {path.parent.parent} to start over"
        )


def train_classifier(
    module: ClassifierTraining,
    splits: LabelledSplits,
    run_dir: Path,
    launch: Launch,
    resume: bool,
) -> list[tuple[float, float]]:
    """Fit ``module`` on ``splits`` for its protocol's epochs in ``run_dir`` (continuing its
    ``last.ckpt`` with ``resume``); returns the per-epoch evaluation ``(top-1, top-5)``."""
    trainer, checkpoint = run_trainer(
        run_dir,
        launch,
        resume,
        lambda path, saved: check_resumable(path, saved, module.protocol),
        max_epochs=module.protocol.epochs,
    )
    trainer.fit(module, datamodule=splits, ckpt_path=str(checkpoint) if checkpoint else None)
    return module.history


def run_trainer(
    run_dir: Path,
    launch: Launch,
    resume: bool,
    check: Callable[[Path, dict], None],
    **limits: Any,
) -> tuple[pl.Trainer, Path | None]:
    """A ``Trainer`` on the run machinery in ``run_dir`` (``last.ckpt`` at every epoch end and
    at stop signals, ``metrics.csv`` and TensorBoard, the progress bar with the run's ETA) with
    ``limits`` (``max_epochs``, ``max_steps``, ...), and the checkpoint to continue from: the
    run's ``last.ckpt`` when ``resume`` (after ``check(path, checkpoint)`` accepts it), else
    ``None``; a run directory already holding a run without ``resume`` is an error."""
    last = checkpoint_path(run_dir)
    io = StagedCheckpointIO()
    checkpoint = None
    if last.is_file():
        if not resume:
            raise RunDirectoryError(
                f"{run_dir} already holds a run ({last}): add --resume to continue it, or "
                f"remove {run_dir} to start over"
            )
        checkpoint = load_checkpoint_file(last)
        check(last, checkpoint)
        io.preloaded[last.resolve()] = checkpoint
        note(f"resuming {last} from step {checkpoint.get('global_step')}")
    if rank_zero_only.rank == 0:  # from the launcher's environment: no process group yet
        remove_stale_temporaries(run_dir / "checkpoints")
    callbacks: list[pl.Callback] = [RunCheckpoint()]
    if launch.progress:
        callbacks.append(RunProgressBar())
    trainer = pl.Trainer(
        default_root_dir=str(run_dir),
        accelerator=launch.accelerator,
        devices=launch.devices,
        num_nodes=launch.num_nodes,
        strategy="ddp" if launch.processes > 1 else "auto",
        precision=launch.precision or default_precision(),
        logger=run_loggers(run_dir, int(checkpoint.get("global_step", 0)) if checkpoint else 0),
        callbacks=callbacks,
        plugins=[io],
        num_sanity_val_steps=0,
        use_distributed_sampler=False,  # the loaders split every global batch themselves
        enable_progress_bar=launch.progress,
        enable_model_summary=False,
        log_every_n_steps=1,
        **limits,
    )
    return trainer, last if checkpoint is not None else None


def _splits(
    run: Evaluation,
    protocol: ClassifierProtocol,
    launch: Launch,
    eval_split: str,
    train_rows: torch.Tensor | None,
    eval_rows: torch.Tensor | None,
) -> LabelledSplits:
    if protocol.batch_size % launch.processes:
        raise ValueError(
            f"batch size {protocol.batch_size} (the global batch) does not divide over "
            f"{launch.processes} processes"
        )
    if launch.workers is not None:
        run.data.num_workers = launch.workers
    train_split, _ = run.splits(None, None)
    splits = LabelledSplits(
        run.data, train_split, eval_split, protocol.batch_size, train_rows, eval_rows
    )
    images = len(splits.labels("train"))
    if images < protocol.batch_size:
        raise ValueError(
            f"{images} labelled training images cannot fill one global batch of "
            f"{protocol.batch_size}; lower --batch-size"
        )
    return splits


def _classes(splits: LabelledSplits) -> int:
    labels = torch.cat([splits.labels("train"), splits.labels("eval")])
    if (labels < 0).any():
        raise ValueError("a classifier needs labelled splits (class sub-folders)")
    return int(labels.max()) + 1


def _module(run: Evaluation, splits: LabelledSplits, protocol: ClassifierProtocol):
    return ClassifierTraining(
        copy.deepcopy(run.model.backbone),  # each run (a sweep's too) starts from the same
        run.model.augment,
        _classes(splits),
        protocol,
        seed=run.data.seed,
        channels_last=bool(run.model.hparams.get("channels_last", True)),
    )


def best_epoch(history: list[tuple[float, float]]) -> int:
    """The 1-based epoch of the highest top-1 (the earliest among equals)."""
    return max(range(len(history)), key=lambda e: (history[e][0], -e)) + 1


def streaming_probe(
    run: Evaluation,
    protocol: ClassifierProtocol,
    train_subset: int | None,
    eval_subset: int | None,
    launch: Launch | None,
    resume: bool,
) -> ProbeResult:
    """The paper linear probe streaming from the run's folder (``<run dir>/eval/linear_paper``);
    optionally on seeded subsets of the training and evaluation splits."""
    launch = launch or Launch()
    start = time.perf_counter()
    train_split, eval_split = run.splits(None, None)
    train_rows = _subset_rows(run, train_split, train_subset)
    eval_rows = _subset_rows(run, eval_split, eval_subset)
    splits = _splits(run, protocol, launch, eval_split, train_rows, eval_rows)
    module = _module(run, splits, protocol)
    history = train_classifier(
        module, splits, run.cache.directory.parent / "eval" / "linear_paper", launch, resume
    )
    best = best_epoch(history)
    result = ProbeResult(
        mode="paper",
        epochs=protocol.epochs,
        top1=history[-1][0],
        top5=history[-1][1],
        best_top1=history[best - 1][0],
        best_epoch=best,
        seconds=time.perf_counter() - start,
        lr=protocol.head_lr,
        batch_size=protocol.batch_size,
        train_images=len(splits.labels("train")),
        eval_images=len(splits.labels("eval")),
    )
    if world()[0] == 0:
        splits_used = {"train_split": train_split, "eval_split": eval_split}
        run.save("linear_paper", {**result.to_dict(), **splits_used, "processes": world()[1]})
    return result


def _subset_rows(run: Evaluation, split: str, count: int | None) -> torch.Tensor | None:
    from contrastlab.data.module import seeded_subset

    if count is None:
        return None
    size = len(run.data.split_dataset(split))
    if count > size:
        raise ValueError(f"a subset of {count} from the {split} split, which has {size} images")
    return seeded_subset(size, count, run.data.seed).sort().values


def streaming_finetune(
    run: Evaluation,
    labelled: torch.Tensor,
    labels_text: str,
    protocol: ClassifierProtocol,
    sweep: tuple[float, ...],
    eval_subset: int | None,
    launch: Launch | None,
    resume: bool,
    run_name: str,
) -> FinetuneResult:
    """Semi-supervised fine-tuning streaming from the run's folder on the ``labelled``
    training images. With ``sweep`` (backbone learning rates), each candidate first trains on
    the labelled images less a seeded held-out tenth and is scored (last epoch top-1) on that
    tenth's centre views; the best (ties to the smaller) trains on all of them. The evaluation
    split is never used to choose."""
    launch = launch or Launch()
    start = time.perf_counter()
    train_split, eval_split = run.splits(None, None)
    folder = run.cache.directory.parent / "eval" / run_name
    scores, where = None, None
    if sweep:
        kept, held = holdout_split(len(labelled), run.data.seed)
        scores = {}
        for lr in sweep:
            candidate = ClassifierProtocol(**{**asdict(protocol), "backbone_lr": lr})
            splits = _splits(run, candidate, launch, train_split, labelled[kept], labelled[held])
            history = train_classifier(
                _module(run, splits, candidate), splits, folder / "sweep" / f"lr_{lr:g}",
                launch, resume,
            )  # fmt: skip
            scores[f"{lr:g}"] = history[-1][0]
        chosen = max(sweep, key=lambda lr: (scores[f"{lr:g}"], -lr))
        protocol = ClassifierProtocol(**{**asdict(protocol), "backbone_lr": chosen})
        where = (
            f"a held-out {HOLDOUT_FRACTION:.0%} of the labelled images ({len(held)} of "
            f"{len(labelled)}; the candidates trained on the other {len(kept)})"
        )
    eval_rows = _subset_rows(run, eval_split, eval_subset)
    splits = _splits(run, protocol, launch, eval_split, labelled, eval_rows)
    history = train_classifier(_module(run, splits, protocol), splits, folder, launch, resume)
    best = best_epoch(history)
    result = FinetuneResult(
        labels=labels_text,
        labelled_images=len(labelled),
        epochs=protocol.epochs,
        top1=history[-1][0],
        top5=history[-1][1],
        seconds=time.perf_counter() - start,
        labelled_indices=labelled.tolist(),
        lr=protocol.backbone_lr,
        head_lr=protocol.head_lr,
        batch_size=protocol.batch_size,
        best_top1=history[best - 1][0],
        best_epoch=best,
        sweep=scores,
        sweep_split=where,
    )
    return result
