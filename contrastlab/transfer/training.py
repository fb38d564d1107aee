"""The detection fine-tune on the run machinery: a Lightning module and data module.

:class:`DetectionTraining` trains a detector
(:func:`~contrastlab.transfer.detectors.faster_rcnn_c4`) for the protocol's iterations with
detectron2's solver (:mod:`contrastlab.transfer.solver`) and, as its validation, recomputes the
BatchNorm statistics (precise BN) and scores the test images (:class:`VocScoring`: VOC AP,
:mod:`contrastlab.transfer.metrics`; :class:`CocoScoring`: COCO box and mask AP,
:mod:`contrastlab.transfer.coco_metrics`). Under several processes every BatchNorm is made global
(detectron2's ``naiveSyncBN``) and each process takes its share of every global batch and of the
test images.

:class:`DetectionData` serves the images: training batches in an order drawn from
``(seed, epoch)``, each global batch of one orientation (landscape or portrait, as detectron2
groups them), split across processes (resumable mid-epoch, so a resumed run sees the same
images), flips drawn from ``(seed, epoch, index)``, test images un-flipped.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import BatchSampler, DataLoader

from contrastlab.data.sampling import GlobalBatchSampler, ResumableLoader
from contrastlab.distributed import world
from contrastlab.methods.base import restore_rng_states, rng_states
from contrastlab.models.globalbn import globalise_batchnorm
from contrastlab.transfer.coco import CocoDataset, CocoImage
from contrastlab.transfer.coco_metrics import coco_detection_ap, encode_masks
from contrastlab.transfer.data import DetectionImages, detection_collate
from contrastlab.transfer.metrics import voc_detection_ap
from contrastlab.transfer.solver import DetectionSolver, lr_factor, precise_bn, sgd
from contrastlab.transfer.voc import VOC_CLASSES, VocImage

Batch = tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]


class DetectionLoader(ResumableLoader):
    """A :class:`ResumableLoader` of :class:`DetectionImages` that tells the images the epoch
    before its workers start, so the flips follow ``(seed, epoch, index)``."""

    def __iter__(self) -> Iterator[Any]:
        self.dataset.set_epoch(self.global_sampler.epoch)  # a generator: after set_epoch
        yield from super().__iter__()


LANDSCAPE, PORTRAIT = 0, 1


def aspect_groups(images: Sequence[VocImage | CocoImage]) -> torch.Tensor:
    """Each image's orientation by its annotated size, as detectron2 groups training batches
    (``DATALOADER.ASPECT_RATIO_GROUPING``): :data:`LANDSCAPE` when wider than tall, else
    :data:`PORTRAIT` (square included)."""
    return torch.tensor(
        [LANDSCAPE if image.width > image.height else PORTRAIT for image in images],
        dtype=torch.long,
    )


class DetectionData(pl.LightningDataModule):
    """Training images (flipped at ``flip_prob``) in global batches of ``batch_size`` and the
    test images, each split across the processes; ``items(images, flip_prob, seed)`` makes the
    dataset (:class:`DetectionImages` for VOC, ``CocoDetectionImages`` for COCO).

    Every global batch holds landscape images only or portrait ones only
    (:func:`aspect_groups`), so the detector pads its batch to little more than its images (and
    BatchNorm sees little padding). detectron2 groups each GPU's batch on its own; here the
    whole global batch is of one orientation, so that one process sees what several see
    together (:class:`~contrastlab.data.sampling.GlobalBatchSampler`)."""

    def __init__(
        self,
        train: Sequence[VocImage | CocoImage],
        test: Sequence[VocImage | CocoImage],
        batch_size: int,
        workers: int = 2,
        seed: int = 0,
        flip_prob: float = 0.5,
        items: Callable[[Sequence, float, int], DetectionImages] = DetectionImages,
    ) -> None:
        super().__init__()
        self.train, self.test = list(train), list(test)
        self.batch_size, self.workers, self.seed = batch_size, workers, seed
        self.flip_prob, self.items = flip_prob, items

    def per_process(self) -> int:
        processes = world()[1]
        if self.batch_size % processes:
            raise ValueError(
                f"a global batch of {self.batch_size} images does not divide over {processes} "
                "processes"
            )
        return self.batch_size // processes

    def train_dataloader(self) -> DetectionLoader:
        rank, processes = world()
        groups = aspect_groups(self.train)
        landscape = int((groups == LANDSCAPE).sum())
        if max(landscape, len(self.train) - landscape) < self.batch_size:
            raise ValueError(
                f"{len(self.train)} training images ({landscape} landscape, "
                f"{len(self.train) - landscape} portrait or square) cannot fill one global batch "
                f"of {self.batch_size} of one orientation"
            )
        batch = self.per_process()
        sampler = GlobalBatchSampler(
            len(self.train),
            batch,
            shuffle=True,
            seed=self.seed,
            rank=rank,
            world_size=processes,
            groups=groups,
        )
        return DetectionLoader(
            self.items(self.train, self.flip_prob, self.seed),
            batch_sampler=BatchSampler(sampler, batch, drop_last=True),
            collate_fn=detection_collate,
            num_workers=self.workers,
        )

    def val_dataloader(self) -> DataLoader:
        """The test images one at a time (detectron2's test batch), process ``r`` of ``n``
        taking images ``r, r + n, r + 2n, ...``."""
        rank, processes = world()
        sampler = GlobalBatchSampler(
            len(self.test), 1, shuffle=False, rank=rank, world_size=processes, drop_last=False
        )
        return DataLoader(
            self.items(self.test, 0.0, self.seed),
            batch_sampler=BatchSampler(sampler, 1, drop_last=False),
            collate_fn=detection_collate,
            num_workers=self.workers,
        )


PRECISE_BN_EPOCH = 10**6
"""The first epoch of the order precise BN reads (not one the run trains on)."""


def endless(loader: DetectionLoader) -> Iterator[Batch]:
    """The loader's batches, epoch after epoch from :data:`PRECISE_BN_EPOCH` on."""
    for epoch in itertools.count(PRECISE_BN_EPOCH):
        loader.global_sampler.set_epoch(epoch)
        yield from loader


class Scoring(Protocol):
    """How a task scores its test: ``compact`` shrinks one image's detections (labels already
    0-based, on the CPU) to what the score needs, in the process that found them; ``score``
    turns every test image's compact detections, in test order, into the result."""

    def compact(self, found: dict[str, torch.Tensor]) -> dict[str, Any]: ...

    def score(self, images: Sequence, found: list[dict[str, Any]]) -> dict: ...


@dataclass(frozen=True)
class VocScoring:
    """VOC AP (:func:`voc_detection_ap`) and the examples a report draws."""

    classes: tuple[str, ...] = VOC_CLASSES

    def compact(self, found: dict[str, torch.Tensor]) -> dict[str, Any]:
        return found

    def score(self, images: Sequence[VocImage], found: list[dict[str, Any]]) -> dict:
        result = voc_detection_ap(images, found, self.classes)
        return result | {"examples": detection_examples(images, found, self.classes)}


@dataclass(frozen=True)
class CocoScoring:
    """COCO box (and with ``masks`` mask) AP against ``annotation_file``
    (:func:`coco_detection_ap`); each image's masks are run-length encoded where they are
    found, so no process gathers full-image masks."""

    dataset: CocoDataset
    annotation_file: Path
    masks: bool = True

    def compact(self, found: dict[str, torch.Tensor]) -> dict[str, Any]:
        return encode_masks(found) if self.masks else found

    def score(self, images: Sequence[CocoImage], found: list[dict[str, Any]]) -> dict:
        result = coco_detection_ap(self.dataset, self.annotation_file, found, self.masks)
        classes = self.dataset.classes
        return result | {"examples": detection_examples(images, found, classes)}


class DetectionTraining(pl.LightningModule):
    """A detector fine-tuned under a :class:`DetectionSolver` at ``global_batch`` images per
    iteration; its validation is the protocol's test (precise BN over
    ``solver.precise_bn_iterations`` training batches, then VOC AP of the test images), whose
    result lands in :attr:`result` on the first process (``None`` elsewhere)."""

    def __init__(
        self,
        detector: nn.Module,
        solver: DetectionSolver,
        global_batch: int,
        seed: int = 0,
        scoring: Scoring = VocScoring(),
        record: dict | None = None,
    ) -> None:
        super().__init__()
        self.detector, self.solver, self.global_batch = detector, solver, global_batch
        self.seed, self.scoring = seed, scoring
        self.record = record or {
            "solver": asdict(solver),
            "global_batch": global_batch,
            "seed": seed,
        }  # what a resume must keep, saved in every checkpoint
        self.result: dict | None = None
        self.precise_bn_batches = 0
        self._found: list[tuple[int, dict[str, torch.Tensor]]] = []

    def setup(self, stage: str) -> None:
        rank, processes = world()
        torch.manual_seed(self.seed * 1_000_003 + rank)  # sizes and RoI samples; resumes restore
        if processes > 1:
            globalise_batchnorm(self.detector)  # detectron2's naiveSyncBN, before the optimiser

    # ----------------------------------------------------------------- training

    def _to_device(self, batch: Batch) -> Batch:
        images, targets = batch
        images = [image.to(self.device, non_blocking=True) for image in images]
        targets = [{k: v.to(self.device) for k, v in t.items()} for t in targets]
        return images, targets

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        images, targets = self._to_device(batch)
        return self.detector(images, targets)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        losses = self.losses(batch)
        loss = sum(losses.values())
        size = len(batch[0])
        self.log("train/loss", loss, prog_bar=True, on_step=True, batch_size=size, sync_dist=True)
        for name, value in losses.items():
            self.log(f"train/{name}", value, on_step=True, batch_size=size, sync_dist=True)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True)
        return loss

    def configure_optimizers(self):
        optimizer = sgd(self.detector, self.solver, self.global_batch)
        factor = functools.partial(lr_factor, solver=self.solver)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.setdefault("contrastlab", {})
        state.update(rng_states(None, self.device))
        state["transfer"] = self.record

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        restore_rng_states(None, checkpoint.get("contrastlab"))

    # ----------------------------------------------------------------- the test

    def on_validation_start(self) -> None:
        """Precise BN: the BatchNorm statistics averaged over training batches (the same
        count in every process, so global BatchNorm's all-reduces pair up)."""
        iterations = self.solver.precise_bn_iterations
        self.precise_bn_batches = 0
        if iterations > 0:
            loader = self.trainer.datamodule.train_dataloader()
            batches = itertools.islice(endless(loader), iterations)
            self.precise_bn_batches = precise_bn(self.detector, self.losses, batches)
        self._found = []

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        images, targets = self._to_device(batch)
        for target, found in zip(targets, self.detector(images), strict=True):
            found = {k: v.cpu() for k, v in found.items()}
            found["labels"] = found["labels"] - 1  # 0: the detector's background
            self._found.append((int(target["index"]), self.scoring.compact(found)))

    def on_validation_epoch_end(self) -> None:
        found = self._found
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            shares: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(shares, found)
            found = [item for share in shares for item in share]
        self._found = []
        if world()[0] != 0:
            return
        found.sort(key=lambda item: item[0])
        test = self.trainer.datamodule.test
        if [index for index, _ in found] != list(range(len(test))):
            raise RuntimeError(f"the test scored {len(found)} of {len(test)} images")
        self.result = self.scoring.score(test, [p for _, p in found])


EXAMPLE_IMAGES, EXAMPLE_SCORE, EXAMPLE_BOXES = 4, 0.5, 20


def detection_examples(
    images: Sequence[VocImage],
    predictions: Sequence[dict[str, torch.Tensor]],
    classes: Sequence[str],
) -> list[dict]:
    """What a report draws: for the first :data:`EXAMPLE_IMAGES` test images, the photo, its
    annotated boxes and the detections scoring at least :data:`EXAMPLE_SCORE` (the best
    :data:`EXAMPLE_BOXES`), boxes in the detector's 0-based pixels."""
    examples = []
    for image, found in zip(images[:EXAMPLE_IMAGES], predictions, strict=False):
        keep = (found["scores"] >= EXAMPLE_SCORE).nonzero().flatten()[:EXAMPLE_BOXES]
        examples.append(
            {
                "image": str(image.path),
                "truth": [[round(v, 1) for v in box] for box in image.boxes().tolist()],
                "truth_labels": [classes[i] for i in image.labels().tolist()],
                "boxes": [[round(v, 1) for v in box] for box in found["boxes"][keep].tolist()],
                "labels": [classes[i] for i in found["labels"][keep].tolist()],
                "scores": [round(v, 3) for v in found["scores"][keep].tolist()],
            }
        )
    return examples
