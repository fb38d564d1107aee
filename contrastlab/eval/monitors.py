"""What a pretraining run measures while it trains, as Lightning callbacks.

:class:`KnnMonitor` is the InstDisc / MoCo kNN monitor: the weighted kNN top-1 of the
evaluation split's features against the training split's, after every validation pass, after
the last epoch, and once before the first step (the untrained encoder, logged at epoch -1). It
needs labels.

:class:`RankMeMonitor` needs none: RankMe and the normalised features' spread on a fixed
sample of training images, before the first step and at the kNN monitor's cadence.

The module being trained provides what is measured (duck-typed, so any method can be
monitored): ``monitor_features(uint8 images)``, ``sample_features(batch)``,
``precision_context()``, ``hparams.knn_k`` / ``knn_t`` / ``knn_features``, and a
``validation_step`` that returns ``(features, labels)``; the data module provides
``knn_dataloaders()`` (bank loader, query loader), ``sample_dataloader(count)`` and
``train_set``.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import lightning.pytorch as pl
import torch

from contrastlab.distributed import gather_cat, world
from contrastlab.eval.knn import sharded_knn_accuracy
from contrastlab.eval.spectrum import normalized_std, rankme

Batches = list[tuple[torch.Tensor, torch.Tensor]]
"""``(features, labels)`` batches of one split, as this process computed them."""


def say(trainer: pl.Trainer, line: str) -> None:
    """Print above the progress bar, if there is one (first process only)."""
    if trainer.global_rank != 0:
        return
    bar = trainer.progress_bar_callback
    (bar.print if bar is not None else print)(line)


class KnnMonitor(pl.Callback):
    """The kNN monitor of a labelled run.

    Logs ``knn/top1`` (percent; ``k = knn_k`` neighbours weighted ``exp(sim / knn_t)``, cosine
    similarity of the module's ``monitor_features``) after each validation pass and the last
    epoch (a pass of its own when that epoch has no validation), and before the
    first training step the untrained encoder's figure at epoch -1 with the sizes it was
    computed on (``knn/bank_images``, ``knn/query_images``, ``knn/train_images``). The untrained
    figure and the sizes are saved in checkpoints (``checkpoint["contrastlab"]``), so a resume
    does not redo the pass.
    """

    def __init__(self) -> None:
        self.untrained: float | None = None
        self.sizes: dict[str, int] = {}
        self.bank_features: torch.Tensor | None = None
        self._outputs: tuple[Batches, Batches] = ([], [])

    def take_bank_features(self, limit: int | None = None) -> torch.Tensor | None:
        """The bank features of the last kNN figure, once; then released. Each process holds
        its shard: with ``limit``, the ``limit`` rows of :func:`sample_rows` over the whole
        bank are gathered from the shards that hold them (no process gathers the bank)."""
        shard, self.bank_features = self.bank_features, None
        if shard is None:
            return None
        return gather_cat(shard) if limit is None else gather_sample(shard, limit)

    # ------------------------------------------------------------------ the untrained point

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step == 0 and self.untrained is None:
            self.measure_untrained(trainer, pl_module)

    def measure_untrained(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.untrained = self.measure(trainer, pl_module)
        if self.untrained is None:
            if hasattr(trainer.datamodule, "knn_dataloaders") and trainer.limit_val_batches:
                say(
                    trainer,
                    "contrastlab: no kNN monitor: it needs labelled training and evaluation "
                    "splits (for a folder: class sub-folders in train/ and val/); RankMe and the "
                    "loss show this run's learning",
                )
            return
        sizes = {f"knn/{name}_images": count for name, count in self.sizes.items()}
        for logger in trainer.loggers:
            logger.log_metrics({"knn/top1": self.untrained, **sizes, "epoch": -1}, step=0)
        say(
            trainer,
            f"contrastlab: kNN top-1 of the untrained encoder {self.untrained:.2f}% "
            f"({self.protocol(pl_module)})",
        )

    @torch.no_grad()
    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> float | None:
        """A kNN pass outside Lightning's validation loop (``None`` without labelled splits)."""
        data = trainer.datamodule
        loaders = data.knn_dataloaders() if hasattr(data, "knn_dataloaders") else []
        if not loaders or not trainer.limit_val_batches:
            return None
        was_training = pl_module.training
        pl_module.eval()
        outputs: tuple[Batches, Batches] = ([], [])
        with pl_module.precision_context():
            for loader, output in zip(loaders, outputs, strict=True):
                for images, _, labels in loader:
                    images = images.to(pl_module.device, non_blocking=True)
                    output.append((pl_module.monitor_features(images), labels.to(images.device)))
        pl_module.train(was_training)
        return self.top1(trainer, pl_module, *outputs)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The last epoch always ends with a figure: a run shorter than the validation interval
        (or not ending on it) measures once more, so its summary has a trained kNN."""
        epoch, every = trainer.current_epoch, trainer.check_val_every_n_epoch or 1
        last = trainer.max_epochs is not None and epoch + 1 >= trainer.max_epochs
        if not last or (epoch + 1) % every == 0 or trainer.should_stop:
            return
        top1 = self.measure(trainer, pl_module)
        if top1 is None:
            return
        pl_module.log("knn/top1", top1, prog_bar=True, rank_zero_only=True, logger=False)
        for logger in trainer.loggers:
            logger.log_metrics({"knn/top1": top1, "epoch": epoch}, trainer.global_step - 1)

    # ------------------------------------------------------------------ each validation pass

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if outputs is not None:
            self._outputs[dataloader_idx].append(outputs)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        bank, queries = self._outputs
        self._outputs = ([], [])
        if not bank or not queries or trainer.sanity_checking:
            return
        top1 = self.top1(trainer, pl_module, bank, queries)
        pl_module.log("knn/top1", top1, prog_bar=True, rank_zero_only=True)

    def top1(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, bank: Batches, queries: Batches
    ) -> float:
        """The weighted kNN top-1 of every process's batches, the bank staying sharded across
        processes (:func:`~contrastlab.eval.knn.sharded_knn_accuracy`); records the bank, query
        and training-set sizes."""
        bank_x, bank_y = (torch.cat(t) for t in zip(*bank, strict=True))
        query_x, query_y = (torch.cat(t) for t in zip(*queries, strict=True))
        if rankme_monitor(trainer) is not None:
            self.bank_features = bank_x  # this shard: the RankMe monitor samples it next
        hp = pl_module.hparams
        top1, bank_size, query_count = sharded_knn_accuracy(
            query_x, query_y, bank_x, bank_y, k=hp.knn_k, temperature=hp.knn_t
        )
        self.sizes = {"bank": bank_size, "query": query_count}
        train_set = getattr(trainer.datamodule, "train_set", None)
        if train_set is not None:
            self.sizes["train"] = len(train_set)
        return top1

    def protocol(self, pl_module: pl.LightningModule) -> str:
        """What the figure was computed with: ``k``, ``t``, the features, and the bank, query
        and training-set sizes once it has run."""
        hp = pl_module.hparams
        text = f"k={hp.knn_k}, t={hp.knn_t}"
        if hp.get("knn_features", "backbone") == "head":
            text += ", on the head's output"
        if self.sizes:
            text += f"; bank {self.sizes['bank']:,}, queries {self.sizes['query']:,}"
            if "train" in self.sizes:
                text += f", training set {self.sizes['train']:,}"
        return text

    # ------------------------------------------------------------------ checkpoints

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        state = checkpoint.setdefault("contrastlab", {})
        state["knn_untrained"] = self.untrained
        state["knn_sizes"] = dict(self.sizes)

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        state = checkpoint.get("contrastlab") or {}
        self.untrained = state.get("knn_untrained")
        self.sizes = dict(state.get("knn_sizes") or {})


class RankMeMonitor(pl.Callback):
    """A label-free learning monitor for every run.

    Once before the first step (epoch -1) and then whenever the kNN monitor runs (every
    ``trainer.check_val_every_n_epoch`` epochs and after the last), the backbone's features of
    a fixed sample of at most ``images`` training images, un-augmented, give ``rankme/value``,
    RankMe (Garrido et al., 2023: the effective rank of the feature matrix, from 1 to the feature
    width), and ``rankme/feature_std``, the mean per-dimension standard deviation of the
    L2-normalised features times ``sqrt(d)`` (1 for features spread over the sphere, 0 when
    collapsed). With labels the sample is drawn from the kNN monitor's bank (the training
    split's backbone features it has just computed: no pass of its own); without, from the
    training split (``sample_dataloader``), at the same cadence. Both figures compare within
    one method and backbone over training, not across them. When ``rankme/feature_std`` falls
    below ``collapse_share`` of the untrained encoder's, a warning says the features are
    collapsing (once per run). The untrained values are saved in checkpoints
    (``checkpoint["contrastlab"]["rankme_untrained"]``).
    """

    def __init__(self, images: int = 2048, collapse_share: float = 0.25) -> None:
        if isinstance(images, bool) or not isinstance(images, int) or images < 0:
            raise ValueError(f"RankMeMonitor.images = {images!r} must be an integer >= 0")
        if not 0 <= collapse_share <= 1:
            raise ValueError(
                f"RankMeMonitor.collapse_share = {collapse_share!r} must lie in [0, 1]"
            )
        self.images, self.collapse_share = images, collapse_share
        self.untrained: dict[str, float] | None = None
        self.measured_images = 0  # the sample's size, once measured (the split may be smaller)
        self.measured_epoch: int | None = None  # the epoch a validation pass measured
        self.warned = False

    # ------------------------------------------------------------------ the figures

    def figures(self, features: torch.Tensor) -> dict[str, float]:
        """``{"rankme/value", "rankme/feature_std", "rankme/images"}`` of ``(N, d)`` features;
        at most ``images`` rows, :func:`sample_rows`: the same at every measurement."""
        if len(features) > self.images:
            features = features[sample_rows(len(features), self.images).to(features.device)]
        self.measured_images = len(features)
        spread = normalized_std(features) * math.sqrt(features.shape[1])
        return {
            "rankme/value": rankme(features),
            "rankme/feature_std": spread,
            "rankme/images": float(len(features)),
        }

    @torch.no_grad()
    def sample_pass(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> torch.Tensor:
        """The backbone's features of the data module's fixed training sample (eval mode)."""
        loader = trainer.datamodule.sample_dataloader(self.images)
        was_training = pl_module.training
        pl_module.eval()
        with pl_module.precision_context():
            parts = [pl_module.sample_features(batch) for batch in loader]
        pl_module.train(was_training)
        return gather_cat(torch.cat(parts))

    def features(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> torch.Tensor:
        """The kNN monitor's fresh bank features when they are the backbone's, else a pass."""
        monitor = knn_monitor(trainer)
        bank = monitor.take_bank_features(self.images) if monitor is not None else None
        if bank is not None and pl_module.hparams.get("knn_features", "backbone") == "backbone":
            return bank
        return self.sample_pass(trainer, pl_module)

    def _usable(self, trainer: pl.Trainer) -> bool:
        return hasattr(trainer.datamodule, "sample_dataloader") and self.images > 0

    # ------------------------------------------------------------------ when it measures

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step != 0 or self.untrained is not None or not self._usable(trainer):
            if knn_monitor(trainer) is not None:
                knn_monitor(trainer).bank_features = None  # not needed: released
            return
        self.untrained = self.figures(self.features(trainer, pl_module))
        for logger in trainer.loggers:
            logger.log_metrics({**self.untrained, "epoch": -1}, step=0)
        say(
            trainer,
            f"contrastlab: RankMe of the untrained encoder {self.untrained['rankme/value']:.1f} "
            f"(feature std x sqrt(d) {self.untrained['rankme/feature_std']:.3f}; "
            f"{self.measured_images:,} training images, backbone features)",
        )

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        monitor = knn_monitor(trainer)
        if trainer.sanity_checking or monitor is None or monitor.bank_features is None:
            return
        if not self._usable(trainer) or pl_module.hparams.get("knn_features") == "head":
            monitor.bank_features = None  # not needed: released
            return
        self.record(trainer, pl_module, self.figures(monitor.take_bank_features(self.images)))
        self.measured_epoch = trainer.current_epoch

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Runs without a kNN pass this epoch (no labels) measure on the training sample at the
        kNN monitor's cadence; a labelled run measured in its validation pass."""
        epoch = trainer.current_epoch
        if not self._usable(trainer) or self.measured_epoch == epoch:
            return
        every = trainer.check_val_every_n_epoch or 1
        last = trainer.max_epochs is not None and epoch + 1 >= trainer.max_epochs
        if (epoch + 1) % every and not last:
            return
        self.record(trainer, pl_module, self.figures(self.features(trainer, pl_module)))

    def record(self, trainer: pl.Trainer, pl_module: pl.LightningModule, values: dict) -> None:
        pl_module.log("rankme/value", values["rankme/value"], prog_bar=True, logger=False)
        pl_module.log("rankme/feature_std", values["rankme/feature_std"], logger=False)
        for logger in trainer.loggers:
            logger.log_metrics({**values, "epoch": trainer.current_epoch}, trainer.global_step - 1)
        self._warn_on_collapse(trainer, values["rankme/feature_std"])

    def _warn_on_collapse(self, trainer: pl.Trainer, spread: float) -> None:
        before = (self.untrained or {}).get("rankme/feature_std")
        floor = self.collapse_share * before if before else 0.01
        if spread < floor and not self.warned and trainer.global_rank == 0:
            self.warned = True
            warnings.warn(
                f"the features are collapsing: their normalised std x sqrt(d) is {spread:.4f} "
                f"after epoch {trainer.current_epoch}, under {floor:.4f} "
                f"({self.collapse_share:g} of the untrained encoder's); a lower learning rate, "
                "a longer warm-up or stronger views may help",
                stacklevel=2,
            )

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        checkpoint.setdefault("contrastlab", {})["rankme_untrained"] = self.untrained

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        self.untrained = (checkpoint.get("contrastlab") or {}).get("rankme_untrained")


def sample_rows(total: int, count: int) -> torch.Tensor:
    """RankMe's fixed sample: ``count`` of ``total`` row indices, a seeded permutation's first
    (all rows, in order, when there are no more than ``count``)."""
    if total <= count:
        return torch.arange(total)
    return torch.randperm(total, generator=torch.Generator().manual_seed(17))[:count]


def gather_sample(shard: torch.Tensor, count: int) -> torch.Tensor:
    """The rows :func:`sample_rows` picks from the bank that every process's ``shard`` forms
    in rank order, gathered: ``count`` rows (the same set as gathering the bank and picking)."""
    sizes = gather_cat(torch.tensor([len(shard)], device=shard.device)).tolist()
    rank, _ = world()
    start = sum(sizes[:rank])
    rows = sample_rows(sum(sizes), count)
    mine = rows[(rows >= start) & (rows < start + len(shard))] - start
    return gather_cat(shard[mine.to(shard.device)])


def knn_monitor(trainer: pl.Trainer) -> KnnMonitor | None:
    """The trainer's kNN monitor, if it has one."""
    return next((c for c in trainer.callbacks if isinstance(c, KnnMonitor)), None)


def rankme_monitor(trainer: pl.Trainer) -> RankMeMonitor | None:
    """The trainer's RankMe monitor, if it has one."""
    return next((c for c in trainer.callbacks if isinstance(c, RankMeMonitor)), None)
