"""Checkpoints that survive kills, pre-emption, full disks and diverging losses.

:class:`RunCheckpoint` writes ``<run dir>/checkpoints/last.ckpt`` (always that one file) at the
end of every epoch and, optionally, every ``every_n_steps`` steps and every ``every_minutes``
minutes. A save is two-phase: the checkpoint is written and fsynced to a temporary beside
``last.ckpt`` at the step boundary, and renamed over it only once the metrics of that step are
on disk, so the run record never lacks a step the checkpoint has passed. A stop signal is
answered at the next step boundary with a save and :class:`RunStopped`; a non-finite loss with
:class:`NonFiniteLoss`, before any save, so no NaN weights ever replace a good checkpoint.
"""

from __future__ import annotations

import errno
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from contrastlab.io import commit_file, stage_file
from contrastlab.options import check_options
from contrastlab.runs.resume import load_checkpoint_file
from contrastlab.runs.signals import StopSignals

CHECKPOINT_NAME = "last.ckpt"


class RunStopped(Exception):
    """Training stopped on a signal after saving; the CLI exits with ``128 + signum``."""

    def __init__(
        self, signum: signal.Signals, path: Path, epoch: int, step: int, requeue: bool = False
    ) -> None:
        self.signum, self.path, self.epoch, self.step = signum, path, epoch, step
        self.requeue = requeue  # asked for: requeue the SLURM job after a SIGUSR1
        super().__init__(f"stopped by {signum.name} at epoch {epoch}, step {step}; saved {path}")


class NonFiniteLoss(RuntimeError):
    """The loss (or a weight) became NaN or infinite; nothing was saved after it."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; the previous one is intact."""


def checkpoint_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints" / CHECKPOINT_NAME


class StagedCheckpointIO(TorchCheckpointIO):
    """Checkpoint IO in two phases: :meth:`save_checkpoint` writes a fsynced temporary beside
    the target, :meth:`commit` renames it over the target. Loads use ``weights_only=True``; a
    checkpoint the CLI already read is handed over instead of read twice."""

    def __init__(self) -> None:
        super().__init__()
        self.staged: tuple[Path, Path] | None = None
        self.preloaded: dict[Path, dict] = {}

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        self.discard()
        try:
            staged = stage_file(path, lambda f: torch.save(checkpoint, f))
        except Exception as error:
            raise write_error(Path(path), error) from None
        self.staged = (staged, Path(path))

    def commit(self) -> Path | None:
        if self.staged is None:
            return None
        staged, path = self.staged
        self.staged = None
        return commit_file(staged, path)

    def discard(self) -> None:
        if self.staged is not None:
            self.staged[0].unlink(missing_ok=True)
            self.staged = None

    def load_checkpoint(
        self, path: str | Path, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        preloaded = self.preloaded.pop(Path(path).resolve(), None)
        return preloaded if preloaded is not None else load_checkpoint_file(path)


def write_error(path: Path, error: BaseException) -> CheckpointWriteError:
    """One line for a failed checkpoint write: the system's reason (found anywhere in the
    exception chain, e.g. ENOSPC under torch's "unexpected pos"), free space, what is kept."""
    reason, cause = None, error
    while cause is not None and reason is None:
        if isinstance(cause, OSError) and cause.errno is not None:
            reason = cause.strerror or errno.errorcode.get(cause.errno, str(cause.errno))
        cause = cause.__cause__ or cause.__context__
    if reason is None:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
    free = free_bytes(path.parent)
    kept = f"the previous {path} is intact" if path.is_file() else f"no {path} was written"
    return CheckpointWriteError(
        f"could not write a checkpoint in {path.parent}: {reason} "
        f"({format_bytes(free)} free); {kept}"
    )


def free_bytes(folder: Path) -> int:
    """Free space on the file system that holds ``folder`` (or its nearest existing parent)."""
    folder = folder.absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def format_bytes(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} TB"


def estimate_checkpoint_bytes(model: torch.nn.Module) -> int:
    """Bytes of a checkpoint of ``model``: its state (weights, buffers, queue, boxes), one SGD
    momentum buffer per trained parameter, and 1 MB for the rest."""
    state = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    momentum = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return state + momentum + 1_000_000


def finishes_after_this_epoch(trainer: pl.Trainer) -> bool:
    """Whether the epoch ending now is the run's last (``max_epochs`` or ``max_steps``)."""
    epochs, steps = trainer.max_epochs, trainer.max_steps
    if epochs is not None and epochs > 0 and trainer.current_epoch + 1 >= epochs:
        return True
    return steps is not None and steps > 0 and trainer.global_step >= steps


def all_finite(module: torch.nn.Module) -> bool:
    """Whether every parameter and every floating buffer (BatchNorm statistics, MoCo's queue) is
    finite: a loss can still be finite at the step whose update overflowed them."""
    tensors = [*module.parameters(), *(b for b in module.buffers() if b.is_floating_point())]
    if not tensors:
        return True
    checks = [torch.isfinite(t).all().to(tensors[0].device) for t in tensors]
    return bool(torch.stack(checks).all())  # one device-to-host copy, not one per tensor


def count_saved_epoch_as_completed(fit_loop: dict[str, Any]) -> None:
    """An epoch-end checkpoint of an iteration-based run (``max_steps``) resumes at the next
    epoch, as Lightning resumes an epoch-based one: it saved in ``on_train_epoch_end``, when the
    epoch was processed but not yet counted completed, and Lightning would otherwise re-enter
    that epoch (and draw the next epoch's batches under the old epoch's number)."""
    progress = fit_loop.get("epoch_progress") or {}
    total, current = progress.get("total"), progress.get("current")
    if not total or total.get("processed") != total.get("completed", 0) + 1:
        return
    for counts in (total, current):
        counts["completed"] = counts["processed"]
    batches = fit_loop.get("epoch_loop.batch_progress") or {}
    if batches.get("current"):  # the next epoch starts at its first batch
        batches["current"] = dict.fromkeys(batches["current"], 0)
        batches["is_last_batch"] = False


class RunCheckpoint(Checkpoint):
    """``last.ckpt`` at every epoch end, optionally every ``every_n_steps`` steps and every
    ``every_minutes`` minutes; SIGTERM, SIGUSR1 and SIGINT stop the run at the next step
    boundary after a save; a non-finite loss stops it without one.

    Args:
        every_n_steps: also save every this many optimiser steps (``None``: epoch ends only).
        every_minutes: also save when this many minutes passed since the last save.
        requeue: under SLURM, requeue the job (``scontrol requeue``) after saving on SIGUSR1.

    In several processes the decisions are agreed (an all-reduce of three flags) at every
    ``trainer.log_every_n_steps``-th step and wherever a save is scheduled, so signals and the
    time trigger act within that many steps; one process decides at every step.
    """

    def __init__(
        self,
        every_n_steps: int | None = None,
        every_minutes: float | None = None,
        requeue: bool = True,
    ) -> None:
        check_options(
            "checkpoint", {"every_n_steps": every_n_steps, "every_minutes": every_minutes}
        )
        self.every_n_steps, self.every_minutes, self.requeue = every_n_steps, every_minutes, requeue
        self.signals = StopSignals()
        self.saved_step: int | None = None
        self._staged_step: int | None = None
        self._stop: signal.Signals | None = None
        self._last_save = time.monotonic()
        self._all_finite: torch.Tensor | None = None
        self._loader_states: list[dict] = []

    # ----------------------------------------------------------------- Lightning hooks

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        fit_loop = (checkpoint.get("loops") or {}).get("fit_loop") or {}
        self._loader_states = (fit_loop.get("state_dict") or {}).get("combined_loader") or []
        if trainer.max_steps is not None and trainer.max_steps > 0:
            count_saved_epoch_as_completed(fit_loop)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.signals.install()  # after Lightning's own handlers, which would exit 0
        self._last_save = time.monotonic()
        self._restore_loader_position(trainer)

    def _restore_loader_position(self, trainer: pl.Trainer) -> None:
        """Hand the saved loader position back (Lightning restores it only when the loader is
        built after the checkpoint is read; ``estimated_stepping_batches`` builds it before)."""
        loaders = trainer.train_dataloader
        loaders = loaders if isinstance(loaders, list | tuple) else [loaders]
        stateful = [dl for dl in loaders if hasattr(dl, "load_state_dict")]
        for loader, state in zip(stateful, self._loader_states, strict=False):
            loader.load_state_dict(state)
        self._loader_states = []

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._io(trainer).discard()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._commit(trainer)
        if self._stop is not None:
            raise self._stopped(self._stop, trainer, trainer.current_epoch)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._track_loss(outputs)
        step = trainer.global_step
        scheduled = bool(self.every_n_steps) and step % self.every_n_steps == 0
        single = trainer.world_size == 1
        if not (
            scheduled
            or step % max(1, trainer.log_every_n_steps) == 0
            or (single and (self.signals.received is not None or self._time_due()))
        ):
            return
        signum, time_due = self._agree(trainer, pl_module)
        if batch_idx + 1 >= trainer.num_training_batches:
            self._stop = signum  # the epoch-end save follows and answers it
            return
        if signum is not None or time_due or scheduled:
            self._stage(trainer, pl_module)
            self._stop = signum

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        signum, _ = self._agree(trainer, pl_module)
        signum = signum or self._stop
        self._stage(trainer, pl_module)
        self._commit(trainer)
        self._stop = None
        if signum is not None and not finishes_after_this_epoch(trainer):
            raise self._stopped(signum, trainer, trainer.current_epoch + 1)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._commit(trainer)
        self.signals.restore()  # before Lightning restores the handlers it replaced

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception) -> None:
        """A checkpoint staged before the error holds a good state: keep it."""
        self.signals.restore()
        self._commit(trainer)

    # ----------------------------------------------------------------- decisions

    def path(self, trainer: pl.Trainer) -> Path:
        return checkpoint_path(trainer.default_root_dir)

    def _stopped(self, signum: signal.Signals, trainer: pl.Trainer, epoch: int) -> RunStopped:
        requeue = self.requeue and signum == signal.SIGUSR1
        return RunStopped(signum, self.path(trainer), epoch, trainer.global_step, requeue)

    def _time_due(self) -> bool:
        if self.every_minutes is None:
            return False
        return time.monotonic() - self._last_save >= 60 * self.every_minutes

    def _track_loss(self, outputs: Any) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor):
            return
        finite = torch.isfinite(loss.detach()).all()
        self._all_finite = finite if self._all_finite is None else self._all_finite & finite

    def _agree(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> tuple[signal.Signals | None, bool]:
        """Every process's signal, time trigger and loss check, combined (max) across
        processes; raises :class:`NonFiniteLoss` when any loss since the last check was not
        finite."""
        received = self.signals.received
        flags = torch.tensor(
            [
                int(received) if received is not None else 0,
                int(self._time_due()),
                int(self._all_finite is not None and not bool(self._all_finite)),
            ],
            device=pl_module.device,
        )
        self._all_finite = None
        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        code, time_due, nonfinite = (int(v) for v in flags.tolist())
        if nonfinite:
            raise self._nonfinite(trainer, "the loss")
        return (signal.Signals(code) if code else None), bool(time_due)

    def _nonfinite(self, trainer: pl.Trainer, what: str) -> NonFiniteLoss:
        kept = (
            f"the last good checkpoint, {self.path(trainer)} (step {self.saved_step}), is kept"
            if self.saved_step is not None
            else f"no checkpoint of this run was written after it ({self.path(trainer)})"
        )
        return NonFiniteLoss(
            f"{what} became NaN or infinite by step {trainer.global_step} (epoch "
            f"{trainer.current_epoch}); stopped without saving: {kept}. Lower model.lr, raise "
            f"model.temperature or check the data."
        )

    # ----------------------------------------------------------------- saving

    def _io(self, trainer: pl.Trainer) -> StagedCheckpointIO:
        io = trainer.strategy.checkpoint_io
        if not isinstance(io, StagedCheckpointIO):
            raise TypeError("RunCheckpoint needs the StagedCheckpointIO plugin")
        return io

    def _stage(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Write the state of this step boundary to a temporary (all processes take part;
        the first process writes)."""
        if not all_finite(pl_module):
            raise self._nonfinite(trainer, "a weight or a statistic")
        trainer.save_checkpoint(self.path(trainer), weights_only=False)
        self._staged_step = trainer.global_step
        self._last_save = time.monotonic()

    def _commit(self, trainer: pl.Trainer) -> None:
        """Once this step's metrics are on disk, rename the staged checkpoint into place."""
        io = self._io(trainer)
        if io.staged is None:
            return
        for logger in trainer.loggers:
            logger.save()
        io.commit()
        self.saved_step = self._staged_step
