"""Each epoch's training statistics as a Lightning callback: mean loss, images per second and
the share of step time spent waiting for data."""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl
import torch

from contrastlab.distributed import world


class DataWaitClock:
    """How much of the training steps' time goes to waiting for data.

    ``wait`` runs from the end of the previous step (or the epoch's start) to the arrival of
    the next batch, ``busy`` from its arrival to the end of its step; the share is
    ``wait / (wait + busy)``. Localisation and kNN passes fall outside both; a checkpoint
    saved within an epoch counts as waiting. On a GPU, work queued on the device counts where
    the host waits for it.
    """

    def __init__(self) -> None:
        self.restart()

    def restart(self) -> None:
        self.wait = self.busy = 0.0
        self.mark = time.perf_counter()

    def batch_arrived(self) -> None:
        now = time.perf_counter()
        self.wait += now - self.mark
        self.mark = now

    def step_done(self) -> None:
        now = time.perf_counter()
        self.busy += now - self.mark
        self.mark = now

    def share(self) -> float | None:
        return self.wait / (self.wait + self.busy) if self.busy > 0 else None


def batch_size(batch: Any) -> int:
    """Images in a training batch (the first tensor of the batch)."""
    first = batch[0] if isinstance(batch, list | tuple) else batch
    return len(first)


class EpochStatistics(pl.Callback):
    """At each epoch's end: ``train/loss_epoch`` (the mean of the steps' losses),
    ``train/images_per_sec`` (all processes' images over this process's wall time) and
    ``train/data_wait`` (:class:`DataWaitClock`), shown in the progress bar and the run
    summary, and written to the loggers at the epoch's last step, so they are on disk before
    the epoch-end checkpoint is committed. A mid-epoch checkpoint holds the running loss sum
    (``checkpoint["contrastlab"]["epoch_loss"]``), so a resumed epoch's mean is the whole
    epoch's. Work a module does at the epoch's start (ContrastiveCrop's localisation) is left
    out when the module stamps ``epoch_ready = time.perf_counter()`` after it.
    """

    def __init__(self) -> None:
        self.clock = DataWaitClock()
        self.per_process_rate: float | None = None
        """The last whole epoch's images/s of this process (data waits included)."""
        self._restart()

    def _restart(self) -> None:
        self.start, self.images = time.perf_counter(), 0
        self.loss_sum, self.steps = torch.zeros(()), 0  # the sum stays on the loss's device
        self.clock.restart()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start = time.perf_counter()  # also when resumed mid-epoch
        self.clock.restart()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restart()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        ready = getattr(pl_module, "epoch_ready", None)
        if self.steps == 0 and ready is not None and ready > self.clock.mark:
            self.start += ready - self.clock.mark  # the module's epoch-start work is left out
            self.clock.mark = ready
        self.clock.batch_arrived()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None:
            self.loss_sum = self.loss_sum.to(loss.device) + loss.detach().float()
            self.steps += 1
        self.images += batch_size(batch)
        self.clock.step_done()

    def data_wait_share(self) -> float | None:
        """This epoch's share of step time spent waiting for the next batch (``None`` before
        the first step)."""
        return self.clock.share()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        elapsed = time.perf_counter() - self.start
        self.per_process_rate = self.images / max(elapsed, 1e-9)
        summary = {
            "train/loss_epoch": float(self.loss_sum) / max(1, self.steps),
            "train/images_per_sec": self.per_process_rate * world()[1],
        }
        wait = self.clock.share()
        if wait is not None:
            summary["train/data_wait"] = wait
        for name, value in summary.items():
            pl_module.log(name, value, logger=False)  # progress bar and the run summary
        for logger in trainer.loggers:
            logger.log_metrics({**summary, "epoch": trainer.current_epoch}, trainer.global_step - 1)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.setdefault("contrastlab", {})
        state["epoch_loss"] = (self.loss_sum.detach().cpu(), self.steps)

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("contrastlab") or {}
        if "epoch_loss" in state:  # a mid-epoch checkpoint continues the epoch's mean
            self.loss_sum, self.steps = state["epoch_loss"][0].clone(), state["epoch_loss"][1]


def epoch_statistics(trainer: pl.Trainer) -> EpochStatistics | None:
    """The trainer's epoch statistics, if it keeps them."""
    return next((c for c in trainer.callbacks if isinstance(c, EpochStatistics)), None)
