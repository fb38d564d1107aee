"""Lightning wiring for ``contrastlab fit``: the CLI, crash-proof checkpoints and record,
resume rules, pre-flight checks of the run directory, and the run summary."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from contrastlab.app.console import is_first_process, is_verbose, note
from contrastlab.app.export import export_metadata, load_snippet
from contrastlab.data.module import ContrastDataModule
from contrastlab.eval.monitors import KnnMonitor, RankMeMonitor, knn_monitor, rankme_monitor
from contrastlab.io import remove_stale_temporaries
from contrastlab.methods.base import ContrastiveMethod
from contrastlab.options import OptionError, check_divides, check_options, suggest_keys
from contrastlab.precision import (
    FIXED_ENV,
    PrecisionChoice,
    cache_file,
    cached_precision,
    choose_precision,
    contradicts,
    default_precision,
    device_name,
    fixed_precision,
    forget_precision,
)
from contrastlab.presets import list_presets, preset_path
from contrastlab.runs.checkpoints import (
    RunCheckpoint,
    StagedCheckpointIO,
    checkpoint_path,
    estimate_checkpoint_bytes,
    format_bytes,
    free_bytes,
)
from contrastlab.runs.records import run_loggers
from contrastlab.runs.resume import (
    CheckpointError,
    load_checkpoint_file,
    method_arguments,
    method_class,
    option_defaults,
    resume_changes,
    schedule_note,
)
from contrastlab.runs.run_info import RunInfo, preset_and_options
from contrastlab.runs.statistics import EpochStatistics, epoch_statistics
from contrastlab.runs.view_grid import ViewGrid
from contrastlab.schedules import batch_scaled_lr

__all__ = ["ContrastCLI", "RunDirectoryError", "load_checkpoint_file"]


class RunDirectoryError(OSError):
    """The run directory cannot take this run's checkpoints (the message is one line)."""


class RunSummary(pl.Callback):
    """Prints one line when fitting ends: epochs, loss, kNN accuracy of the untrained and the
    trained encoder, throughput, the last epoch's share of step time spent waiting for data,
    run dir."""

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if is_first_process():
            line = "contrastlab summary: " + ", ".join(summary_parts(trainer, pl_module))
            print(line, file=sys.stderr, flush=True)
            print(encoder_hint(trainer, pl_module), file=sys.stderr, flush=True)


def encoder_hint(trainer: pl.Trainer, model: pl.LightningModule) -> str:
    """How to take the trained encoder elsewhere: the export command and the plain timm /
    PyTorch lines that load its file (:func:`contrastlab.app.export.load_snippet`)."""
    checkpoint = checkpoint_path(Path(trainer.default_root_dir))
    snippet = load_snippet("timm", export_metadata(model, "timm"), "encoder.pth")
    return (
        f"contrastlab: the encoder, for plain timm / PyTorch: contrastlab export --checkpoint "
        f"{checkpoint} --format timm --out encoder.pth, then\n"
        + "".join(f"    {line}\n" for line in snippet.splitlines())
        + f"  embeddings of a folder: contrastlab embed --checkpoint {checkpoint} --folder DIR"
    )


class RunAnnouncement(pl.Callback):
    """Two lines once the data is read: what was found, and what this run will do."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        data = trainer.datamodule
        if stage != "fit" or not isinstance(data, ContrastDataModule):
            return
        note(f"data: {data.description()}")
        note(f"run: {run_settings(trainer, pl_module, data)}")
        for line in (lr_note(pl_module), shuffle_bn_note(trainer, pl_module)):
            if line is not None:
                note(line)


def lr_note(model: ContrastiveMethod) -> str | None:
    """What the batch did to the learning rate, when the run's global batch is not the one the
    recipe's ``lr`` was written for (``None`` when it is, or the recipe names none)."""
    hp, batch = model.hparams, model.global_batch()
    written_for = hp.get("lr_batch")
    if batch is None or written_for is None or batch == written_for:
        return None
    if hp.get("lr_scaling", "linear") == "keep":
        linear = batch_scaled_lr(hp.lr, written_for, batch, "linear")
        return (
            f"warning: model.lr {hp.lr:g} was written for a global batch of {written_for}; this "
            f"run's is {batch} and keeps it (model.lr_scaling keep; the linear rule would give "
            f"{linear:.4g})"
        )
    return (
        f"lr {model.run_lr():.4g}: model.lr {hp.lr:g} was written for a global batch of "
        f"{written_for}, this run's is {batch} ({hp.lr_scaling} scaling; --model.lr_scaling "
        f"keep trains at {hp.lr:g})"
    )


def shuffle_bn_note(trainer: pl.Trainer, model: ContrastiveMethod) -> str | None:
    """Shuffle-BN permutes keys across BatchNorm groups; with a single group it does nothing."""
    hp = model.hparams
    if not hp.get("shuffle_bn") or trainer.world_size * hp.get("bn_splits", 1) > 1:
        return None
    return (
        "warning: shuffle-BN with one BatchNorm group (1 process, model.bn_splits 1) does "
        "nothing, so the keys' batch statistics can leak the positive; set model.bn_splits to "
        "the GPUs the recipe assumes (MoCo: 8)"
    )


def run_info(given: list[str], trainer_config: dict[str, Any]) -> RunInfo:
    """The :class:`RunInfo` of a ``fit`` given ``given`` (preset names or their files)."""
    presets = {name: name for name in list_presets()}
    presets |= {str(preset_path(name)): name for name in presets}
    preset, options = preset_and_options(given, presets)
    return RunInfo(given, preset, options, device_name(training_device(trainer_config)))


class LogEveryEpoch(pl.Callback):
    """``log_every_n_steps`` at most an epoch's steps, so that a run with fewer steps than the
    interval still logs its step curves (loss, lr, hardness) once an epoch."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        steps = trainer.num_training_batches
        if isinstance(steps, int) and 0 < steps < trainer.log_every_n_steps:
            trainer.log_every_n_steps = steps


def run_settings(trainer: pl.Trainer, model: pl.LightningModule, data: ContrastDataModule) -> str:
    """``MoCoV2 + SyntheticNegatives on resnet18 (CIFAR stem), 200 epochs, batch 512 (1 process
    x 512) on cpu, lr 0.06, bf16-mixed, run dir runs/x``."""
    hp = model.hparams
    plug_ins = [getattr(model, "synthetic", None), getattr(model, "crop", None)]
    method = " + ".join([type(model).__name__, *(type(p).__name__ for p in plug_ins if p)])
    stem = " (CIFAR stem)" if hp.get("cifar_stem") and not hp.get("backbone_kwargs") else ""
    processes = trainer.world_size
    device = trainer.strategy.root_device.type
    return (
        f"{method} on {hp.get('backbone')}{stem}, {epochs(trainer.max_epochs)}, batch "
        f"{data.batch_size * processes} ({processes} process{'es' if processes > 1 else ''} x "
        f"{data.batch_size}) on {device}, lr {model.run_lr():g}, {trainer.precision}, run dir "
        f"{trainer.default_root_dir}"
    )


def summary_parts(trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[str]:
    metrics, hp = trainer.callback_metrics, pl_module.hparams
    parts = [f"epochs {trainer.current_epoch}", f"steps {trainer.global_step}"]
    if "train/loss_epoch" in metrics:
        parts.append(f"loss {float(metrics['train/loss_epoch']):.2f}")
    monitor = knn_monitor(trainer)
    untrained = monitor.untrained if monitor is not None else None
    trained = f"{float(metrics['knn/top1']):.2f}%" if "knn/top1" in metrics else None
    if untrained is not None or trained is not None:
        before = f"{untrained:.2f}% untrained" if untrained is not None else None
        after = f"{trained} after {epochs(trainer.current_epoch)}" if trained else None
        knn = " -> ".join(p for p in (before, after) if p)
        about = (
            monitor.protocol(pl_module)
            if monitor is not None
            else f"k={hp.get('knn_k')}, t={hp.get('knn_t')}"
        )
        parts.append(f"kNN top-1 {knn} ({about})")
    parts += rankme_summary(trainer)
    if "train/images_per_sec" in metrics:
        parts.append(f"images/s {float(metrics['train/images_per_sec']):.2f}")
    if "train/data_wait" in metrics:
        wait = float(metrics["train/data_wait"])
        parts.append(f"data wait {wait:.0%} of step time{input_bound_hint(wait)}")
    parts.append(f"run dir {trainer.default_root_dir}")
    return parts


def rankme_summary(trainer: pl.Trainer) -> list[str]:
    """``RankMe 65.9 untrained -> 120.4 after 10 epochs (2,048 training images, backbone)``."""
    monitor, metrics = rankme_monitor(trainer), trainer.callback_metrics
    untrained = (monitor.untrained or {}).get("rankme/value") if monitor is not None else None
    trained = float(metrics["rankme/value"]) if "rankme/value" in metrics else None
    if untrained is None and trained is None:
        return []
    before = f"{untrained:.1f} untrained" if untrained is not None else None
    after = f"{trained:.1f} after {epochs(trainer.current_epoch)}" if trained is not None else None
    images = f"{monitor.measured_images:,} training images" if monitor else "training images"
    return [f"RankMe {' -> '.join(p for p in (before, after) if p)} ({images}, backbone)"]


def epochs(count: int) -> str:
    return f"{count} epoch{'' if count == 1 else 's'}"


def input_bound_hint(wait: float) -> str:
    """A word of advice when steps wait for data a quarter of the time or more."""
    if wait < 0.25:
        return ""
    return " (input-bound: more --data.num_workers, or a faster decoder, would help)"


class RunProgressBar(TQDMProgressBar):
    """Lightning's progress bar, plus the time left for the whole run (``run ETA``), from this
    start's mean step time (kNN passes included once they have run)."""

    _start: float | None = None
    _start_step = 0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module, batch, batch_idx) -> None:
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
        if self._start is None:  # the clock starts after the untrained kNN pass
            self._start, self._start_step = time.perf_counter(), trainer.global_step

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict:
        items = super().get_metrics(trainer, pl_module)
        done = trainer.global_step - self._start_step
        total = int(trainer.estimated_stepping_batches)
        if self._start is not None and done > 0 and total > trainer.global_step:
            per_step = (time.perf_counter() - self._start) / done
            items["run ETA"] = format_duration(per_step * (total - trainer.global_step))
        statistics = epoch_statistics(trainer)
        share = statistics.data_wait_share() if statistics is not None else None
        if share is not None:
            items["data wait"] = f"{share:.0%}"
        return items


def format_duration(seconds: float) -> str:
    """``1:02:03`` or ``2:03``."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class RunRecord(pl.Callback):
    """Attaches the run's TensorBoard and ``metrics.csv`` loggers once the data is read (so a
    run that fails on its data or options leaves the directory untouched), continuing the
    record from ``resume_step``."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir, self.resume_step = run_dir, 0

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not trainer.loggers:
            trainer.loggers = run_loggers(self.run_dir, self.resume_step)


def check_sync_batchnorm(trainer: dict, model: ContrastiveMethod) -> None:
    """``trainer.sync_batchnorm`` turns every BatchNorm into torch's SyncBatchNorm (GPUs only),
    MoCo's SplitBatchNorm and per-process key statistics included, which shuffle-BN needs.
    The other frameworks have it already (``model.global_bn``, on any backend); on GPUs torch's
    layer may replace it, the same statistics."""
    if trainer.get("sync_batchnorm") and "shuffle_bn" in model.hparams:
        raise OptionError(
            "trainer.sync_batchnorm: MoCo keeps BatchNorm per process (shuffle-BN) and "
            "SplitBatchNorm on one device, so that statistics cannot leak which key is the "
            "query's positive; synchronising them would undo that. Leave it false"
        )


class ContrastCLI(LightningCLI):
    """LightningCLI with contrastlab's defaults: any :class:`ContrastiveMethod` as the model,
    TensorBoard + CSV records and ``checkpoints/last.ckpt`` in ``trainer.default_root_dir``
    (see :class:`RunCheckpoint`; its options are ``--checkpoint.*``), option ranges checked
    before anything is built, the run directory checked before anything is written, resume
    rules, and key suggestions for mistyped options."""

    def __init__(self, args: list[str], given: list[str] | None = None) -> None:
        self.given = list(given if given is not None else args[1:])  # as the user typed them
        self.record: RunRecord | None = None
        self.checkpoint_io = StagedCheckpointIO()
        super().__init__(
            ContrastiveMethod,
            ContrastDataModule,
            subclass_mode_model=True,
            args=args,
            save_config_kwargs={"overwrite": True},
            trainer_defaults={
                "precision": None,  # measured: see measured_precision
                "num_sanity_val_steps": 0,
                "use_distributed_sampler": False,
                "default_root_dir": "runs/default",
                "enable_model_summary": is_verbose(),  # else Lightning's table: see --verbose
            },
            parser_kwargs={
                "exit_on_error": False,
                "allow_abbrev": False,
                "fit": {"exit_on_error": False, "allow_abbrev": False},
            },
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        parser.add_class_arguments(RankMeMonitor, "rankme")  # added in _instantiate_trainer

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        try:
            super().parse_arguments(parser, args)
        except Exception as error:  # jsonargparse raises ArgumentError / ParserError
            valid = sorted(_flat_keys(parser))
            message = suggest_keys(str(error), valid, keep_message=is_verbose())
            raise SystemExit(f"contrastlab fit: {message}") from None

    def before_instantiate_classes(self) -> None:
        adapt_to_machine(self.config[self.subcommand])
        trainer = self.config[self.subcommand]["trainer"]
        check_options(
            "trainer",
            {
                k: trainer.get(k)
                for k in ("max_epochs", "log_every_n_steps", "check_val_every_n_epoch")
            },
        )

    def instantiate_classes(self) -> None:
        """Build model, data and trainer; a constructor's complaint about a value becomes one
        :class:`OptionError` line (jsonargparse wraps it in a dump of the whole config)."""
        try:
            super().instantiate_classes()
        except (ValueError, TypeError) as error:
            cause = root_cause(error)
            if not isinstance(cause, ValueError | TypeError):
                raise
            raise OptionError(config_key_message(str(cause))) from None

    def _parse_ckpt_path(self) -> None:
        """Lightning would re-parse the model options from the checkpoint, silently replacing
        options given on the command line; :meth:`before_fit` compares them instead."""

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list) -> pl.Trainer:
        run_dir = Path(config.get("default_root_dir") or "runs/default")
        rankme = self.config_init[self.subcommand]["rankme"]
        # statistics first: the monitors' passes fall outside the epoch's timing
        extra: list[pl.Callback] = [
            run_info(self.given, config),
            RunAnnouncement(),
            LogEveryEpoch(),
            ViewGrid(),
            RunSummary(),
            EpochStatistics(),
            KnnMonitor(),
            rankme,
        ]
        own_bar = any(isinstance(c, ProgressBar) for c in callbacks)
        if config.get("enable_progress_bar") is not False and not own_bar:
            extra.append(RunProgressBar())
        if config.get("logger") in (None, True):
            config["logger"] = False  # attached by RunRecord once the data is read
            self.record = RunRecord(run_dir)
            extra.insert(0, self.record)
        config["plugins"] = [*(config.get("plugins") or []), self.checkpoint_io]
        if config.get("precision") is None:
            choice = measured_precision(self.model, self.datamodule, config)
            if isinstance(choice, PrecisionChoice) and not self.model.hparams.compile:
                extra.append(PrecisionCheck(choice))  # compiled steps may beat eager timing
            config["precision"] = getattr(choice, "precision", choice)
            # config.yaml records the precision the run trained in
            self.config[self.subcommand]["trainer"]["precision"] = config["precision"]
        return super()._instantiate_trainer(config, [*callbacks, *extra])

    def before_fit(self) -> None:
        """Before anything is written: options that depend on each other, what to resume,
        stale temporaries, and room for checkpoints."""
        run_dir = Path(self.trainer.default_root_dir)
        check_sync_batchnorm(self.config[self.subcommand]["trainer"], self.model)
        check_divides(
            "model.bn_splits",
            self.model.hparams.bn_splits,
            "data.batch_size",
            self.datamodule.batch_size,
        )
        resume_step = self._resume(run_dir)
        if rank_zero_only.rank == 0:
            remove_stale_temporaries(run_dir)
            remove_stale_temporaries(run_dir / "checkpoints")
            check_run_directory(run_dir, estimate_checkpoint_bytes(self.model))
        if self.record is not None:
            self.record.resume_step = resume_step

    def _resume(self, run_dir: Path) -> int:
        """Resolve ``--resume``: check the checkpoint's class and options against this run,
        hand it to the trainer, and return its step (0 for a fresh start)."""
        fit_config = self.config_init[self.subcommand]
        requested, last = fit_config.get("ckpt_path"), checkpoint_path(run_dir)
        if requested is None:
            if last.is_file():
                raise RunDirectoryError(
                    f"{run_dir} already holds a run ({last}): add --resume to continue it, or "
                    f"give another --trainer.default_root_dir (or remove {run_dir}) to start over"
                )
            return 0
        if requested == "last" and not last.is_file():
            note(f"no checkpoint at {last} yet: starting from the beginning")
            fit_config["ckpt_path"] = None
            return 0
        path = last if requested == "last" else Path(requested)
        checkpoint = load_checkpoint_file(path)
        self._check_resumable(path, checkpoint)
        self.checkpoint_io.preloaded[path.resolve()] = checkpoint
        fit_config["ckpt_path"] = str(path)
        step = int(checkpoint.get("global_step", 0))
        note(f"resuming {path} at epoch {checkpoint.get('epoch')}, step {step}")
        return step

    def _check_resumable(self, path: Path, checkpoint: dict) -> None:
        cls = method_class(checkpoint)
        if cls is not type(self.model):
            raise CheckpointError(
                f"{path} was trained with {cls.__name__}, but this config builds "
                f"{type(self.model).__name__}"
            )
        saved_data = checkpoint.get("datamodule_hyper_parameters") or {}
        changes = resume_changes(
            "model",
            method_arguments(checkpoint),
            dict(self.model.hparams),
            option_defaults(type(self.model)),
        )
        changes += resume_changes(
            "data",
            saved_data,
            dict(self.datamodule.hparams),
            option_defaults(type(self.datamodule)),
        )
        if changes:
            raise CheckpointError(
                f"cannot resume {path} with other options (a resumed run keeps the model, data "
                f"and schedule it was saved with): {'; '.join(changes)}. Drop them, or start a "
                f"new run directory"
            )
        saved = checkpoint.get("contrastlab") or {}
        saved_epochs, new_epochs = saved.get("max_epochs"), self.trainer.max_epochs
        if saved_epochs is not None and new_epochs is not None and saved_epochs != new_epochs:
            note(
                schedule_note(
                    saved_epochs,
                    new_epochs,
                    int(checkpoint.get("global_step", 0)),
                    int(saved.get("steps_per_epoch", 1)),
                    float(self.model.hparams.warmup_epochs),
                )
            )


def measured_precision(
    model: ContrastiveMethod, data: ContrastDataModule, trainer_config: dict[str, Any]
) -> PrecisionChoice | str:
    """The precision measured fastest for this run's network, per-process batch and view size
    on its device (:func:`contrastlab.precision.choose_precision`), said in one line. Several
    processes starting together would time each other, so they use an earlier measurement or,
    without one, the static guess (:func:`contrastlab.precision.default_precision`, returned as
    a plain name); ``$CONTRASTLAB_PRECISION`` replaces the measurement
    (:func:`contrastlab.precision.fixed_precision`)."""
    device = training_device(trainer_config)
    fixed = fixed_precision()
    if fixed is not None:
        note(f"precision {fixed} ({FIXED_ENV}); --trainer.precision overrides")
        return fixed
    network, size = model.backbone, model.augment.size
    channels_last = bool(model.hparams.channels_last)
    known = cached_precision(network, size, device, channels_last)
    if expected_processes(trainer_config) > 1 and known is None:
        guess = default_precision()
        note(
            f"precision {guess} (several processes: not measured; a one-process run of this "
            f"network measures it once, or give --trainer.precision)"
        )
        return guess
    if known is None:
        note("timing fp32 and reduced precision on this network (once per device and network)")
    choice = known or choose_precision(network, data.batch_size, size, device, channels_last)
    note(f"{choice.message()}; --trainer.precision overrides")
    return choice


class PrecisionCheck(pl.Callback):
    """After the first epoch: a run training faster than its precision's measured rate proves
    the measurement disturbed (:func:`contrastlab.precision.contradicts`); the cache forgets
    it, so the next run measures again."""

    def __init__(self, choice: PrecisionChoice) -> None:
        self.choice, self.checked = choice, False

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        statistics = epoch_statistics(trainer)
        if self.checked or statistics is None or statistics.per_process_rate is None:
            return
        self.checked, trained = True, statistics.per_process_rate
        if not contradicts(self.choice, trained) or not is_first_process():
            return
        channels_last = bool(pl_module.hparams.channels_last)
        size = pl_module.augment.size
        forget_precision(pl_module.backbone, size, pl_module.device, channels_last)
        measured = self.choice.rates[self.choice.precision]
        note(
            f"this run trains at {trained:.0f} img/s per process in {self.choice.precision}, "
            f"faster than the {measured:.0f} img/s measured for its backbone alone: that "
            f"measurement was disturbed (a busy machine?), so it is dropped from "
            f"{cache_file()} and the next run measures again"
        )


def adapt_to_machine(config: dict[str, Any]) -> None:
    """Presets sized for a GPU cluster, on a small machine: at most one data-loader worker per
    CPU core this process may use, and DDP only with several processes (a one-process DDP
    run on the CPU would only add a process group); each change said in one line."""
    data, trainer = config["data"], config["trainer"]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    workers = data.get("num_workers") or 0
    if cores and workers > cores:
        data["num_workers"] = cores
        note(f"data.num_workers {workers} -> {cores}: this machine gives the run {cores} cores")
    strategy = trainer.get("strategy")
    if strategy == "ddp" and expected_processes(trainer) == 1:
        trainer["strategy"] = "auto"
        note(
            "trainer.strategy ddp -> auto: one process (one GPU or the CPU); the preset's DDP "
            "is for several GPUs (torchrun --nproc_per_node N, or --trainer.devices N)"
        )


def training_device(trainer_config: dict[str, Any]) -> torch.device:
    """Where this process will train: the CPU, or its GPU."""
    accelerator = trainer_config.get("accelerator", "auto")
    if accelerator == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


def expected_processes(trainer_config: dict[str, Any]) -> int:
    """How many training processes the run will have (a launcher's world size, else the
    trainer's devices times nodes)."""
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        return int(os.environ["WORLD_SIZE"])
    devices = trainer_config.get("devices", "auto")
    on_gpu = training_device(trainer_config).type == "cuda"
    if isinstance(devices, list | tuple):
        count = len(devices)
    elif str(devices).lstrip("-").isdigit() and int(devices) != -1:
        count = int(devices)
    else:  # "auto" or -1: every GPU, one CPU process
        count = torch.cuda.device_count() if on_gpu else 1
    return max(1, count) * int(trainer_config.get("num_nodes") or 1)


# Plug-ins name their options by class; the CLI names them by config key.
PLUG_IN_KEYS = {
    "Augment.": "model.augment.",
    "SyntheticNegatives.": "model.synthetic.init_args.",
    "ContrastiveCrop.": "model.crop.init_args.",
    "RankMeMonitor.": "rankme.",
}


def root_cause(error: BaseException) -> BaseException:
    """The innermost exception of a chain."""
    while (error.__cause__ or error.__context__) is not None:
        error = error.__cause__ or error.__context__
    return error


def config_key_message(message: str) -> str:
    first = message.strip().splitlines()[0] if message.strip() else message
    for prefix, key in PLUG_IN_KEYS.items():
        if first.startswith(prefix):
            return key + first.removeprefix(prefix)
    return first


def check_run_directory(run_dir: Path, checkpoint_bytes: int) -> None:
    """Raise :class:`RunDirectoryError` unless ``run_dir/checkpoints`` can be created and
    written, with room for two checkpoints (the one kept and the one being written). Leaves
    nothing behind: folders it had to create for the probe are removed again."""
    folder = run_dir / "checkpoints"
    existing = checkpoint_path(run_dir)
    needed = 2 * checkpoint_bytes - (existing.stat().st_size if existing.is_file() else 0)
    free = free_bytes(folder)
    if free < needed:
        raise RunDirectoryError(
            f"{folder}: not enough space for checkpoints: {format_bytes(needed)} needed "
            f"(2 x {format_bytes(checkpoint_bytes)}), {format_bytes(free)} free"
        )
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-probe.tmp"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise RunDirectoryError(f"{folder} is not writable: {error.strerror or error}") from None
    finally:
        for made in created:  # deepest first
            if made.is_dir() and not any(made.iterdir()):
                made.rmdir()


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
