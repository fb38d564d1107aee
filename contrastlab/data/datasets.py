"""Torch datasets over images: held in memory (batched indexing) or decoded lazily."""

from __future__ import annotations

from dataclasses import dataclass, replace
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
        self.classes = images.classes  # the labels' names, when the dataset ships them

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


def images_at(dataset: Dataset, indices: torch.Tensor, size: int = 256) -> torch.Tensor:
    """The uint8 images ``(n, 3, H, W)`` at dataset ``indices``, un-augmented; photos of a
    native-resolution folder are resized whole to ``size x size`` (aspect not kept, as the
    localisation pass sees them)."""
    if isinstance(dataset, InMemoryImages):
        return dataset.images[indices.to(dataset.images.device)].cpu()
    if isinstance(dataset, FolderViews):
        from torchvision.transforms.v2.functional import resize

        from contrastlab.data.decode import decode_rgb

        return torch.stack(
            [
                resize(
                    torch.from_numpy(decode_rgb(dataset.files[int(i)])).permute(2, 0, 1),
                    [size, size],
                    antialias=True,
                )
                for i in indices
            ]
        )
    return torch.stack([dataset[int(i)][0] for i in indices])


# ------------------------------------------------------------------ native-resolution views

ViewRequest = tuple[int, torch.Tensor, int]
"""``(dataset index, boxes (V, 4) int (top, left, height, width) in the image's own pixels,
output size)``: what the training loader asks a worker for."""


@dataclass
class PhotoBatch:
    """Photos decoded at their own sizes, packed end to end in one uint8 tensor: no padding is
    copied on the CPU or sent to the device; :meth:`padded` lays them out there.

    ``pixels`` ``(N,)`` holds each photo's ``(h, w, 3)`` bytes in turn; ``shapes`` their
    ``(h, w)``; ``boxes`` ``(V, B, 4)`` float ``(top, left, height, width)`` every view's crop
    in the decoded photo's pixels. With decoding on the device, ``encoded`` holds a photo's
    JPEG file (``None`` where a worker decoded it into ``pixels``): plain bytes, which stay on
    the host, as torchvision's ``decode_jpeg`` wants them even when it decodes on a GPU;
    ``orientations`` the EXIF orientation each of those is turned upright by there.
    """

    pixels: torch.Tensor
    shapes: list[tuple[int, int]]
    indices: torch.Tensor
    labels: torch.Tensor
    boxes: torch.Tensor
    encoded: list[bytes | None] | None = None
    orientations: list[int] | None = None

    def __len__(self) -> int:
        return len(self.shapes)

    def pin_memory(self) -> PhotoBatch:
        """Page-locked copies (the data loader's ``pin_memory``), for asynchronous transfer."""
        return replace(
            self,
            pixels=self.pixels.pin_memory(),
            indices=self.indices.pin_memory(),
            labels=self.labels.pin_memory(),
            boxes=self.boxes.pin_memory(),
        )

    def padded(self) -> torch.Tensor:
        """``(B, 3, H, W)`` uint8 (channels-last in memory) on the pixels' device, each photo at
        the top left. One row and column past each photo repeat its edge, so a bilinear crop
        inside a photo reads what it would read from the photo alone (its edge clamped); the
        padding beyond is left uninitialised, since no such crop reads it."""
        height = max(h for h, _ in self.shapes)
        width = max(w for _, w in self.shapes)
        batch = torch.empty(
            len(self), height, width, 3, dtype=torch.uint8, device=self.pixels.device
        )
        on_device = iter(self._decode_on_device())
        start = 0
        for row, (h, w) in enumerate(self.shapes):
            if self.encoded is not None and self.encoded[row] is not None:
                photo = next(on_device).permute(1, 2, 0)
            else:
                photo = self.pixels[start : start + h * w * 3].view(h, w, 3)
                start += h * w * 3
            batch[row, :h, :w] = photo
            if h < height:
                batch[row, h, :w] = photo[h - 1]
            if w < width:
                batch[row, : min(h + 1, height), w] = batch[row, : min(h + 1, height), w - 1]
        return batch.permute(0, 3, 1, 2)

    def _decode_on_device(self) -> list[torch.Tensor]:
        """The encoded photos decoded in one batched call of torchvision's ``decode_jpeg`` on
        the pixels' device (nvJPEG on a GPU): ``(3, h, w)`` uint8 each."""
        files = [b for b in self.encoded or [] if b is not None]
        if not files:
            return []
        from torchvision.io import ImageReadMode, decode_jpeg

        from contrastlab.data.decode import upright

        data = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in files]
        device = self.pixels.device
        photos = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
        rows = [row for row, b in enumerate(self.encoded or []) if b is not None]
        turned = []
        for photo, row in zip(photos, rows, strict=True):
            orientation = self.orientations[row] if self.orientations is not None else 1
            photo = upright(photo.permute(1, 2, 0), orientation).permute(2, 0, 1)
            if tuple(photo.shape[1:]) != self.shapes[row]:
                raise RuntimeError(
                    f"decode_jpeg made {tuple(photo.shape)}, expected {self.shapes[row]}"
                )
            turned.append(photo)
        return turned


class FolderViews(Dataset):
    """The files of a folder index, each decoded at its own resolution for the views asked of
    it: at the smallest DCT scale (1, 1/2, 1/4, 1/8) at which every requested box still holds
    its output size in pixels (:func:`contrastlab.data.decode.dct_denominator`), the boxes
    mapped into the decoded pixels. A batch of requests is decoded straight into one packed
    :class:`PhotoBatch`; nothing else touches the pixels here: cropping, resizing and every
    augmentation happen on the device. ``sizes`` are upright (as the folder index keeps them)
    and ``orientations`` each file's EXIF orientation (all 1, as stored, when not given)."""

    def __init__(
        self,
        files: list[Path],
        labels: list[int] | None,
        sizes: torch.Tensor,
        decode_on_device: bool = False,
        orientations: list[int] | None = None,
    ) -> None:
        if sizes.shape != (len(files), 2):
            raise ValueError(f"need one (height, width) per file, got {tuple(sizes.shape)}")
        if orientations is not None and len(orientations) != len(files):
            raise ValueError(f"need one orientation per file, got {len(orientations)}")
        self.files, self.sizes = files, sizes.to(torch.int64)
        self.orientations = orientations if orientations is not None else [1] * len(files)
        self.labels = labels if labels is not None else [-1] * len(files)
        self.decode_on_device = decode_on_device

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, request: ViewRequest) -> PhotoBatch:
        return self.__getitems__([request])

    def __getitems__(self, requests: list[ViewRequest]) -> PhotoBatch:
        from contrastlab.data.decode import decode_rgb, plan_decode

        plans = []
        for index, boxes, out_size in requests:
            size = (int(self.sizes[index, 0]), int(self.sizes[index, 1]))
            orientation = self.orientations[index]
            min_side = float(boxes[:, 2:].min())
            plan = plan_decode(self.files[index], size, min_side, out_size, orientation)
            if self.decode_on_device and plan.turbo:  # decode_jpeg has no DCT scaling
                plan = plan._replace(denominator=1, shape=size, offset=(0.0, 0.0))
            plans.append(plan)
        on_device = [self.decode_on_device and plan.turbo for plan in plans]
        local = [(i, p) for (i, _, _), p, d in zip(requests, plans, on_device, strict=True)
                 if not d]  # fmt: skip
        pixels = torch.empty(sum(p.shape[0] * p.shape[1] * 3 for _, p in local), dtype=torch.uint8)
        start = 0
        for index, plan in local:
            count = plan.shape[0] * plan.shape[1] * 3
            size = (int(self.sizes[index, 0]), int(self.sizes[index, 1]))
            region = pixels[start : start + count].numpy()
            orientation = self.orientations[index]
            decode_rgb(self.files[index], plan.denominator, plan.data, region, size, orientation)
            start += count
        indices = [index for index, _, _ in requests]
        return PhotoBatch(
            pixels,
            [p.shape for p in plans],
            torch.tensor(indices),
            torch.tensor([self.labels[i] for i in indices]),
            _decoded_boxes(torch.stack([b for _, b, _ in requests], dim=1), plans),
            [p.data if d else None for p, d in zip(plans, on_device, strict=True)]
            if self.decode_on_device
            else None,
            [self.orientations[i] for i in indices] if self.decode_on_device else None,
        )


def _decoded_boxes(boxes: torch.Tensor, plans: list) -> torch.Tensor:
    """``(V, B, 4)`` boxes in the upright photos' pixels mapped into the decoded pixels.
    libjpeg's scaled blocks keep the pixel grid, ``x -> x / d`` exactly, with a partial last
    block at the stored far edge; a flipped axis starts with it (``DecodePlan.offset``)."""
    scales = torch.tensor([1 / p.denominator for p in plans], dtype=torch.float64)
    offsets = torch.tensor([p.offset for p in plans], dtype=torch.float64)  # (B, 2) rows, cols
    boxes = boxes.to(torch.float64) * scales.view(1, -1, 1)
    boxes[..., :2] += offsets.view(1, -1, 2)
    return boxes.to(torch.float32)


def pass_photos(batch: PhotoBatch) -> PhotoBatch:
    """Collate function for :class:`FolderViews`, whose batched fetch is the batch."""
    return batch
