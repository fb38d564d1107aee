"""``contrastlab transfer``: a pretrained backbone fine-tuned and tested at a detection protocol
(:mod:`contrastlab.transfer.tasks`) on the run machinery: Lightning over any number of
processes and nodes with global BatchNorm, ``last.ckpt`` at every epoch and at stop signals,
exact resume, ``metrics.csv`` and TensorBoard, a progress bar with the run's ETA.

The run's folder is ``<run dir>/eval/transfer_<task>/`` for a contrastlab checkpoint (beside
its other evaluations) and ``<export>_transfer_<task>/`` beside an exported backbone; the
result is written beside the folder as ``<folder>.json``, and the tested detector (its weights
after precise BN) as ``<folder>/detector.pth``.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from contrastlab.app.classify import Launch, run_trainer
from contrastlab.distributed import world
from contrastlab.io import atomic_write
from contrastlab.models.backbones import ARCHITECTURES, ResNetBackbone, read_backbone_weights
from contrastlab.models.exported import torchvision_resnet
from contrastlab.models.splitbn import SplitBatchNorm
from contrastlab.presets import flatten
from contrastlab.runs.resume import CheckpointError, load_checkpoint_file, method_from_checkpoint
from contrastlab.transfer.coco import CocoError, read_coco
from contrastlab.transfer.data import CocoDetectionImages, DetectionImages
from contrastlab.transfer.detectors import faster_rcnn_c4
from contrastlab.transfer.mask_rcnn import mask_rcnn_c4, mask_rcnn_fpn
from contrastlab.transfer.tasks import TransferTask
from contrastlab.transfer.training import (
    CocoScoring,
    DetectionData,
    DetectionTraining,
    Scoring,
    VocScoring,
)
from contrastlab.transfer.voc import VOC_CLASSES, read_voc

DETECTOR_FILE = "detector.pth"
"""The tested detector's state dict (after precise BN), in the run's folder."""

RANDOM = "random"
"""``--checkpoint random``: the randomly initialised backbone, the baseline a pretrained one
must beat."""


def detection_resnet(source: str, arch: str | None = None) -> nn.Module:
    """The torchvision ResNet (ImageNet stem, plain BatchNorm) a detector is built around:
    ``random`` (``arch``'s random initialisation), a contrastlab checkpoint (its online
    backbone) or an export (``--format torchvision`` or ``safetensors``, with its ``.json``)."""
    if source == RANDOM:
        if arch not in ARCHITECTURES:
            raise ValueError(f"--checkpoint random needs --backbone, one of {ARCHITECTURES}")
        return torchvision_resnet(arch)
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".ckpt":
        backbone = method_from_checkpoint(load_checkpoint_file(path)).backbone
        if not isinstance(backbone, ResNetBackbone):
            raise ValueError(
                f"{path}: the C4 detector is built from a ResNet's stages; this run's backbone "
                f"is {type(backbone).__name__} (a ViT would need a feature pyramid, as ViTDet)"
            )
        net = backbone.net
    else:
        net = torchvision_resnet(exported_arch(path))
        net.load_state_dict(read_backbone_weights(path), strict=True)
    for module in net.modules():
        if isinstance(module, SplitBatchNorm):
            module.num_splits = 1  # detection batches need not divide into MoCo's groups
    return net


def exported_arch(path: Path) -> str:
    """The ResNet an export holds, from the ``.json`` written beside it."""
    meta_path = Path(f"{path}.json")
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} not found: an export is read with its .json")
    meta = json.loads(meta_path.read_text())
    if meta.get("arch") not in ARCHITECTURES:
        raise ValueError(f"{path} holds {meta.get('arch')!r}; the C4 detector needs a ResNet")
    return meta["arch"]


@dataclass(frozen=True)
class TaskData:
    """A task's images read and checked, its classes, how its test is scored and how its
    images become a detector's items."""

    train: list
    test: list
    classes: tuple[str, ...]
    scoring: Scoring
    items: Callable[[Sequence, float, int], DetectionImages]


def read_task_data(task: TransferTask, root: str | Path) -> TaskData:
    """The task's training and test images under ``root`` (a VOCdevkit, or a COCO folder with
    ``annotations/`` and the image folders), every fault an error naming the file."""
    if task.dataset == "voc":
        train, test = read_voc(root, task.train_splits), read_voc(root, task.test_splits)
        return TaskData(train, test, VOC_CLASSES, VocScoring(VOC_CLASSES), DetectionImages)
    (train_file, train_folder), (test_file, test_folder) = *task.train_splits, *task.test_splits
    train_set = read_coco(Path(root) / train_file, Path(root) / train_folder)
    test_set = read_coco(Path(root) / test_file, Path(root) / test_folder)
    if test_set.category_ids != train_set.category_ids:
        raise CocoError(
            f"{Path(root) / test_file}: its categories {test_set.category_ids} are not the "
            f"training file's {train_set.category_ids}"
        )
    # detectron2's FILTER_EMPTY_ANNOTATIONS: images without a non-crowd object do not train
    train = [i for i in train_set.images if any(not o.crowd for o in i.objects)]
    return TaskData(
        train,
        list(test_set.images),
        train_set.classes,
        CocoScoring(test_set, Path(root) / test_file, masks=task.masks),
        functools.partial(CocoDetectionImages, masks=task.masks),
    )


def build_detector(task: TransferTask, resnet: nn.Module, num_classes: int) -> nn.Module:
    """The task's detector around a copy of ``resnet``: Faster R-CNN C4 (VOC), Mask R-CNN C4
    or Mask R-CNN FPN (COCO)."""
    if task.detector == "fpn":
        return mask_rcnn_fpn(resnet, num_classes, task.settings)
    build = mask_rcnn_c4 if task.masks else faster_rcnn_c4
    return build(resnet, num_classes, task.settings)


def default_run_dir(source: str, task: TransferTask) -> Path:
    """``<run dir>/eval/transfer_<task>`` for ``<run dir>/checkpoints/x.ckpt``, else
    ``<source>_transfer_<task>`` beside the file."""
    if source == RANDOM:
        return Path(f"random_transfer_{task.name}")
    path = Path(source).absolute()
    if path.parent.name == "checkpoints":
        return path.parent.parent / "eval" / f"transfer_{task.name}"
    return path.parent / f"{path.stem}_transfer_{task.name}"


def check_resumable(path: Path, checkpoint: dict, record: dict) -> None:
    """A resumed transfer run keeps the settings it was started with."""
    saved = (checkpoint.get("contrastlab") or {}).get("transfer")
    if saved is None:
        raise CheckpointError(f"{path} is not a transfer run's checkpoint")
    before, after = flatten(saved), flatten(record)
    changes = [f"{k}: {before.get(k)!r} -> {v!r}" for k, v in after.items() if before.get(k) != v]
    if changes:
        raise CheckpointError(
            f"cannot resume {path} with other settings ({'; '.join(changes)}): drop them, or "
            f"remove {path.parent.parent} to start over"
        )


def run_record(task: TransferTask, source: str, batch: int, seed: int) -> dict:
    """What a resumed run must keep: the task, its settings and solver, the backbone, the
    batch and the seed (lists where JSON would turn tuples into them)."""
    return json.loads(
        json.dumps(
            {
                "task": task.name,
                "source": source,
                "settings": asdict(task.settings),
                "solver": asdict(task.solver),
                "global_batch": batch,
                "seed": seed,
            }
        )
    )


def transfer(
    task: TransferTask,
    source: str,
    root: str | Path,
    batch: int = 16,
    arch: str | None = None,
    run_dir: Path | None = None,
    launch: Launch | None = None,
    resume: bool = False,
    seed: int = 0,
) -> dict:
    """Fine-tune the backbone of ``source`` at ``task`` on the dataset at ``root`` and test it;
    returns (and on the first process writes to ``<run dir>.json``) the result (VOC: AP, AP50,
    AP75 and AP50 per class; COCO: box and mask AP, AP50, AP75 and by area), with the run's
    settings and seconds."""
    launch = launch or Launch()
    start = time.perf_counter()
    data_set = read_task_data(task, root)
    torch.manual_seed(seed)  # the new layers' (and a random backbone's) initial weights
    resnet = detection_resnet(source, arch)
    detector = build_detector(task, resnet, len(data_set.classes))
    record = run_record(task, source, batch, seed)
    module = DetectionTraining(detector, task.solver, batch, seed, data_set.scoring, record)
    workers = 2 if launch.workers is None else launch.workers
    data = DetectionData(data_set.train, data_set.test, batch, workers, seed, items=data_set.items)
    train, test = data_set.train, data_set.test
    run_dir = run_dir or default_run_dir(source, task)
    trainer, checkpoint = run_trainer(
        run_dir,
        launch,
        resume,
        lambda path, saved: check_resumable(path, saved, record),
        max_steps=task.solver.iterations,
        max_epochs=-1,
        limit_val_batches=0,  # the test runs once, after training
        inference_mode=False,  # precise BN updates statistics inside the test
    )
    trainer.fit(module, datamodule=data, ckpt_path=str(checkpoint) if checkpoint else None)
    trainer.limit_val_batches = 1.0
    trainer.validate(module, datamodule=data, verbose=False)
    if world()[0] != 0 or module.result is None:
        return {}
    weights = run_dir / DETECTOR_FILE
    atomic_write(weights, lambda f: torch.save(module.detector.state_dict(), f))
    scores = module.result
    if "box" in scores:  # COCO: the box AP also at the top, as VOC's
        scores = {k: scores["box"][k] for k in ("AP", "AP50", "AP75")} | scores
    result = {
        "task": task.name,
        "checkpoint": source,
        **scores,
        "iterations": task.solver.iterations,
        "global_batch": batch,
        "processes": world()[1],
        "precise_bn_batches": module.precise_bn_batches,
        "train_images": len(train),
        "test_images": len(test),
        "seconds": time.perf_counter() - start,
        "detector": str(weights),
        "settings": record["settings"],
        "solver": record["solver"],
        "reproduces": task.reproduces,
    }
    text = json.dumps(result, indent=2) + "\n"
    atomic_write(Path(f"{run_dir}.json"), lambda f: f.write(text.encode()))
    return result


def summary(result: dict) -> str:
    """One line: ``voc-c4: AP50 82.40  AP 57.00  AP75 63.60 (24000 iterations of 16 images,
    18000 s)``; a COCO task adds ``mask AP 35.70``."""
    masks = f"  mask AP {result['mask']['AP']:.2f}" if "mask" in result else ""
    return (
        f"{result['task']}: AP50 {result['AP50']:.2f}  AP {result['AP']:.2f}  "
        f"AP75 {result['AP75']:.2f}{masks} ({result['iterations']} iterations of "
        f"{result['global_batch']} images, {result['seconds']:.0f} s)"
    )
