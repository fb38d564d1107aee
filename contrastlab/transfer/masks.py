"""Instance masks as Mask R-CNN trains and is scored on them, as detectron2 makes them.

A COCO object's segmentation is polygons (``[x0, y0, x1, y1, ...]`` in pixels) or a run-length
encoding; both become masks through the COCO API's rasteriser (faster-coco-eval's copy of
pycocotools' C code, the same pixels: a pixel is inside when the polygon, scaled by 5 and
rounded, covers it; an axis-aligned square with whole-number corners covers exactly its pixels).

The mask head's training target for a region (detectron2's ``crop_and_resize``):

- polygons (:func:`polygon_targets`): each polygon shifted by the region's corner
  ``(x0, y0)`` and scaled by ``M / max(w, 0.1)`` and ``M / max(h, 0.1)``, then rasterised at
  ``M x M``;
- bit masks (:func:`bitmask_targets`, used for every object of an image once one of them is an
  RLE): RoIAlign of the full-image mask at scale 1 with half-pixel alignment to ``M x M``,
  then ``>= 0.5``.

At test time each detection's ``M x M`` mask goes back into the image as detectron2's
``paste_masks_in_image`` puts it (:func:`paste_masks`): every image pixel samples the mask
bilinearly at its centre mapped into the box (torchvision's paste, which resizes the mask to
the box rounded to whole pixels after padding it by one cell, differs at the borders).

Plain NumPy and PyTorch; no Lightning.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from faster_coco_eval.core import mask as coco_mask
from torchvision.ops import roi_align

Polygons = Sequence[Sequence[float]]
"""One object's polygons, each ``[x0, y0, x1, y1, ...]`` in pixels."""


def polygons_to_mask(polygons: Polygons, height: int, width: int) -> np.ndarray:
    """The union of ``polygons`` rasterised at ``height x width`` (bool)."""
    if len(polygons) == 0:
        return np.zeros((height, width), dtype=bool)
    shapes = [np.asarray(p, dtype=np.float64) for p in polygons]
    rle = coco_mask.merge(coco_mask.frPyObjects(shapes, height, width))
    return coco_mask.decode(rle).astype(bool)


def rle_to_mask(rle: dict) -> np.ndarray:
    """A COCO run-length encoding (counts as a string or a list) decoded to a bool mask."""
    height, width = rle["size"]
    if isinstance(rle["counts"], list):
        rle = coco_mask.frPyObjects(rle, height, width)
    return coco_mask.decode(rle).astype(bool)


def polygon_targets(objects: Sequence[Polygons], boxes: torch.Tensor, size: int) -> torch.Tensor:
    """``(n, size, size)`` bool: object ``i``'s polygons rasterised inside region
    ``boxes[i]`` (``(x0, y0, x1, y1)``, the polygons' coordinates)."""
    targets = np.zeros((len(objects), size, size), dtype=bool)
    for i, (polygons, box) in enumerate(zip(objects, boxes.tolist(), strict=True)):
        x0, y0, x1, y1 = box
        scale_x, scale_y = size / max(x1 - x0, 0.1), size / max(y1 - y0, 0.1)
        moved = []
        for polygon in polygons:
            points = np.asarray(polygon, dtype=np.float64).copy()
            points[0::2] = (points[0::2] - x0) * scale_x
            points[1::2] = (points[1::2] - y0) * scale_y
            moved.append(points)
        targets[i] = polygons_to_mask(moved, size, size)
    return torch.from_numpy(targets).to(boxes.device)


def bitmask_targets(masks: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """``(n, size, size)`` bool: ``masks[i]`` (full image) cut to ``boxes[i]`` by aligned
    RoIAlign and thresholded at 0.5."""
    if len(boxes) == 0:
        return torch.zeros(0, size, size, dtype=torch.bool, device=boxes.device)
    rois = torch.cat([torch.arange(len(boxes), device=boxes.device)[:, None].to(boxes), boxes], 1)
    cut = roi_align(masks[:, None].float(), rois, size, 1.0, sampling_ratio=0, aligned=True)
    return cut[:, 0] >= 0.5


def pack_polygons(objects: Sequence[Polygons]) -> dict[str, torch.Tensor]:
    """Objects' polygons as three tensors a detection target can carry (and a transform can
    scale: x at even places of ``polygons``, y at odd): the coordinates of every polygon in
    order, the coordinates per polygon, the polygons per object."""
    polygons = [list(map(float, p)) for obj in objects for p in obj]
    return {
        "polygons": torch.tensor([v for p in polygons for v in p], dtype=torch.float32),
        "polygon_lengths": torch.tensor([len(p) for p in polygons], dtype=torch.int64),
        "object_polygons": torch.tensor([len(obj) for obj in objects], dtype=torch.int64),
    }


def unpack_polygons(target: dict[str, torch.Tensor]) -> list[list[np.ndarray]]:
    """:func:`pack_polygons` undone: each object's polygons as float64 arrays."""
    coordinates = target["polygons"].detach().cpu().double().numpy()
    ends = np.cumsum(target["polygon_lengths"].tolist())
    polygons = np.split(coordinates, ends[:-1]) if len(ends) else []
    counts = np.cumsum([0, *target["object_polygons"].tolist()])
    return [list(polygons[a:b]) for a, b in itertools.pairwise(counts)]


def region_targets(
    target: dict[str, torch.Tensor], objects: torch.Tensor, boxes: torch.Tensor, size: int
) -> torch.Tensor:
    """The ``size x size`` mask targets of regions ``boxes`` matched to ``target``'s objects
    ``objects``: from the full-image ``masks`` when the target has them, else its polygons."""
    if "masks" in target:
        return bitmask_targets(target["masks"][objects], boxes, size)
    polygons = unpack_polygons(target)
    return polygon_targets([polygons[i] for i in objects.tolist()], boxes, size)


def flip_polygons(coordinates: torch.Tensor, width: int) -> torch.Tensor:
    """Packed polygon coordinates mirrored left-right in an image ``width`` wide: ``x -> w - x``."""
    flipped = coordinates.clone()
    flipped[0::2] = width - coordinates[0::2]
    return flipped


def paste_masks(
    masks: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int]
) -> torch.Tensor:
    """``(N, 1, M, M)`` mask probabilities placed in an ``image_size`` image by their ``(N, 4)``
    boxes ``(x0, y0, x1, y1)``, as detectron2's ``paste_masks_in_image`` (before its ``>= 0.5``):
    image pixel ``(i, j)`` takes the mask's bilinear value, zero outside the mask, at

        u = (j + 0.5 - x0) / (x1 - x0) * M - 0.5,   v = (i + 0.5 - y0) / (y1 - y0) * M - 0.5

    (cell centres at whole ``u, v``; ``grid_sample`` with ``align_corners=False``). Each mask
    is sampled over its own box grown to whole pixels plus one (:func:`paste_region`), as
    detectron2 pastes on the CPU: beyond it a pixel's centre maps more than half a cell outside
    the mask, so its value is under 0.5, and it is left 0. One mask at a time keeps the
    sampling grid to a box's size, not ``N`` images' (detectron2's GPU path samples whole
    images in chunks of 1 GB; the result after the threshold is the same)."""
    height, width = image_size
    pasted = masks.new_zeros((len(masks), 1, height, width), dtype=torch.float32)
    for mask, box, out in zip(masks.float(), boxes.float(), pasted, strict=True):
        top, bottom, left, right = paste_region(box, height, width)
        if bottom <= top or right <= left:
            continue
        columns = torch.arange(left, right, device=box.device, dtype=torch.float32) + 0.5
        rows = torch.arange(top, bottom, device=box.device, dtype=torch.float32) + 0.5
        grid_x = (columns - box[0]) / (box[2] - box[0]) * 2 - 1  # grid_sample's [-1, 1] frame
        grid_y = (rows - box[1]) / (box[3] - box[1]) * 2 - 1
        grid = torch.stack(torch.broadcast_tensors(grid_x[None, :], grid_y[:, None]), dim=2)
        sampled = F.grid_sample(mask[None], grid[None], mode="bilinear", align_corners=False)
        out[:, top:bottom, left:right] = sampled[0]
    return pasted


def paste_region(box: torch.Tensor, height: int, width: int) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)``, ends exclusive: the pixels :func:`paste_masks` samples for
    ``box``, from ``floor(y0) - 1`` to ``ceil(y1) + 1`` and ``floor(x0) - 1`` to ``ceil(x1) + 1``,
    within the image."""
    left, top = (box[:2].floor() - 1).clamp(min=0).int().tolist()
    right = int((box[2].ceil() + 1).clamp(max=width))
    bottom = int((box[3].ceil() + 1).clamp(max=height))
    return top, bottom, left, right
