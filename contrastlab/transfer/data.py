"""Detection images and targets as the papers' detectors train on them.

Each item is the photo decoded upright with libjpeg-turbo (EXIF orientation applied, as
detectron2's ``read_image``), as float RGB in [0, 1] ``(3, H, W)``, and its target: ``boxes``
(continuous 0-based ``(x0, y0, x1, y1)``), ``labels`` (class + 1: torchvision's detectors keep 0
for the background), ``difficult``, ``index`` (the item's). In training each image is flipped
left-right with probability ``flip_prob`` (detectron2's ``RandomFlip``), by a draw that is a
function of ``(seed, epoch, index)`` alone, so a resumed run and any number of workers flip the
same images. Resizing to the protocol's sizes happens in the detector's own transform."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from contrastlab.data.decode import decode_rgb
from contrastlab.transfer.voc import VocImage


class DetectionImages(Dataset):
    """VOC images and their targets (module docstring); ``flip_prob`` 0 for evaluation."""

    def __init__(self, images: Sequence[VocImage], flip_prob: float = 0.5, seed: int = 0) -> None:
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"flip_prob must lie in [0, 1], got {flip_prob}")
        self.images, self.flip_prob, self.seed, self.epoch = list(images), flip_prob, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.images)

    def flipped(self, index: int) -> bool:
        """Whether item ``index`` is flipped this epoch: ``U(0, 1) < flip_prob`` from a
        generator seeded by ``(seed, epoch, index)``."""
        key = (self.seed * 1_000_003 + self.epoch) * 10_000_019 + index
        draw = torch.rand(1, generator=torch.Generator().manual_seed(key)).item()
        return draw < self.flip_prob

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image = self.images[index]
        pixels = decode_rgb(image.path, size=(image.height, image.width))
        picture = torch.from_numpy(pixels).permute(2, 0, 1).float().div_(255)
        boxes = image.boxes()
        if self.flipped(index):
            picture = picture.flip(-1)
            boxes = torch.stack(
                [image.width - boxes[:, 2], boxes[:, 1], image.width - boxes[:, 0], boxes[:, 3]],
                dim=1,
            )
        target = {
            "boxes": boxes,
            "labels": image.labels() + 1,
            "difficult": image.difficult(),
            "index": torch.tensor(index),
        }
        return picture, target


def detection_collate(
    batch: Sequence[tuple[torch.Tensor, dict[str, torch.Tensor]]],
) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Images of different sizes stay a list (the detector batches them itself)."""
    return [image for image, _ in batch], [target for _, target in batch]
