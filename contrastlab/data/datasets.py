"""Torch datasets over images: held in memory (batched indexing) or decoded lazily."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset, default_collate

from contrastlab.data.readers import ImageSet, decode_image

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""``(images uint8 (B, 3, H, W), dataset indices (B,), labels (B,) with -1 when unlabelled)``."""


class InMemoryImages(Dataset):
    """An :class:`ImageSet` served a whole batch at a time by one tensor index (no per-image
    Python work, no collation); the tensors may live on an accelerator."""

    def __init__(self, images: ImageSet) -> None:
        self.images = images.images
        labels = images.labels
        self.labels = labels if labels is not None else torch.full((len(images),), -1)

    def to(self, device: torch.device | str) -> InMemoryImages:
        self.images, self.labels = self.images.to(device), self.labels.to(device)
        return self

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Batch:
        return self.__getitems__([index])

    def __getitems__(self, indices: list[int]) -> Batch:
        rows = torch.as_tensor(indices, device=self.images.device)
        return self.images[rows], rows, self.labels[rows]


def pass_batch(batch: Batch) -> Batch:
    """Collate function for :class:`InMemoryImages`, whose fetch already returns a batch."""
    return batch


class LazyImageFolder(Dataset):
    """Image files decoded one by one (in data-loader workers) to a fixed square working size;
    batches are collated with ``default_collate`` and views are sampled later on the device."""

    def __init__(self, files: list[Path], labels: list[int] | None, size: int) -> None:
        self.files, self.size = files, size
        self.labels = labels if labels is not None else [-1] * len(files)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        return decode_image(self.files[index], self.size), index, self.labels[index]


collate_lazy = default_collate


def images_at(dataset: InMemoryImages | LazyImageFolder, indices: torch.Tensor) -> torch.Tensor:
    """The uint8 images ``(n, 3, H, W)`` at dataset ``indices``, un-augmented."""
    if isinstance(dataset, InMemoryImages):
        return dataset.images[indices.to(dataset.images.device)].cpu()
    return torch.stack([dataset[int(i)][0] for i in indices])
