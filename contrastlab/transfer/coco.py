"""COCO instance annotations, read and checked before anything trains.

Layout (the official release's): an instances JSON (``annotations/instances_train2017.json``)
and its image folder (``train2017/``). Categories become contiguous labels in the order of
their ids (COCO's 80 ids run from 1 to 90 with gaps), as detectron2 maps them. Boxes are kept as
the JSON writes them, ``(x, y, width, height)`` in pixels; :meth:`CocoImage.boxes` gives
continuous ``(x0, y0, x1, y1)``. Segmentations stay as written: polygons (lists of ``x, y``
pairs) or run-length encodings (``{"size": [h, w], "counts": ...}``); crowd regions keep
their flag.

What detectron2's ``load_coco_json`` tolerates is tolerated here the same way, because the
official files contain it: a polygon with an odd number of coordinates or fewer than three
points is dropped, and an object left without any polygon is dropped (counted in
:attr:`CocoDataset.dropped_objects`). Everything else that is malformed is an error naming the
file, the annotation or image id and what is wrong.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch


class CocoError(ValueError):
    """A malformed COCO file: the message names the file, the entry and what is wrong."""


@dataclass(frozen=True, eq=False, slots=True)
class CocoObject:
    """One annotation: its id, contiguous label, ``(x, y, w, h)`` box, crowd flag and its
    segmentation (polygons as float64 arrays of ``x, y`` coordinates, an RLE dict, or
    ``None``). Arrays and slots, because COCO train2017 has some 860,000 objects, in every
    training process: as arrays a polygon keeps 11.5 bytes per coordinate, as tuples of
    Python floats 34 (``bench/coco_memory.py``)."""

    annotation_id: int
    label: int
    box: tuple[float, float, float, float]
    crowd: bool
    segmentation: tuple[np.ndarray, ...] | dict | None


@dataclass(frozen=True, slots=True)
class CocoImage:
    image_id: int
    path: Path
    width: int
    height: int
    objects: tuple[CocoObject, ...]

    def boxes(self) -> torch.Tensor:
        """``(n, 4)`` continuous ``(x0, y0, x1, y1) = (x, y, x + w, y + h)``."""
        rows = [(x, y, x + w, y + h) for x, y, w, h in (o.box for o in self.objects)]
        return torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)

    def labels(self) -> torch.Tensor:
        return torch.tensor([o.label for o in self.objects], dtype=torch.int64)

    def crowd(self) -> torch.Tensor:
        return torch.tensor([o.crowd for o in self.objects], dtype=torch.bool)


@dataclass(frozen=True)
class CocoDataset:
    """The images in id order, the category names by label, the COCO id of each label, and
    the objects dropped for having no valid polygon."""

    images: tuple[CocoImage, ...]
    classes: tuple[str, ...]
    category_ids: tuple[int, ...]
    dropped_objects: int


def read_coco(annotation_file: str | Path, image_root: str | Path) -> CocoDataset:
    """Every image of ``annotation_file`` (a COCO instances JSON) with its objects, the image
    files found under ``image_root``. Raises :class:`CocoError` naming what is wrong."""
    path, root = Path(annotation_file), Path(image_root)
    if not path.is_file():
        raise CocoError(f"{path}: annotation file not found")
    if not root.is_dir():
        raise CocoError(f"{root}: image folder not found (the images of {path.name})")
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise CocoError(f"{path}: not valid JSON ({error})") from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key) if isinstance(data, dict) else None, list):
            raise CocoError(f'{path}: no "{key}" list (not a COCO instances file?)')
    category_ids, classes = _categories(path, data["categories"])
    labels = {cid: label for label, cid in enumerate(category_ids)}
    images = _images(path, root, data["images"])
    objects: dict[int, list[CocoObject]] = {image_id: [] for image_id in images}
    _unique(path, [a.get("id") for a in data["annotations"]], "annotation")
    dropped = 0
    for entry in data["annotations"]:
        found = _annotation(path, entry, images, labels)
        if found is None:
            dropped += 1
        else:
            objects[entry["image_id"]].append(found)
    return CocoDataset(
        tuple(
            CocoImage(i, file, w, h, tuple(objects[i]))
            for i, (file, w, h) in sorted(images.items())
        ),
        classes,
        category_ids,
        dropped,
    )


def _unique(path: Path, ids: list[Any], kind: str) -> None:
    for value in ids:
        if not isinstance(value, int) or isinstance(value, bool):
            raise CocoError(f"{path}: {kind} id {value!r} is not an integer")
    repeated = sorted(i for i, n in Counter(ids).items() if n > 1)
    if repeated:
        raise CocoError(f"{path}: {kind} ids listed twice: {', '.join(map(str, repeated[:5]))}")


def _categories(path: Path, entries: list[dict]) -> tuple[tuple[int, ...], tuple[str, ...]]:
    _unique(path, [c.get("id") for c in entries], "category")
    if not entries:
        raise CocoError(f"{path}: no categories")
    ordered = sorted(entries, key=lambda c: c["id"])
    for entry in ordered:
        if not isinstance(entry.get("name"), str) or not entry["name"]:
            raise CocoError(f"{path}: category {entry['id']} has no name")
    return tuple(c["id"] for c in ordered), tuple(c["name"] for c in ordered)


def _images(path: Path, root: Path, entries: list[dict]) -> dict[int, tuple[Path, int, int]]:
    _unique(path, [i.get("id") for i in entries], "image")
    images = {}
    for entry in entries:
        where = f"{path}: image {entry['id']}"
        name = entry.get("file_name")
        if not isinstance(name, str) or not name:
            raise CocoError(f"{where}: no file_name")
        size = []
        for key in ("width", "height"):
            value = entry.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise CocoError(f"{where} ({name}): {key} is {value!r}, not a whole number >= 1")
            size.append(value)
        file = root / name
        if not file.is_file():
            raise CocoError(f"{file}: image file not found (image {entry['id']} of {path.name})")
        images[entry["id"]] = (file, *size)
    return images


def _annotation(
    path: Path, entry: dict, images: dict[int, tuple[Path, int, int]], labels: dict[int, int]
) -> CocoObject | None:
    where = f"{path}: annotation {entry['id']}"
    image_id = entry.get("image_id")
    if image_id not in images:
        raise CocoError(f"{where}: image_id {image_id!r} is not an image of the file")
    where += f" (image {image_id})"
    if entry.get("category_id") not in labels:
        raise CocoError(f"{where}: category_id {entry.get('category_id')!r} is not a category")
    if entry.get("ignore", 0):
        raise CocoError(f'{where}: "ignore" is set; COCO files mark such regions with iscrowd')
    crowd = entry.get("iscrowd", 0)
    if crowd not in (0, 1) or isinstance(crowd, bool):
        raise CocoError(f"{where}: iscrowd is {crowd!r}; expected 0 or 1")
    _, width, height = images[image_id]
    box = _box(where, entry.get("bbox"))
    segmentation = entry.get("segmentation")
    if segmentation:
        segmentation = _segmentation(where, segmentation, width, height)
        if segmentation is None:
            return None
    else:
        segmentation = None
    return CocoObject(entry["id"], labels[entry["category_id"]], box, bool(crowd), segmentation)


def _box(where: str, box: Any) -> tuple[float, float, float, float]:
    if not isinstance(box, list) or len(box) != 4:
        raise CocoError(f"{where}: bbox is {box!r}; expected [x, y, width, height]")
    if not all(_finite(v) for v in box):
        raise CocoError(f"{where}: bbox {box!r} holds something that is not a finite number")
    if box[2] < 0 or box[3] < 0:
        raise CocoError(f"{where}: bbox {box!r} has a negative width or height")
    return tuple(float(v) for v in box)


def _segmentation(where: str, segmentation: Any, width: int, height: int):
    """Polygons (invalid ones dropped, ``None`` when none is left) or an RLE, checked."""
    if isinstance(segmentation, dict):
        if segmentation.get("size") != [height, width]:
            raise CocoError(
                f"{where}: RLE size {segmentation.get('size')!r} is not the image's "
                f"[{height}, {width}]"
            )
        counts = segmentation.get("counts")
        valid = isinstance(counts, str) or (
            isinstance(counts, list) and all(isinstance(c, int) and c >= 0 for c in counts)
        )
        if not valid:
            raise CocoError(f"{where}: RLE counts are neither a string nor whole numbers >= 0")
        return segmentation
    if not isinstance(segmentation, list) or not all(isinstance(p, list) for p in segmentation):
        raise CocoError(f"{where}: segmentation is neither polygons nor an RLE")
    for polygon in segmentation:
        if not all(_finite(v) for v in polygon):
            raise CocoError(f"{where}: a polygon holds something that is not a finite number")
    kept = tuple(
        np.asarray(p, dtype=np.float64) for p in segmentation if len(p) % 2 == 0 and len(p) >= 6
    )
    return kept or None


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
