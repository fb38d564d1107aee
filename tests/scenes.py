"""A tiny PASCAL VOC devkit the detection tests write in the official layout: photo-like
backgrounds with objects pasted at seeded places, so every box is known exactly.

Two classes of the devkit's twenty: ``cat`` objects are red discs and ``dog`` objects blue
squares, 14-40 px on 96-128 px images, one to three per image; VOC2007 ``trainval`` and ``test``
and VOC2012 ``trainval``, each split file listing its images.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from photos import photo_pixels
from PIL import Image, ImageDraw

SHAPES = {"cat": ("ellipse", (220, 30, 30)), "dog": ("rectangle", (30, 60, 220))}


def scene(seed: int) -> tuple[Image.Image, list[tuple[str, tuple[int, int, int, int]]]]:
    """One image and its objects as ``(class, (xmin, ymin, xmax, ymax))`` in the XML's 1-based
    inclusive pixels."""
    rng = np.random.default_rng(seed)
    height, width = int(rng.integers(96, 129)), int(rng.integers(96, 129))
    picture = Image.fromarray(photo_pixels(height, width, seed))
    draw = ImageDraw.Draw(picture)
    objects = []
    for _ in range(int(rng.integers(1, 4))):
        name = str(rng.choice(list(SHAPES)))
        side = int(rng.integers(14, 41))
        x0, y0 = int(rng.integers(0, width - side)), int(rng.integers(0, height - side))
        x1, y1 = x0 + side - 1, y0 + side - 1  # inclusive pixels
        kind, colour = SHAPES[name]
        getattr(draw, kind)((x0, y0, x1, y1), fill=colour)
        objects.append((name, (x0 + 1, y0 + 1, x1 + 1, y1 + 1)))
    return picture, objects


def write_image(folder: Path, image_id: str, seed: int) -> None:
    picture, objects = scene(seed)
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = f"{image_id}.jpg"
    size = ET.SubElement(root, "size")
    for name, value in (("width", picture.width), ("height", picture.height), ("depth", 3)):
        ET.SubElement(size, name).text = str(value)
    for name, box in objects:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = name
        ET.SubElement(obj, "difficult").text = "0"
        bndbox = ET.SubElement(obj, "bndbox")
        for key, value in zip(("xmin", "ymin", "xmax", "ymax"), box, strict=True):
            ET.SubElement(bndbox, key).text = str(value)
    (folder / "Annotations").mkdir(parents=True, exist_ok=True)
    (folder / "JPEGImages").mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(folder / "Annotations" / f"{image_id}.xml")
    picture.save(folder / "JPEGImages" / f"{image_id}.jpg", quality=92)


def write_scene_devkit(root: Path, train07: int = 24, train12: int = 8, test: int = 16) -> Path:
    """``root/VOCdevkit`` with the three splits; returns the devkit folder."""
    devkit = root / "VOCdevkit"
    splits = {
        ("VOC2007", "trainval"): [f"{i:06d}" for i in range(train07)],
        ("VOC2007", "test"): [f"{100000 + i:06d}" for i in range(test)],
        ("VOC2012", "trainval"): [f"2008_{i:06d}" for i in range(train12)],
    }
    seed = 0
    for (year, split), ids in splits.items():
        folder = devkit / year
        for image_id in ids:
            write_image(folder, image_id, seed)
            seed += 1
        (folder / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
        (folder / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return devkit
