"""PASCAL VOC detection annotations, read and checked before anything trains.

Layout (the official devkit's): ``<root>/VOC2007/{Annotations,ImageSets/Main,JPEGImages}`` and
the same for ``VOC2012``. The papers' protocol trains on VOC07+12 ``trainval`` and tests on
VOC07 ``test`` (:data:`TRAIN_SPLITS`, :data:`TEST_SPLITS`).

Coordinates are kept as the XML writes them: 1-based pixel indices, inclusive, so a box
``(1, 1, W, H)`` covers a whole image. :meth:`VocImage.boxes` gives the detector's continuous
0-based boxes ``(xmin - 1, ymin - 1, xmax, ymax)`` (as detectron2's ``load_voc_instances``);
the evaluation compares in the XML's coordinates (:mod:`contrastlab.transfer.metrics`).
Difficult objects are read with their flag: training keeps them (as detectron2 does), the
evaluation ignores them.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip
"""The 20 classes in the devkit's order (label ``i`` is ``VOC_CLASSES[i]``)."""

TRAIN_SPLITS = (("2007", "trainval"), ("2012", "trainval"))
TEST_SPLITS = (("2007", "test"),)
COORDINATES = ("xmin", "ymin", "xmax", "ymax")


class VocError(ValueError):
    """A malformed VOC dataset: the message names the file, the object and what is wrong."""


@dataclass(frozen=True)
class VocObject:
    """One annotated object: its class index, its box as the XML writes it (1-based,
    inclusive) and its difficult flag."""

    label: int
    box: tuple[float, float, float, float]
    difficult: bool


@dataclass(frozen=True)
class VocImage:
    """One image: ``year`` and ``image_id`` name it (ids repeat across years), ``path`` is its
    JPEG, ``width`` and ``height`` the annotation's size."""

    year: str
    image_id: str
    path: Path
    width: int
    height: int
    objects: tuple[VocObject, ...]

    def boxes(self) -> torch.Tensor:
        """``(n, 4)`` continuous 0-based ``(x0, y0, x1, y1)``: ``(xmin - 1, ymin - 1, xmax,
        ymax)``, difficult objects included."""
        rows = [(b[0] - 1, b[1] - 1, b[2], b[3]) for b in (o.box for o in self.objects)]
        return torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)

    def labels(self) -> torch.Tensor:
        return torch.tensor([o.label for o in self.objects], dtype=torch.int64)

    def difficult(self) -> torch.Tensor:
        return torch.tensor([o.difficult for o in self.objects], dtype=torch.bool)


def read_voc(
    root: str | Path,
    splits: Iterable[tuple[str, str]] = TRAIN_SPLITS,
    classes: Sequence[str] = VOC_CLASSES,
) -> list[VocImage]:
    """Every image of ``splits`` (``(year, split)`` pairs, e.g. :data:`TRAIN_SPLITS`) under the
    devkit folder ``root``, in the split files' order. Raises :class:`VocError` on the first
    missing file or malformed annotation, naming it."""
    root = Path(root)
    if not root.is_dir():
        raise VocError(f"{root}: no such folder (expected a VOCdevkit with VOC2007/, VOC2012/)")
    images: list[VocImage] = []
    for year, split in splits:
        folder = root / f"VOC{year}"
        for image_id in read_split(folder / "ImageSets" / "Main" / f"{split}.txt"):
            images.append(read_image(folder, year, image_id, classes))
    return images


def read_split(path: Path) -> list[str]:
    """The image ids of a split file, one per line (blank lines skipped)."""
    if not path.is_file():
        raise VocError(f"{path}: split file not found")
    ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise VocError(f"{path}: the split lists no images")
    repeated = sorted(i for i, n in Counter(ids).items() if n > 1)
    if repeated:
        raise VocError(f"{path}: image ids listed twice: {', '.join(repeated[:5])}")
    return ids


def read_image(folder: Path, year: str, image_id: str, classes: Sequence[str]) -> VocImage:
    """One image's annotation file, checked: size, and every object's class, box and flag."""
    path = folder / "Annotations" / f"{image_id}.xml"
    if not path.is_file():
        raise VocError(f"{path}: annotation file not found (listed in the split)")
    jpeg = folder / "JPEGImages" / f"{image_id}.jpg"
    if not jpeg.is_file():
        raise VocError(f"{jpeg}: image file not found (annotated in {path.name})")
    try:
        tree = ET.parse(path)
    except ET.ParseError as error:
        raise VocError(f"{path}: not valid XML ({error})") from None
    width = _size(tree, path, "width")
    height = _size(tree, path, "height")
    objects = tuple(
        _object(element, path, index, classes, width, height)
        for index, element in enumerate(tree.findall("object"))
    )
    return VocImage(year, image_id, jpeg, width, height, objects)


def _size(tree: ET.ElementTree, path: Path, name: str) -> int:
    text = tree.findtext(f"size/{name}")
    if text is None:
        raise VocError(f"{path}: <size> has no <{name}>")
    try:
        value = int(text.strip())
    except ValueError:
        raise VocError(f"{path}: <size><{name}> is {text!r}, not a whole number") from None
    if value < 1:
        raise VocError(f"{path}: <size><{name}> is {value}; an image has at least one pixel")
    return value


def _object(
    element: ET.Element,
    path: Path,
    index: int,
    classes: Sequence[str],
    width: int,
    height: int,
) -> VocObject:
    name = (element.findtext("name") or "").strip()
    where = f"{path}: object {index} ({name or 'no name'})"
    if name not in classes:
        known = "one of the 20 VOC classes" if classes == VOC_CLASSES else f"one of {classes}"
        raise VocError(f"{where}: class {name!r} is not {known}")
    box_element = element.find("bndbox")
    if box_element is None:
        raise VocError(f"{where}: no <bndbox>")
    box = tuple(_coordinate(box_element, name_, where) for name_ in COORDINATES)
    xmin, ymin, xmax, ymax = box
    if not (0 <= xmin <= xmax <= width and 0 <= ymin <= ymax <= height):
        raise VocError(
            f"{where}: box (xmin {xmin:g}, ymin {ymin:g}, xmax {xmax:g}, ymax {ymax:g}) is "
            f"not inside the {width}x{height} image with min <= max"
        )
    return VocObject(classes.index(name), box, _difficult(element, where))


def _coordinate(box: ET.Element, name: str, where: str) -> float:
    text = box.findtext(name)
    if text is None:
        raise VocError(f"{where}: <bndbox> has no <{name}>")
    try:
        value = float(text.strip())
    except ValueError:
        raise VocError(f"{where}: <{name}> is {text!r}, not a number") from None
    if not math.isfinite(value):
        raise VocError(f"{where}: <{name}> is {text!r}, not a finite number")
    return value


def _difficult(element: ET.Element, where: str) -> bool:
    """The ``difficult`` flag; absent counts as 0 (some VOC2012 objects have none)."""
    text = element.findtext("difficult")
    if text is None:
        return False
    if text.strip() not in ("0", "1"):
        raise VocError(f"{where}: <difficult> is {text!r}; expected 0 or 1")
    return text.strip() == "1"
