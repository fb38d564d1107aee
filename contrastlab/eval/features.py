"""Backbone features of a split, extracted once on the device and cached.

A cache entry is keyed by the checkpoint's content (SHA-256 of the file) and the split's
content (its images and labels, or its files' names, sizes and modification times), so it is
invalidated when either changes, and it is written atomically.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from contrastlab.data.datasets import InMemoryImages, LazyImageFolder, collate_lazy, pass_batch
from contrastlab.io import atomic_save, load_tensors
from contrastlab.methods.base import ContrastiveMethod

Features = tuple[torch.Tensor, torch.Tensor]
"""``(features (N, D) float32, labels (N,) int64)`` on the CPU."""


@torch.no_grad()
def extract_features(
    model: ContrastiveMethod,
    batches: Iterable[tuple[torch.Tensor, ...]],
    device: torch.device,
    progress: str | None = None,
) -> Features:
    """Backbone features (eval mode, un-augmented centre views) of every batch, on ``device``,
    in the precision measured fastest for the model (``ContrastiveMethod.precision_context``);
    with ``progress``, a progress bar of that title."""
    model.to(device).eval()
    features, labels = [], []
    if progress is not None:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc=progress, unit="batch", leave=False)
    for images, _, batch_labels in batches:
        images = images.to(device, non_blocking=True)
        with model.precision_context(device):
            features.append(model.features(images).float().cpu())
        labels.append(torch.as_tensor(batch_labels).cpu())
    return torch.cat(features), torch.cat(labels)


def ordered_loader(dataset: Dataset, batch_size: int = 512, workers: int = 0) -> DataLoader:
    """Batches of ``(uint8 images, indices, labels)`` in dataset order."""
    if isinstance(dataset, InMemoryImages):
        batches = [chunk.tolist() for chunk in torch.arange(len(dataset)).split(batch_size)]
        return DataLoader(dataset, batch_sampler=batches, collate_fn=pass_batch)
    return DataLoader(dataset, batch_size=batch_size, collate_fn=collate_lazy, num_workers=workers)


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def dataset_digest(dataset: Dataset) -> str:
    """SHA-256 of a split's content: in-memory images and labels, or each file's name, size and
    modification time for lazily decoded folders."""
    digest = hashlib.sha256()
    if isinstance(dataset, InMemoryImages):
        digest.update(str(tuple(dataset.images.shape)).encode())
        digest.update(dataset.images.cpu().contiguous().numpy().tobytes())
        digest.update(dataset.labels.cpu().contiguous().numpy().tobytes())
    elif isinstance(dataset, LazyImageFolder):
        digest.update(str(dataset.size).encode())
        for file, label in zip(dataset.files, dataset.labels, strict=True):
            stat = file.stat()
            digest.update(f"{file}|{stat.st_size}|{stat.st_mtime_ns}|{label}\n".encode())
    else:
        raise TypeError(f"cannot fingerprint a {type(dataset).__name__}")
    return digest.hexdigest()


def default_cache_dir(checkpoint: str | Path) -> Path:
    """``<run dir>/features`` for ``<run dir>/checkpoints/x.ckpt``, else beside the file."""
    checkpoint = Path(checkpoint)
    parent = checkpoint.parent
    return (parent.parent if parent.name == "checkpoints" else parent) / "features"


class FeatureCache:
    """Features per (checkpoint content, split content, view recipe) in ``directory``."""

    def __init__(self, checkpoint: str | Path, directory: str | Path | None = None) -> None:
        self.checkpoint = Path(checkpoint)
        self.directory = Path(directory) if directory is not None else default_cache_dir(checkpoint)
        self._checkpoint_digest: str | None = None

    def path(self, dataset: Dataset, recipe: str = "") -> Path:
        if self._checkpoint_digest is None:
            self._checkpoint_digest = file_digest(self.checkpoint)
        split = hashlib.sha256((dataset_digest(dataset) + recipe).encode()).hexdigest()
        return self.directory / f"{self._checkpoint_digest[:16]}-{split[:16]}.pt"

    def features(
        self,
        model: ContrastiveMethod,
        dataset: Dataset,
        device: torch.device,
        batch_size: int = 512,
    ) -> Features:
        """Cached features of ``dataset``, extracted with ``model`` on a miss."""
        path = self.path(dataset, repr(model.augment))
        if path.is_file():
            saved = load_tensors(path)
            return saved["features"], saved["labels"]
        title = f"features of {len(dataset):,} images"
        loader = ordered_loader(dataset, batch_size)
        features, labels = extract_features(model, loader, device, progress=title)
        atomic_save({"features": features, "labels": labels}, path)
        return features, labels
