"""Lightning wiring for ``contrastlab fit``: the CLI, atomic checkpoints, run directory, summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_info

from contrastlab.cli import suggest_keys
from contrastlab.data.module import ContrastDataModule
from contrastlab.io import atomic_save, load_tensors
from contrastlab.methods.base import ContrastiveMethod
from contrastlab.precision import default_precision


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint to a temporary file in the same folder, fsyncs it, then renames it
    over the target, so a crash mid-write leaves the previous checkpoint intact. Loads with
    ``weights_only=True`` (no code runs from an untrusted file)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        atomic_save(checkpoint, path)

    def load_checkpoint(
        self, path: str | Path, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        return load_checkpoint_file(path)


def load_checkpoint_file(path: str | Path) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` onto the CPU, with a clear error if absent."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return load_tensors(path)


class RunSummary(pl.Callback):
    """Prints one line when fitting ends: epochs, loss, kNN accuracy, throughput, run dir."""

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = trainer.callback_metrics
        parts = [f"epochs {trainer.current_epoch}", f"steps {trainer.global_step}"]
        for key, label in (
            ("train/loss_epoch", "loss"),
            ("knn/top1", "kNN top-1 %"),
            ("train/images_per_sec", "images/s"),
        ):
            if key in metrics:
                parts.append(f"{label} {float(metrics[key]):.2f}")
        hp = pl_module.hparams
        if "knn/top1" in metrics:
            parts.append(f"(kNN k={hp.get('knn_k')}, t={hp.get('knn_t')})")
        parts.append(f"run dir {trainer.default_root_dir}")
        rank_zero_info("contrastlab summary: " + ", ".join(parts))


class ContrastCLI(LightningCLI):
    """LightningCLI with contrastlab's defaults: any :class:`ContrastiveMethod` as the model,
    TensorBoard + CSV logs and ``checkpoints/last.ckpt`` in ``trainer.default_root_dir``,
    atomic checkpoint writes, the resolved config saved beside them, and key suggestions for
    mistyped options."""

    def __init__(self, args: list[str]) -> None:
        super().__init__(
            ContrastiveMethod,
            ContrastDataModule,
            subclass_mode_model=True,
            args=args,
            save_config_kwargs={"overwrite": True},
            trainer_defaults={
                "precision": default_precision(),
                "num_sanity_val_steps": 0,
                "use_distributed_sampler": False,
                "default_root_dir": "runs/default",
            },
            parser_kwargs={
                "exit_on_error": False,
                "allow_abbrev": False,
                "fit": {"exit_on_error": False, "allow_abbrev": False},
            },
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        try:
            super().parse_arguments(parser, args)
        except Exception as error:  # jsonargparse raises ArgumentError / ParserError
            valid = sorted(_flat_keys(parser))
            raise SystemExit(f"contrastlab fit: {suggest_keys(str(error), valid)}") from None

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list) -> pl.Trainer:
        run_dir = Path(config.get("default_root_dir") or "runs/default")
        if not config.get("logger") or config.get("logger") is True:
            config["logger"] = [
                TensorBoardLogger(run_dir, name="", version=""),
                CSVLogger(run_dir, name="", version=""),
            ]
        callbacks = [
            *callbacks,
            ModelCheckpoint(
                dirpath=run_dir / "checkpoints", save_last=True, save_top_k=0, every_n_epochs=1
            ),
            RunSummary(),
        ]
        config["plugins"] = [*(config.get("plugins") or []), AtomicCheckpointIO()]
        return super()._instantiate_trainer(config, callbacks)


def _flat_keys(parser: LightningArgumentParser) -> set[str]:
    """Every dotted option the ``fit`` parser knows, including the model's init arguments."""
    import inspect

    fit_parser = parser
    actions = getattr(parser, "_subcommands_action", None)
    if actions is not None:
        fit_parser = actions._name_parser_map.get("fit", parser)
    keys = {a.dest for a in fit_parser._actions if a.dest and a.dest != "help"}
    model_keys: set[str] = set()
    for cls in _all_subclasses(ContrastiveMethod) | {ContrastiveMethod}:
        if "__init__" in vars(cls):
            model_keys |= set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs"}
    keys |= {f"model.{k}" for k in model_keys} | {f"model.init_args.{k}" for k in model_keys}
    return keys


def _all_subclasses(cls: type) -> set[type]:
    found = set(cls.__subclasses__())
    return found.union(*(_all_subclasses(c) for c in found)) if found else found
