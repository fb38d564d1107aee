"""A classifier trained on a pretrained backbone, streaming augmented labelled images: the
papers' linear probe (backbone frozen, in eval mode) and semi-supervised fine-tuning.

It runs under a Lightning ``Trainer`` like pretraining does, so it scales over processes and
nodes (each process takes its share of every global batch and of the evaluation images; the
hit counts are summed), and the run machinery's checkpoints make it crash-proof: the head,
the backbone when it trains, the optimiser, the schedule, the loader's position, every RNG
and the per-epoch accuracies survive a kill. Training views are RandomResizedCrop (scale
0.08-1) and a horizontal flip (:func:`~contrastlab.eval.linear.probe_augment`); on a photo
folder the boxes are drawn on each photo's own size before it is decoded, and the crop is
made on the device (:class:`~contrastlab.data.datasets.FolderViews`). Evaluation views are
the un-augmented centre views every evaluation measures (on folders: shorter side resized
to 256/224 of the view size, centre crop).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

from contrastlab.data.module import ContrastDataModule
from contrastlab.distributed import world
from contrastlab.eval.linear import PAPER_PROBE, probe_augment, step_schedule
from contrastlab.methods.base import restore_rng_states, rng_states, unpack
from contrastlab.models.splitbn import SplitBatchNorm
from contrastlab.views.augment import Augment, ViewSampler, eval_view


@dataclass(frozen=True)
class ClassifierProtocol:
    """How the classifier trains.

    ``frozen``: the linear probe (backbone frozen and in eval mode, no gradient through it);
    otherwise the whole network is fine-tuned (BatchNorm in train mode). SGD with momentum
    0.9 over the head at ``head_lr`` and, fine-tuning, the backbone at ``backbone_lr``;
    ``batch_size`` is the global batch. ``schedule``: ``step`` multiplies both by 0.1 after
    60% and 80% of the epochs (60 / 80 of 100); ``cosine`` anneals them per epoch to 0
    (``CosineAnnealingLR(T_max=epochs)``, stepped after each epoch, as SynCo's
    ``main_semisup.py``).
    """

    frozen: bool
    epochs: int
    head_lr: float
    batch_size: int
    backbone_lr: float = 0.0
    weight_decay: float = 0.0
    momentum: float = 0.9
    schedule: str = "step"

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch size must be >= 1: {self}")
        if self.head_lr <= 0 or self.backbone_lr < 0 or self.weight_decay < 0:
            raise ValueError(f"learning rates and weight decay must be non-negative: {self}")
        if self.schedule not in ("step", "cosine"):
            raise ValueError(f"schedule {self.schedule!r}: expected 'step' or 'cosine'")


PAPER_LINEAR_FOLDER = ClassifierProtocol(True, 100, *PAPER_PROBE["folder"])
"""MoCo's ``main_lincls.py`` and SynCo's ``scripts/lineval_*`` on ImageNet: lr 30, batch 256,
100 epochs, x0.1 at 60 and 80, momentum 0.9, no weight decay."""

SEMISUP_HEAD_LR = 0.5
SEMISUP_BACKBONE_LRS = (0.005, 0.01, 0.02, 0.05, 0.1)
"""SynCo's ``scripts/semisup_synco_r50_800ep.sh``: classifier lr 0.5, backbone lr swept over
these, batch 1024, 60 epochs for 1% of the labels and 30 for 10%; ``main_semisup.py``: SGD
momentum 0.9, weight decay 1e-6, cosine annealing per epoch."""
SEMISUP_BATCH = 1024
SEMISUP_WEIGHT_DECAY = 1e-6


def semisup_protocol(epochs: int, backbone_lr: float, head_lr: float, batch_size: int):
    """SynCo's fine-tuning (:data:`SEMISUP_BACKBONE_LRS`) at the given epochs and rates."""
    return ClassifierProtocol(
        frozen=False,
        epochs=epochs,
        head_lr=head_lr,
        batch_size=batch_size,
        backbone_lr=backbone_lr,
        weight_decay=SEMISUP_WEIGHT_DECAY,
        schedule="cosine",
    )


class LabelledSplits(pl.LightningDataModule):
    """Augmented training views of labelled images (``train_rows`` of the training split, or
    all of it) and centre views of ``eval_rows`` of an evaluation split (all when ``None``),
    served by a :class:`ContrastDataModule`'s loaders: resumable, split across processes."""

    def __init__(
        self,
        data: ContrastDataModule,
        train_split: str,
        eval_split: str,
        batch_size: int,
        train_rows: torch.Tensor | None = None,
        eval_rows: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.data, self.batch_size = data, batch_size
        self.train_split, self.eval_split = train_split, eval_split
        self.train_rows, self.eval_rows = train_rows, eval_rows
        self.train_set = self.data.split_views(train_split)
        self.eval_set = self.data.split_dataset(eval_split)
        self._draw = None

    def attach_views(self, draw, view_size: int) -> None:
        self._draw, self.data.view_size = draw, view_size
        if self.data.native:  # centre views: 256/224 of the view size, as Resize + CenterCrop
            self.eval_set.size = self.data._square_size()

    def labels(self, which: str) -> torch.Tensor:
        dataset, rows = (
            (self.train_set, self.train_rows)
            if which == "train"
            else (self.eval_set, self.eval_rows)
        )
        labels = torch.as_tensor(dataset.labels).cpu()
        return labels if rows is None else labels[rows]

    def train_dataloader(self):
        per_process = self.batch_size // world()[1]
        return self.data.loader(
            self.train_set, per_process, train=True, draw=self._draw, indices=self.train_rows
        )

    def val_dataloader(self):
        return self.data.loader(
            self.eval_set, self.data.eval_batch_size, train=False, indices=self.eval_rows
        )


def topk_hits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``[top-1 hits, top-5 hits, rows]`` of a batch (float64, to be summed over batches and
    processes)."""
    top = logits.topk(min(5, logits.shape[1]), dim=1).indices
    hits = top == labels[:, None]
    counts = [hits[:, :1].any(dim=1).sum(), hits.any(dim=1).sum(), torch.tensor(len(labels))]
    return torch.stack([c.to(logits.device, torch.float64) for c in counts])


class ClassifierTraining(pl.LightningModule):
    """``head(backbone(view))`` trained with cross-entropy under a :class:`ClassifierProtocol`;
    top-1 / top-5 on the evaluation views after every epoch, kept in :attr:`history` (saved
    in checkpoints, so a resumed run reports every epoch).

    The head is initialised as MoCo's ``main_lincls.py`` and SynCo's ``main_semisup.py`` do:
    weights ``N(0, 0.01^2)``, bias 0.
    """

    def __init__(
        self,
        backbone: nn.Module,
        augment: Augment,
        num_classes: int,
        protocol: ClassifierProtocol,
        seed: int = 0,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        self.backbone, self.augment, self.protocol = backbone, augment, protocol
        self.seed, self.channels_last = seed, channels_last
        self.head = nn.Linear(backbone.feature_dim, num_classes)
        seeded = torch.Generator().manual_seed(seed)  # the same head in every process
        nn.init.normal_(self.head.weight, std=0.01, generator=seeded)
        nn.init.zeros_(self.head.bias)
        self.views = ViewSampler([probe_augment(augment)], seed=seed)
        self.history: list[tuple[float, float]] = []
        self._hits: torch.Tensor | None = None
        for module in backbone.modules():
            if isinstance(module, SplitBatchNorm):
                module.num_splits = 1  # labelled batches need not divide into MoCo's groups
        backbone.requires_grad_(not protocol.frozen)
        self.train()  # Lightning leaves modes as it finds them

    def on_train_epoch_start(self) -> None:
        self.train()

    def train(self, mode: bool = True) -> ClassifierTraining:
        """A frozen backbone stays in eval mode (its BatchNorm statistics never move)."""
        super().train(mode)
        if self.protocol.frozen:
            self.backbone.eval()
        return self

    def setup(self, stage: str) -> None:
        rank, _ = world()
        self.views.reseed(self.seed * 1_000_003 + rank)
        torch.manual_seed(self.seed * 1_000_003 + rank)  # a run is a function of its seed
        if self.channels_last:
            self.to(memory_format=torch.channels_last)
        data = getattr(self._trainer, "datamodule", None)
        if hasattr(data, "attach_views"):
            data.attach_views(self.views.draw_boxes, self.augment.size)

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def logits(self, views: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.protocol.frozen):
            features = self.backbone(self._layout(views))
        return self.head(features).float()

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, indices, labels, boxes = unpack(batch)
        (view,) = self.views(images, indices, boxes)
        loss = F.cross_entropy(self.logits(view), labels.to(self.device))
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, sync_dist=True)
        self.log("train/lr_head", self.optimizers().param_groups[0]["lr"], on_step=True)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._hits = torch.zeros(3, dtype=torch.float64, device=self.device)

    def validation_step(self, batch, batch_idx: int) -> None:
        images, _, labels = batch[:3]
        views = eval_view(images.to(self.device), self.augment)
        self._hits += topk_hits(self.logits(views), labels.to(self.device))

    def on_validation_epoch_end(self) -> None:
        hits = self._hits
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(hits)  # every process scored its share of the evaluation images
        top1, top5 = (100.0 * hits[:2] / hits[2].clamp(min=1)).tolist()
        if not self.trainer.sanity_checking:
            self.history.append((top1, top5))
        # the same value on every process already: nothing to reduce
        self.log_dict({"val/top1": top1, "val/top5": top5}, prog_bar=True, sync_dist=False)

    def configure_optimizers(self):
        p = self.protocol
        groups = [{"params": list(self.head.parameters()), "lr": p.head_lr}]
        if not p.frozen:
            groups.append({"params": list(self.backbone.parameters()), "lr": p.backbone_lr})
        optimizer = torch.optim.SGD(groups, lr=p.head_lr, momentum=p.momentum,
                                    weight_decay=p.weight_decay)  # fmt: skip
        if p.schedule == "cosine":
            schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=p.epochs)
        else:
            schedule = step_schedule(optimizer, p.epochs)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": schedule, "interval": "epoch"},
        }

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.setdefault("contrastlab", {})
        state.update(rng_states(self.views, self.device))
        state["history"] = [list(row) for row in self.history]
        state["protocol"] = asdict(self.protocol)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("contrastlab") or {}
        restore_rng_states(self.views, state)
        self.history = [(float(a), float(b)) for a, b in state.get("history", [])]
