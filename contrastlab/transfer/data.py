"""Detection images and targets as the papers' detectors train on them.

Each item is the photo decoded upright with libjpeg-turbo (EXIF orientation applied, as
detectron2's ``read_image``), as float RGB in [0, 1] ``(3, H, W)``, and its target: ``boxes``
(continuous 0-based ``(x0, y0, x1, y1)``), ``labels`` (class + 1: torchvision's detectors keep 0
for the background), ``difficult``, ``index`` (the item's). In training each image is flipped
left-right with probability ``flip_prob`` (detectron2's ``RandomFlip``), by a draw that is a
function of ``(seed, epoch, index)`` alone, so a resumed run and any number of workers flip the
same images. Resizing to the protocol's sizes happens in the detector's own transform.

:class:`CocoDetectionImages` serves COCO images for Mask R-CNN: in training, crowd regions are
left out of the targets (detectron2's ``DatasetMapper``) and each object's mask rides along as
packed polygons (:func:`contrastlab.transfer.masks.pack_polygons`) or, once any object of the
image is an RLE, every object as a full-image bit mask (detectron2's ``BitMasks``), flipped with
the photo."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from contrastlab.data.decode import decode_rgb
from contrastlab.transfer.coco import CocoImage, CocoObject
from contrastlab.transfer.masks import flip_polygons, pack_polygons, polygons_to_mask, rle_to_mask
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
        flip = self.flipped(index)
        target = self.target(image, flip)
        target["index"] = torch.tensor(index)
        return (picture.flip(-1) if flip else picture), target

    def target(self, image: VocImage, flip: bool) -> dict[str, torch.Tensor]:
        """The image's ``boxes`` (mirrored with ``flip``), ``labels`` + 1 and ``difficult``."""
        return {
            "boxes": flip_boxes(image.boxes(), image.width) if flip else image.boxes(),
            "labels": image.labels() + 1,
            "difficult": image.difficult(),
        }


def flip_boxes(boxes: torch.Tensor, width: int) -> torch.Tensor:
    """``(x0, y0, x1, y1)`` mirrored left-right in an image ``width`` wide."""
    return torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], 1)


class CocoDetectionImages(DetectionImages):
    """COCO images and Mask R-CNN targets (module docstring); with ``masks=False`` boxes and
    labels only (the test's items, which need no masks)."""

    def __init__(
        self,
        images: Sequence[CocoImage],
        flip_prob: float = 0.5,
        seed: int = 0,
        masks: bool = True,
    ) -> None:
        super().__init__(images, flip_prob, seed)
        self.masks = masks

    def target(self, image: CocoImage, flip: bool) -> dict[str, torch.Tensor]:
        objects = [o for o in image.objects if not o.crowd]
        boxes = torch.tensor(
            [(x, y, x + w, y + h) for x, y, w, h in (o.box for o in objects)], dtype=torch.float32
        ).reshape(-1, 4)
        target = {
            "boxes": flip_boxes(boxes, image.width) if flip else boxes,
            "labels": torch.tensor([o.label + 1 for o in objects], dtype=torch.int64),
        }
        if not self.masks:
            return target
        if any(isinstance(o.segmentation, dict) for o in objects):
            masks = torch.from_numpy(np.stack([object_mask(o, image) for o in objects]))
            target["masks"] = masks.flip(-1) if flip else masks
            return target
        packed = pack_polygons([o.segmentation or () for o in objects])
        if flip:
            packed["polygons"] = flip_polygons(packed["polygons"], image.width)
        return target | packed


def object_mask(obj: CocoObject, image: CocoImage) -> np.ndarray:
    """An object's full-image ``uint8`` mask from its RLE or polygons (empty without either)."""
    if isinstance(obj.segmentation, dict):
        return rle_to_mask(obj.segmentation).astype(np.uint8)
    return polygons_to_mask(obj.segmentation or (), image.height, image.width).astype(np.uint8)


def detection_collate(
    batch: Sequence[tuple[torch.Tensor, dict[str, torch.Tensor]]],
) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Images of different sizes stay a list (the detector batches them itself)."""
    return [image for image, _ in batch], [target for _, target in batch]
