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


# ------------------------------------------------------------------ native-resolution views

ViewRequest = tuple[int, torch.Tensor, int]
"""``(dataset index, boxes (V, 4) int (top, left, height, width) in the image's own pixels,
output size)``: what the training loader asks a worker for."""

NativeBatch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
"""``(images uint8 (B, 3, H, W), indices (B,), labels (B,), boxes (V, B, 4) float)``: each image
at the top-left of the padded batch, decoded at its own scale, its boxes in those pixels."""


class FolderViews(Dataset):
    """The files of a folder index, each decoded at its own resolution for the views asked of
    it: at the smallest DCT scale (1, 1/2, 1/4, 1/8) at which every requested box still holds
    its output size in pixels (:func:`contrastlab.data.decode.dct_denominator`), the boxes
    mapped into the decoded pixels. Nothing else touches the pixels here: cropping, resizing
    and every augmentation happen on the batch, on the device."""

    def __init__(self, files: list[Path], labels: list[int] | None, sizes: torch.Tensor) -> None:
        if sizes.shape != (len(files), 2):
            raise ValueError(f"need one (height, width) per file, got {tuple(sizes.shape)}")
        self.files, self.sizes = files, sizes.to(torch.int64)
        self.labels = labels if labels is not None else [-1] * len(files)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, request: ViewRequest) -> tuple[torch.Tensor, int, int, torch.Tensor]:
        from contrastlab.data.decode import dct_denominator, decode_rgb, decoded_scale

        index, boxes, out_size = request
        size = (int(self.sizes[index, 0]), int(self.sizes[index, 1]))
        denominator = dct_denominator(size, float(boxes[:, 2:].min()), out_size)
        pixels = torch.from_numpy(decode_rgb(self.files[index], denominator))
        sy, sx = decoded_scale(size, (pixels.shape[0], pixels.shape[1]), denominator)
        scaled = boxes.to(torch.float64) * torch.tensor([sy, sx, sy, sx], dtype=torch.float64)
        return pixels, index, self.labels[index], scaled.to(torch.float32)


def collate_views(samples: list[tuple[torch.Tensor, int, int, torch.Tensor]]) -> NativeBatch:
    """Pad the ``(h, w, 3)`` images into one ``(B, 3, H, W)`` uint8 batch (channels-last in
    memory, so no pixel is reordered on the CPU). One row and column past each image repeat its
    edge, so bilinear crops on the padded batch equal crops of each image alone (an image's
    edge is clamped, which the repeated pixels reproduce)."""
    height = max(s[0].shape[0] for s in samples)
    width = max(s[0].shape[1] for s in samples)
    batch = torch.zeros(len(samples), height, width, 3, dtype=torch.uint8)
    for row, (pixels, *_) in enumerate(samples):
        h, w = pixels.shape[0], pixels.shape[1]
        batch[row, :h, :w] = pixels
        if h < height:
            batch[row, h, :w] = pixels[h - 1]
        if w < width:
            batch[row, : min(h + 1, height), w] = batch[row, : min(h + 1, height), w - 1]
    indices = torch.tensor([s[1] for s in samples])
    labels = torch.tensor([s[2] for s in samples])
    boxes = torch.stack([s[3] for s in samples], dim=1)
    return batch.permute(0, 3, 1, 2), indices, labels, boxes
