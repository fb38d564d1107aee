"""Callbacks the tests pass to ``contrastlab fit`` by name (``--trainer.callbacks+=...``).

Free of side effects on import (conftest sets torch's thread count, which changes a float
reduction's last bits): a subprocess that loads one of these computes as one that does not.
"""

from __future__ import annotations

import lightning.pytorch as pl


class StopAfterFirstEpoch(pl.Callback):
    """Stands in for a crash right after epoch 0's checkpoint (the run stops there)."""

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.should_stop = True
