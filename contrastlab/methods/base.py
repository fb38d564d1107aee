"""The shared LightningModule: views, backbone, optimiser and schedule, kNN monitor, RNG state."""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import asdict
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torch import nn
from torch.nn import functional as F

from contrastlab.data.datasets import PhotoBatch
from contrastlab.distributed import gather_cat, world
from contrastlab.models.backbones import build_backbone
from contrastlab.models.globalbn import globalise_batchnorm
from contrastlab.optim import LARS, lars_groups
from contrastlab.options import Note, OptionError, check_options
from contrastlab.precision import autocast_for
from contrastlab.schedules import batch_scaled_lr, schedule_factor
from contrastlab.views.augment import Augment, ViewSampler, eval_view, whole_view
from contrastlab.views.contrastive_crop import ContrastiveCrop, box_statistics, localize_boxes


def make_optimizer(
    kind: str,
    groups: list[dict],
    lr: float,
    weight_decay: float,
    sgd_momentum: float,
    lr_in_momentum: bool = True,
) -> torch.optim.Optimizer:
    """``sgd`` (with momentum), ``adamw``, or ``lars`` (:class:`~contrastlab.optim.LARS`:
    SGD with momentum and trust ratio 0.001, biases and normalisation parameters neither
    adapted nor decayed) over ``groups``."""
    if kind == "lars":
        return LARS(
            lars_groups(groups), lr, sgd_momentum, weight_decay, lr_in_momentum=lr_in_momentum
        )
    if kind == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=sgd_momentum, weight_decay=weight_decay)
    raise ValueError(f"model.optimizer = {kind!r}: expected 'sgd', 'lars' or 'adamw'")


def full_precision(device: torch.device) -> AbstractContextManager:
    """Leave autocast: similarities divided by a small temperature need float32."""
    return torch.autocast(device_type=device.type, enabled=False)


def unpack(batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(uint8 images, indices, labels, boxes or None)`` of an in-memory or folder batch, or of
    a :class:`PhotoBatch` (photos at their own sizes, laid out here, on its device)."""
    if isinstance(batch, PhotoBatch):
        return batch.padded(), batch.indices, batch.labels, batch.boxes
    images, indices, labels = batch[:3]
    return images, indices, labels, None


def check_second_view(augment: Augment, second_view: Augment | None) -> None:
    """The second view may change colours, blur and solarisation, not the crop: both views'
    boxes come from one sampler, drawn with ``augment``'s size, scale and aspect range."""
    if second_view is None:
        return
    for name in ("size", "scale", "ratio"):
        first, second = getattr(augment, name), getattr(second_view, name)
        if first != second:
            raise OptionError(
                f"model.second_view.{name} = {second} differs from model.augment.{name} = "
                f"{first}: both views are cropped alike; set the two equal"
            )


def check_batchnorm(bn_splits: int, global_bn: bool, processes: int) -> None:
    """Under several processes, global statistics and per-group statistics contradict each
    other (in one process ``global_bn`` changes nothing and ``bn_splits`` simulates GPUs)."""
    if global_bn and bn_splits > 1 and processes > 1:
        raise OptionError(
            f"model.global_bn = true normalises over the global batch of {processes} "
            f"processes, model.bn_splits = {bn_splits} over groups of each one's: set "
            "model.global_bn false to keep per-group BatchNorm, or model.bn_splits 1"
        )


def check_compile_backend(backend: str) -> None:
    """``model.compile_backend`` must be one of torch.compile's backends."""
    known = torch.compiler.list_backends(exclude_tags=())
    if backend not in known:
        raise OptionError(
            f"model.compile_backend = {backend!r}: expected one of torch.compile's backends "
            f"({', '.join(b for b in known if 'TESTING' not in b)})"
        )


class ContrastiveMethod(pl.LightningModule):
    """What every framework shares. A framework implements :meth:`contrastive_loss`.

    Args:
        backbone: a torchvision ResNet (``resnet18``, ``resnet34``, ``resnet50``) or any timm
            model as ``timm/<name>`` (e.g. ``timm/vit_small_patch16_224``).
        backbone_kwargs: passed to ``timm.create_model`` (``img_size``, ``patch_size``,
            ``drop_path_rate``...); timm models only.
        backbone_weights: a local weights file to start from (safetensors, torch state dict or
            a contrastlab checkpoint; nothing is ever downloaded).
        cifar_stem: 3x3 stride-1 stem without max-pool (32-96 px images); torchvision ResNets.
        bn_splits: SplitBatchNorm groups per process (8 simulates MoCo's 8 GPUs on one device).
        global_bn: under several processes, BatchNorm statistics over the global batch
            (:class:`~contrastlab.models.globalbn.GlobalBatchNorm`, on any backend): SimCLR,
            BYOL and SimSiam as their references train; ``False``: each process normalises
            over its own images. In one process it changes nothing; under several it
            excludes ``bn_splits > 1``. MoCo refuses it (shuffle-BN).
        augment: the view recipe (both views, unless ``second_view`` is set).
        second_view: the second view's recipe when the two differ (BYOL's asymmetric views:
            the second solarised with p 0.2); ``None``: both views use ``augment``. Its size,
            crop scale and aspect range must be ``augment``'s (both views' boxes are drawn
            alike).
        optimizer: ``sgd`` (momentum ``sgd_momentum``), ``lars`` (the same momentum, trust
            ratio 0.001, biases and BatchNorm neither adapted nor decayed: SimCLR's and BYOL's
            large batches) or ``adamw`` (betas 0.9, 0.999; the one that trains ViTs, with a
            warm-up).
        lr, weight_decay, sgd_momentum: ``lr`` is for the whole global batch.
        lars_lr_in_momentum: LARS scales each step by the learning rate before the momentum
            (SimCLR's reference) or, ``False``, after it (BYOL's optax chain).
        lr_batch: the global batch ``lr`` was written for (every preset names it); when the
            run's global batch (nodes x devices x ``data.batch_size``) differs, the optimiser
            starts from ``lr`` scaled by ``lr_scaling`` and one line says so. ``None``: ``lr``
            as given, whatever the batch.
        lr_scaling: ``linear`` (SGD recipes), ``sqrt`` (where the source says so) or ``keep``
            (train at ``lr`` anyway, with a warning).
        warmup_epochs: linear warm-up before the cosine decay.
        lr_floor: the cosine decays from ``lr`` to ``lr_floor * lr`` (0: to zero; the
            ContrastiveCrop recipes end at 0.1).
        lr_interval: the schedule moves every optimiser ``step``, or once an epoch at the
            epoch's start (``epoch``: the ContrastiveCrop recipes) or end (``epoch_end``: MoCo's
            CIFAR-10 demo); per epoch, ``warmup_epochs`` counts whole epochs.
        zero_init_residual: the last BatchNorm of each residual branch starts at zero, so every
            block starts as the identity (torchvision ResNets; the ContrastiveCrop SimSiam).
        knn_k, knn_t: the kNN monitor's neighbours and temperature.
        knn_features: what the kNN monitor compares: the ``backbone``'s pooled features, or the
            projection ``head``'s output (MoCo's CIFAR-10 demo reports kNN on its head).
        channels_last: NHWC memory layout (faster convolutions on most devices).
        compile: ``torch.compile`` the networks of the training step (every backbone, head
            and predictor, in place: checkpoints keep their keys) with ``compile_backend``
            (``inductor``; ``aot_eager`` traces forward and backward without generating code).
            The first steps are slower while it compiles; ``bench/compile.py`` measures it.
        seed: seeds the views (per process) and the initial state of the method.
        crop: where views are cropped: RandomResizedCrop when ``None``, else ContrastiveCrop
            (or SimCCrop), whose per-image boxes this module localises on schedule.
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        cifar_stem: bool = True,
        backbone_kwargs: dict[str, Any] | None = None,
        backbone_weights: str | None = None,
        bn_splits: int = 8,
        global_bn: bool = False,
        augment: Augment = Augment(),
        second_view: Augment | None = None,
        optimizer: Literal["sgd", "lars", "adamw"] = "sgd",
        lr: float = 0.06,
        lr_batch: int | None = None,
        lr_scaling: Literal["linear", "sqrt", "keep"] = "linear",
        weight_decay: float = 5e-4,
        sgd_momentum: float = 0.9,
        lars_lr_in_momentum: bool = True,
        warmup_epochs: float = 0.0,
        lr_floor: float = 0.0,
        lr_interval: Literal["step", "epoch", "epoch_end"] = "step",
        zero_init_residual: bool = False,
        knn_k: int = 200,
        knn_t: float = 0.1,
        knn_features: Literal["backbone", "head"] = "backbone",
        channels_last: bool = True,
        compile: bool = False,
        compile_backend: str = "inductor",
        seed: int = 0,
        crop: ContrastiveCrop | None = None,
    ) -> None:
        super().__init__()
        augment = Augment(**augment) if isinstance(augment, dict) else augment
        second_view = Augment(**second_view) if isinstance(second_view, dict) else second_view
        check_second_view(augment, second_view)
        saved_crop = isinstance(crop, dict)  # a checkpoint's: scale and ratio as it ran
        crop = ContrastiveCrop(**crop) if saved_crop else crop
        if crop is not None and not saved_crop:
            crop.match_views(augment.scale, augment.ratio)
        self.save_hyperparameters(ignore=["crop"])
        check_options("model", {k: v for k, v in self.hparams.items() if not k.startswith("_")})
        check_compile_backend(compile_backend)
        if lr_batch is not None and lr_batch < 1:
            raise OptionError(f"model.lr_batch must be a global batch >= 1 or null, got {lr_batch}")
        # plain values: checkpoints load with weights_only
        self.hparams["augment"] = asdict(augment)
        self.hparams["second_view"] = asdict(second_view) if second_view is not None else None
        self.hparams["crop"] = crop.config() if crop is not None else None
        self.augment = augment
        self.backbone = build_backbone(
            name=backbone,
            cifar_stem=cifar_stem,
            bn_splits=bn_splits,
            kwargs=backbone_kwargs,
            weights=backbone_weights,
            zero_init_residual=zero_init_residual,
        )
        if crop is not None and getattr(self.backbone, "token_model", False):
            warnings.warn(
                f"ContrastiveCrop on {backbone} is experimental: it localises on each patch "
                "token's norm, and that a ViT's boxes find objects is not shown "
                "(bench/vit_saliency.py)",
                Note,
                stacklevel=2,
            )
        self.views = ViewSampler([augment, second_view or augment], box_sampler=crop, seed=seed)

    # ------------------------------------------------------------------ hooks for frameworks

    def contrastive_loss(
        self, views: list[torch.Tensor], indices: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        raise NotImplementedError

    def momentum_update(self) -> None:
        """Frameworks with a momentum encoder update it here (once per step, before the loss)."""

    def parameter_groups(self) -> list[dict]:
        """Optimiser parameter groups; a group with ``"fixed_lr": True`` keeps its learning
        rate out of the schedule (SimSiam's predictor)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def precision_context(self, device: torch.device | None = None) -> AbstractContextManager:
        """Autocast as in training: the trainer's precision while fitting, else the precision
        measured for this backbone and view size (:func:`contrastlab.precision.autocast_for`)."""
        if self._trainer is not None:
            return self.trainer.precision_plugin.forward_context()
        device = self.device if device is None else device
        return autocast_for(self.backbone, self.augment.size, device, self.hparams.channels_last)

    @property
    def crop(self) -> ContrastiveCrop | None:
        sampler = self.views.box_sampler
        return sampler if isinstance(sampler, ContrastiveCrop) else None

    # ------------------------------------------------------------------ setup and training

    def setup(self, stage: str) -> None:
        rank, size = world()
        self.views.reseed(self.hparams.seed * 1_000_003 + rank)
        if self.hparams.get("global_bn") and size > 1:
            check_batchnorm(self.hparams.bn_splits, True, size)
            globalise_batchnorm(self)  # before compiling, before the optimiser sees the model
        if self.hparams.channels_last:
            self.to(memory_format=torch.channels_last)
        if stage == "fit" and self.hparams.get("compile"):
            for network in self.step_networks():
                network.compile(backend=self.hparams.get("compile_backend", "inductor"))
        data = getattr(self._trainer, "datamodule", None)
        if stage == "fit" and hasattr(data, "attach_views"):
            data.attach_views(self.views.draw_boxes, self.augment.size)
        if self.crop is not None and stage == "fit":
            self.crop.reset(len(self._training_data().train_set))

    def step_networks(self) -> list[nn.Module]:
        """The networks the training step runs: every backbone, head and predictor."""
        named = ("backbone", "head", "predictor", "key_", "target_")
        return [
            module
            for name, module in self.named_children()
            if name.startswith(named) and any(p.numel() for p in module.parameters())
        ]

    def _training_data(self):
        data = getattr(self.trainer, "datamodule", None)
        if data is None or not hasattr(data, "localization_dataloader"):
            raise TypeError("ContrastiveCrop needs the training data as a ContrastDataModule")
        return data

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.hparams.channels_last else x

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        images, indices, labels, boxes = unpack(batch)
        views = [self._layout(v) for v in self.views(images, indices, boxes)]
        self.momentum_update()
        loss = self.contrastive_loss(views, indices, labels)
        # the mean over processes: the global batch's loss (each process's is a mean of its own)
        self.log("train/loss_step", loss, prog_bar=True, on_step=True, sync_dist=True)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True)
        return loss

    def on_train_start(self) -> None:
        if self.crop is not None:
            boxes, images = len(self.crop.boxes), len(self._training_data().train_set)
            if boxes != images:
                raise ValueError(
                    f"the checkpoint holds ContrastiveCrop boxes for {boxes} images but the "
                    f"training set has {images}: resume with the same data settings"
                )

    def on_train_epoch_start(self) -> None:
        crop = self.crop
        if crop is not None:
            if crop.localization_due(self.current_epoch):
                self.localize()
            crop.start_if_due(self.current_epoch)
        self.epoch_ready = time.perf_counter()  # epoch statistics leave the work above out

    @torch.no_grad()
    def localize(self, batches: Iterable[tuple[torch.Tensor, ...]] | None = None) -> None:
        """Recompute every training image's ContrastiveCrop box with the current encoder (eval
        mode, whole un-augmented images, one batched pass; each process takes its share and
        the boxes are gathered, so every process stores the same boxes).

        ``batches`` yields ``(uint8 images, dataset indices, ...)``; by default this process's
        share of the training set from the data module."""
        crop, was_training = self.crop, self.training
        if batches is None:
            batches = self._training_data().localization_dataloader()
        self.eval()
        found_indices, found_boxes = [], []
        for batch in batches:
            images, indices, _, boxes = unpack(batch)
            images = images.to(self.device, non_blocking=True)
            whole = whole_view(images, self.augment, None if boxes is None else boxes[0])
            with self.precision_context():
                maps = self.backbone.saliency_map(self._layout(whole))
            found_boxes.append(localize_boxes(maps, whole.shape[-2:], crop.threshold))
            found_indices.append(indices.to(self.device))
        crop.update(gather_cat(torch.cat(found_indices)), gather_cat(torch.cat(found_boxes)))
        self.train(was_training)
        trainer = self._trainer
        if trainer is not None and trainer.global_rank == 0:
            # plotted at the epochs trained so far, as the kNN monitor's figures are
            stats = {**box_statistics(crop.boxes), "epoch": self.current_epoch - 1}
            for logger in trainer.loggers:
                logger.log_metrics(stats, step=max(0, trainer.global_step - 1))

    def configure_optimizers(self):
        optimizer = make_optimizer(
            self.hparams.get("optimizer", "sgd"),
            self.parameter_groups(),
            self.run_lr(),
            self.hparams.weight_decay,
            self.hparams.sgd_momentum,
            self.hparams.get("lars_lr_in_momentum", True),
        )
        fixed = [bool(group.get("fixed_lr", False)) for group in optimizer.param_groups]
        total = max(1, int(self.trainer.estimated_stepping_batches))
        epochs = max(1, self.trainer.max_epochs or 1)
        steps_per_epoch = max(1, round(total / epochs))
        hparams = self.hparams

        def factor(step: int) -> float:
            return schedule_factor(
                step,
                steps_per_epoch,
                epochs,
                hparams.warmup_epochs,
                hparams.get("lr_floor", 0.0),
                hparams.get("lr_interval", "step"),
            )

        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, [(lambda step: 1.0) if f else factor for f in fixed]
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def global_batch(self) -> int | None:
        """Images per optimiser step over all processes (``None`` outside a fit)."""
        data = getattr(self._trainer, "datamodule", None)
        if data is None or not hasattr(data, "batch_size"):
            return None
        return int(data.batch_size) * self.trainer.world_size

    def run_lr(self) -> float:
        """The learning rate this run starts from: ``lr`` scaled from ``lr_batch`` to the run's
        global batch by ``lr_scaling`` (:func:`~contrastlab.schedules.batch_scaled_lr`)."""
        batch = self.global_batch()
        if batch is None:
            return self.hparams.lr
        written_for = self.hparams.get("lr_batch")
        rule = self.hparams.get("lr_scaling", "linear")
        return batch_scaled_lr(self.hparams.lr, written_for, batch, rule)

    # ------------------------------------------------------------------ kNN monitor

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Backbone features of un-augmented uint8 images (eval mode is the caller's): what
        every evaluation command (kNN, linear probes, fine-tuning) measures."""
        return self.backbone(self._layout(eval_view(images, self.augment))).float()

    @torch.no_grad()
    def sample_features(self, batch) -> torch.Tensor:
        """Backbone features of a batch of the data module's ``sample_dataloader``: as
        :meth:`features` sees images, and native-resolution photos whole, resized to the view
        size (what the label-free monitor measures)."""
        images, _, _, boxes = unpack(batch)
        images = images.to(self.device, non_blocking=True)
        if boxes is None:
            return self.features(images)
        whole = whole_view(images, self.augment, boxes[0])
        return self.backbone(self._layout(whole)).float()

    @torch.no_grad()
    def monitor_features(self, images: torch.Tensor) -> torch.Tensor:
        """The kNN monitor's features: :meth:`features`, or the projection head's output of
        them with ``knn_features="head"`` (MoCo's CIFAR-10 notebook monitors its head)."""
        features = self.features(images)
        if self.hparams.get("knn_features", "backbone") == "head":
            features = self.head(features).float()
        return features

    def validation_step(
        self, batch: tuple[torch.Tensor, ...], batch_idx: int, dataloader_idx: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(monitor features, labels)`` of a kNN batch (loader 0: the bank, 1: the queries),
        for :class:`contrastlab.eval.monitors.KnnMonitor`."""
        images, _, labels = batch
        return self.monitor_features(images), labels

    # ------------------------------------------------------------------ exact resume

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.setdefault("contrastlab", {})
        state.update(rng_states(self.views, self.device))
        if self._trainer is not None:  # what a resume compares against
            state["max_epochs"] = self.trainer.max_epochs
            state["steps_per_epoch"] = int(self.trainer.num_training_batches)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        restore_rng_states(self.views, checkpoint.get("contrastlab"))


def rng_states(views: ViewSampler | None, device: torch.device) -> dict[str, Any]:
    """Every process's view generator (when there is one) and torch RNG states (gathered, one
    row per rank) and the CUDA states: what an exact resume restores with
    :func:`restore_rng_states`."""
    # every process's own: one process's state given to all would change what the others
    # draw after a resume (they need not have drawn alike before it)
    states: dict[str, Any] = {
        "torch_rng": gather_cat(torch.get_rng_state().unsqueeze(0).to(device)).cpu()
    }
    if views is not None:
        states["view_rng"] = gather_cat(views.get_state().unsqueeze(0).to(device)).cpu()
    if torch.cuda.is_available():
        states["cuda_rng"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(views: ViewSampler | None, state: dict[str, Any] | None) -> None:
    """Set this process's RNG states from :func:`rng_states`' record (a run resumed on more
    processes keeps fresh seeds on the new ones)."""
    if state is None:
        return
    rank, _ = world()
    view_states = state.get("view_rng") if views is not None else None
    if view_states is not None and rank < len(view_states):
        # a compact copy: Generator.set_state misreads a row view with a storage offset
        views.set_state(view_states[rank].cpu().clone())
    torch_states = state["torch_rng"]
    if torch_states.ndim == 1:  # a checkpoint from before the states were per process
        torch_states = torch_states.unsqueeze(0)
    if rank < len(torch_states):
        torch.set_rng_state(torch_states[rank].cpu().clone())
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])


def normalized(x: torch.Tensor) -> torch.Tensor:
    """``x / ||x||_2`` per row, in float32."""
    return F.normalize(x.float(), dim=1)
