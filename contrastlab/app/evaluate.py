"""Evaluating checkpoints outside training: kNN, linear probe, fine-tuning and export.

Each function opens a checkpoint (weights_only), rebuilds its framework and its data module
(optionally on another root), and reads any split of the dataset. Features of un-augmented
views are cached per (checkpoint, split) beside the run; results are written as JSON to
``<run dir>/eval/``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch.utils.data import Dataset

from contrastlab.app.classify import Launch, streaming_finetune, streaming_probe
from contrastlab.data.datasets import LazyImageFolder
from contrastlab.data.module import DEFAULT_SPLITS, ContrastDataModule
from contrastlab.data.readers import DatasetError, list_image_folder
from contrastlab.distributed import world
from contrastlab.eval.classifier import (
    PAPER_LINEAR_FOLDER,
    SEMISUP_BATCH,
    SEMISUP_HEAD_LR,
    semisup_protocol,
)
from contrastlab.eval.embed import Embedded, embed_dataset
from contrastlab.eval.features import FeatureCache, Features, extract_features
from contrastlab.eval.finetune import (
    balanced_subset,
    default_finetune_epochs,
    finetune,
    parse_label_amount,
    subset_from_list,
)
from contrastlab.eval.knn import knn_accuracy
from contrastlab.eval.linear import (
    FAST_PROBE_BATCH,
    PAPER_PROBE,
    ProbeResult,
    choose_fast_lr,
    linear_on_features,
    linear_on_images,
)
from contrastlab.io import atomic_write
from contrastlab.methods.base import ContrastiveMethod
from contrastlab.runs.resume import (
    data_from_checkpoint,
    load_checkpoint_file,
    method_from_checkpoint,
)


@dataclass
class Evaluation:
    """A checkpoint opened for evaluation: its model, data, device and feature cache."""

    path: Path
    model: ContrastiveMethod
    data: ContrastDataModule
    device: torch.device
    cache: FeatureCache

    @classmethod
    def open(
        cls,
        path: str | Path,
        root: str | None = None,
        device: str = "cpu",
        cache_dir: str | None = None,
    ) -> Evaluation:
        checkpoint = load_checkpoint_file(path)
        model = method_from_checkpoint(checkpoint)
        return cls(
            Path(path),
            model,
            data_from_checkpoint(checkpoint, root, model.augment.size),
            torch.device(device),
            FeatureCache(path, cache_dir),
        )

    def splits(self, train: str | None, evaluation: str | None) -> tuple[str, str]:
        """The labelled training and evaluation split names (the dataset's defaults)."""
        _, bank, evaluate = DEFAULT_SPLITS[self.data.dataset]
        return train or bank, evaluation or evaluate

    def features(self, split: str, subset: int | None = None) -> Features:
        dataset = self.data.split_dataset(split, subset)
        features, labels = self.cache.features(self.model, dataset, self.device)
        if (labels < 0).any():
            raise DatasetError(
                f"{self.data.dataset} split {split!r} has no labels (a flat folder): kNN, "
                "linear probes and fine-tuning need class sub-folders"
            )
        return features, labels

    def save(self, name: str, result: dict) -> Path:
        """Write ``result`` as JSON to ``<run dir>/eval/<name>.json`` (atomically)."""
        folder = self.cache.directory.parent / "eval"
        text = json.dumps({"checkpoint": str(self.path), **result}, indent=2) + "\n"
        return atomic_write(folder / f"{name}.json", lambda f: f.write(text.encode()))


def knn_from_checkpoint(
    path: str | Path,
    k: int = 200,
    t: float = 0.1,
    root: str | None = None,
    device: str = "cpu",
    bank_split: str | None = None,
    eval_split: str | None = None,
) -> float:
    """kNN top-1 (percent) of a checkpoint: bank = a labelled split (the training split by
    default), queries = another (the evaluation split), both through the feature cache."""
    return knn_grid(
        path=path,
        ks=[k],
        ts=[t],
        root=root,
        device=device,
        bank_split=bank_split,
        eval_split=eval_split,
    ).rows[0][2]


@dataclass(frozen=True)
class KnnGrid:
    """kNN top-1 (percent) for each ``(k, t)``, with the splits and image counts it used and
    the subsets the run's own monitor used (``None``: the whole split)."""

    rows: list[tuple[int, float, float]]
    bank: tuple[str, int]
    queries: tuple[str, int]
    run_subsets: tuple[int | None, int | None]

    def lines(self, checkpoint: str | Path) -> list[str]:
        """``kNN top-1 35.69% (k=200, t=0.1; bank train 50,000 images, queries test 10,000
        images; the run's monitor: 2,048 / 2,000) CKPT``."""
        (bank, n_bank), (queries, n_queries) = self.bank, self.queries
        sizes = f"bank {bank} {n_bank:,} images, queries {queries} {n_queries:,} images"
        train, test = self.run_subsets
        if (train, test) != (None, None):
            counts = " / ".join(f"{n:,}" if n else "whole split" for n in (train, test))
            sizes += f"; the run's monitor used subsets: {counts}"
        return [
            f"kNN top-1 {top1:.2f}% (k={k}, t={t}; {sizes}) {checkpoint}"
            for k, t, top1 in self.rows
        ]

    def to_dict(self) -> dict:
        return {
            "results": [{"k": k, "t": t, "top1": top1} for k, t, top1 in self.rows],
            "bank": {"split": self.bank[0], "images": self.bank[1]},
            "queries": {"split": self.queries[0], "images": self.queries[1]},
            "run_subsets": list(self.run_subsets),
        }


def knn_grid(
    path: str | Path,
    ks: list[int],
    ts: list[float],
    root: str | None = None,
    device: str = "cpu",
    bank_split: str | None = None,
    eval_split: str | None = None,
    train_subset: int | None = None,
    eval_subset: int | None = None,
) -> KnnGrid:
    """kNN top-1 for every pair of ``ks`` and ``ts``, features extracted once (optionally of
    seeded subsets of the bank and query splits), saved as ``<run dir>/eval/knn.json``."""
    run = Evaluation.open(path, root, device)
    bank_split, eval_split = run.splits(bank_split, eval_split)
    bank_x, bank_y = run.features(bank_split, train_subset)
    eval_x, eval_y = run.features(eval_split, eval_subset)
    num_classes = int(torch.cat([bank_y, eval_y]).max()) + 1
    grid = KnnGrid(
        rows=[
            (k, t, knn_accuracy(eval_x, eval_y, bank_x, bank_y, num_classes, k, t))
            for k in ks
            for t in ts
        ],
        bank=(bank_split, len(bank_y)),
        queries=(eval_split, len(eval_y)),
        run_subsets=(run.data.train_subset, run.data.eval_subset),
    )
    run.save("knn", grid.to_dict())
    return grid


def knn_of_model(
    model: ContrastiveMethod,
    data: ContrastDataModule,
    k: int = 200,
    t: float = 0.1,
    device: str = "cpu",
) -> float:
    """kNN top-1 (percent) of ``model``'s backbone on ``data``'s bank and evaluation splits
    (no cache: the model need not come from a file)."""
    data.setup("validate")
    loaders = data.knn_dataloaders()
    if not loaders:
        raise ValueError(f"{data.dataset}: kNN needs labelled bank and evaluation splits")
    dev = torch.device(device)
    bank_x, bank_y = extract_features(model, loaders[0], dev)
    eval_x, eval_y = extract_features(model, loaders[1], dev)
    return knn_accuracy(eval_x, eval_y, bank_x, bank_y, k=k, temperature=t)


def linear_probe(
    path: str | Path,
    mode: str = "fast",
    epochs: int = 100,
    lr: float | None = None,
    batch_size: int | None = None,
    train_subset: int | None = None,
    eval_subset: int | None = None,
    root: str | None = None,
    device: str = "cpu",
    launch: Launch | None = None,
    resume: bool = False,
) -> ProbeResult:
    """Linear probe of a checkpoint (see :mod:`contrastlab.eval.linear`); saved as
    ``eval/linear_<mode>.json``. Unset, ``lr`` and ``batch_size`` are the paper protocol's for
    the dataset (:data:`PAPER_PROBE`), or for the fast mode the learning rate chosen on a
    held-out slice of the training split (:func:`choose_fast_lr`) and batch 256. The paper
    protocol on an image folder streams from it (:func:`streaming_probe`): ``launch`` says on
    how many processes, ``resume`` continues a stopped run."""
    if mode not in ("fast", "paper"):
        raise ValueError(f"unknown linear-probe mode {mode!r}; expected 'fast' or 'paper'")
    run = Evaluation.open(path, root, device)
    train_split, eval_split = run.splits(None, None)
    if mode == "paper" and run.data.lazy:
        paper_lr, paper_batch = PAPER_PROBE[run.data.dataset]
        protocol = replace(
            PAPER_LINEAR_FOLDER,
            epochs=epochs,
            head_lr=lr or paper_lr,
            batch_size=batch_size or paper_batch,
        )
        return streaming_probe(run, protocol, train_subset, eval_subset, launch, resume)
    evaluation = run.features(eval_split, eval_subset)
    if mode == "fast":
        train = run.features(train_split, train_subset)
        classes = int(torch.cat([train[1], evaluation[1]]).max()) + 1
        batch_size = batch_size or FAST_PROBE_BATCH
        holdout = None
        if lr is None:
            lr, holdout = choose_fast_lr(train, classes, epochs, batch_size)
        result = linear_on_features(
            train=train,
            evaluation=evaluation,
            num_classes=classes,
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
        )
        result.holdout_top1 = holdout
    else:
        paper_lr, paper_batch = PAPER_PROBE[run.data.dataset]
        lr, batch_size = lr or paper_lr, batch_size or paper_batch
        images = run.data.split_dataset(train_split, train_subset)
        classes = int(torch.cat([images.labels, evaluation[1]]).max()) + 1
        result = linear_on_images(
            model=run.model,
            train_images=images.images,
            train_labels=images.labels,
            evaluation=evaluation,
            num_classes=classes,
            device=run.device,
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
        )
    splits = {"train_split": train_split, "eval_split": eval_split}
    run.save(f"linear_{mode}", {**result.to_dict(), **splits})
    return result


def finetune_checkpoint(
    path: str | Path,
    labels: str = "1%",
    epochs: int | None = None,
    lr: float | None = None,
    head_lr: float | None = None,
    batch_size: int | None = None,
    eval_subset: int | None = None,
    seed: int = 0,
    root: str | None = None,
    device: str = "cpu",
    sweep: tuple[float, ...] = (),
    launch: Launch | None = None,
    resume: bool = False,
):
    """Semi-supervised fine-tuning on a labelled subset of the training split: class-balanced
    and seeded (``1%``, ``10%``, a count), or the images a subset file lists
    (:func:`subset_from_list`); ``epochs`` defaults to SynCo's (60 for 1%, else 30). On an
    image folder it streams from the folder at SynCo's settings (:data:`FOLDER_FINETUNE`),
    optionally choosing the backbone lr among ``sweep`` on held-out labelled images
    (:func:`~contrastlab.app.classify.streaming_finetune`); in-memory datasets train in one
    process (:func:`~contrastlab.eval.finetune.finetune`, :data:`MEMORY_FINETUNE`). The
    result and the subset's indices are saved as ``eval/finetune_<labels>.json``."""
    run = Evaluation.open(path, root, device)
    train_split, eval_split = run.splits(None, None)
    defaults = FOLDER_FINETUNE if run.data.lazy else MEMORY_FINETUNE
    lr = defaults[0] if lr is None else lr
    head_lr = defaults[1] if head_lr is None else head_lr
    batch_size = defaults[2] if batch_size is None else batch_size
    epochs = default_finetune_epochs(labels) if epochs is None else epochs
    listed = Path(labels).is_file()
    name = Path(labels).stem if listed else labels.replace("%", "pct")
    extra = {"train_split": train_split, "eval_split": eval_split, "seed": seed}
    if run.data.lazy:
        train_labels = torch.as_tensor(run.data.split_dataset(train_split).labels)
        labelled = _labelled_rows(run, train_split, train_labels, labels, seed)
        protocol = semisup_protocol(epochs, lr, head_lr, batch_size)
        result = streaming_finetune(
            run, labelled, labels, protocol, sweep, eval_subset, launch, resume, f"finetune_{name}"
        )
        if world()[0] == 0:
            run.save(f"finetune_{name}", {**result.to_dict(), **extra, "processes": world()[1]})
        return result
    if sweep:
        raise ValueError("--sweep applies to image folders (in memory: give --lr)")
    train = run.data.split_dataset(train_split)
    evaluation = run.data.split_dataset(eval_split, eval_subset)
    labelled = _labelled_rows(run, train_split, train.labels, labels, seed)
    classes = int(torch.cat([train.labels, evaluation.labels]).max()) + 1
    result = finetune(
        model=run.model,
        train_images=train.images,
        train_labels=train.labels,
        labelled=labelled,
        evaluation=(evaluation.images, evaluation.labels),
        num_classes=classes,
        device=run.device,
        labels_text=labels,
        epochs=epochs,
        lr=lr,
        head_lr=head_lr,
        batch_size=batch_size,
        seed=seed,
    )
    run.save(f"finetune_{name}", {**result.to_dict(), **extra})
    return result


FOLDER_FINETUNE = (0.005, SEMISUP_HEAD_LR, SEMISUP_BATCH)
"""Image folders' ``(backbone lr, classifier lr, global batch)``: SynCo's
``scripts/semisup_*`` (0.005 is its 200-epoch script's backbone lr and the first of the
800-epoch script's sweep, :data:`~contrastlab.eval.classifier.SEMISUP_BACKBONE_LRS`)."""
MEMORY_FINETUNE = (0.01, 0.1, 256)
"""In-memory datasets' ``(backbone lr, classifier lr, batch)`` (no source gives CIFAR's)."""


def _labelled_rows(
    run: Evaluation, split: str, labels: torch.Tensor, amount: str, seed: int
) -> torch.Tensor:
    """The labelled training images: those a subset file lists, or a seeded class-balanced
    share (:func:`balanced_subset`)."""
    if Path(amount).is_file():
        names = run.data.split_file_names(split)
        lines = Path(amount).read_text().splitlines()
        return subset_from_list(lines, names, len(labels), amount)
    return balanced_subset(labels, parse_label_amount(amount), seed)


__all__ = [
    "Evaluation",
    "data_from_checkpoint",
    "finetune_checkpoint",
    "knn_from_checkpoint",
    "knn_grid",
    "knn_of_model",
    "linear_probe",
    "method_from_checkpoint",
]


def write_crop_picture(
    checkpoint_path: str | Path,
    out: str | Path,
    images: int = 8,
    crops: int = 4,
    threshold: float | None = None,
    alpha: float | None = None,
    seed: int = 0,
    root: str | None = None,
    device: str = "cpu",
) -> Path:
    """Draw ``contrastlab crops``' picture of a checkpoint: ``images`` seeded training images
    with the encoder's heatmap, its ContrastiveCrop box and ``crops`` sampled crops each."""
    from contrastlab.app.figures import crop_picture, draw_crop_picture, save_figure
    from contrastlab.data.datasets import images_at

    checkpoint = load_checkpoint_file(checkpoint_path)
    model = method_from_checkpoint(checkpoint)
    data = data_from_checkpoint(checkpoint, root, model.augment.size)
    data.setup("fit")
    generator = torch.Generator().manual_seed(seed)
    count = min(images, len(data.train_set))
    indices = torch.randperm(len(data.train_set), generator=generator)[:count]
    picture = crop_picture(
        model.to(device),
        images_at(data.train_set, indices).to(device),
        indices,
        crops,
        threshold,
        alpha,
        seed,
    )
    sizes = getattr(data.train_set, "sizes", None)  # photos at their own sizes
    picture.shapes = sizes[indices] if sizes is not None else None
    title = f"{Path(checkpoint_path).name}, epoch {checkpoint.get('epoch', '?')}"
    return save_figure(draw_crop_picture(picture, title), out)


def embed_checkpoint(
    path: str | Path,
    folder: str | None = None,
    split: str | None = None,
    out: str | None = None,
    root: str | None = None,
    device: str = "cpu",
    batch_size: int = 256,
    workers: int = 0,
) -> Embedded:
    """Embeddings of every image of ``folder`` (any image folder, flat or with class
    sub-folders; each image's shorter side resized as the run's evaluation squares, then
    centre-cropped) or of the run's dataset ``split``, into ``out`` (default
    ``<run dir>/embeddings/<folder or split name>``); see :mod:`contrastlab.eval.embed`."""
    if (folder is None) == (split is None):
        raise DatasetError("embed needs exactly one of --folder DIR and --split NAME")
    run = Evaluation.open(path, root, device)
    if folder is not None:
        files, _, _ = list_image_folder(folder)
        size = run.data.working_size or round(run.model.augment.size * 256 / 224)
        dataset: Dataset = LazyImageFolder(files, None, size)
        names = [str(file.relative_to(folder)) for file in files]
        source = {"folder": str(Path(folder).resolve()), "resized_to": size}
    else:
        dataset = run.data.split_dataset(split)
        names = run.data.split_file_names(split) or [
            f"{run.data.dataset}/{split}/{i}" for i in range(len(dataset))
        ]
        source = {"dataset": run.data.dataset, "root": str(run.data.data_root()), "split": split}
    name = Path(folder).resolve().name if folder is not None else split
    target = Path(out) if out is not None else run.cache.directory.parent / "embeddings" / name
    source = {"checkpoint": str(Path(path).resolve()), **source}
    return embed_dataset(run.model, dataset, names, target, run.device, source, batch_size, workers)
