"""A tiny PASCAL VOC devkit the detection tests write in the official layout: photo-like
backgrounds with objects pasted at seeded places, so every box is known exactly.

Two classes of the devkit's twenty: ``cat`` objects are red discs and ``dog`` objects blue
squares, 14-40 px on 96-128 px images, one to three per image; VOC2007 ``trainval`` and ``test``
and VOC2012 ``trainval``, each split file listing its images.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from photos import photo_pixels
from PIL import Image, ImageDraw

SHAPES = {"cat": ("ellipse", (220, 30, 30)), "dog": ("rectangle", (30, 60, 220))}
SIDES = (14, 41)
"""The objects' sides in pixels, ``range(14, 41)``."""


def scene(
    seed: int, sides: tuple[int, int] = SIDES
) -> tuple[Image.Image, list[tuple[str, tuple[int, int, int, int]]]]:
    """One image and its objects as ``(class, (xmin, ymin, xmax, ymax))`` in the XML's 1-based
    inclusive pixels."""
    picture, placed = placements(seed, sides)
    draw = ImageDraw.Draw(picture)
    objects = []
    for name, side, x0, y0 in placed:
        x1, y1 = x0 + side - 1, y0 + side - 1  # inclusive pixels
        kind, colour = SHAPES[name]
        getattr(draw, kind)((x0, y0, x1, y1), fill=colour)
        objects.append((name, (x0 + 1, y0 + 1, x1 + 1, y1 + 1)))
    return picture, objects


def placements(
    seed: int, sides: tuple[int, int] = SIDES
) -> tuple[Image.Image, list[tuple[str, int, int, int]]]:
    """A 96-128 px photo-like background and one to three objects on it as ``(class, side,
    x0, y0)``, sides drawn from ``range(*sides)``, all drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    height, width = int(rng.integers(96, 129)), int(rng.integers(96, 129))
    picture = Image.fromarray(photo_pixels(height, width, seed))
    placed = []
    for _ in range(int(rng.integers(1, 4))):
        name = str(rng.choice(list(SHAPES)))
        side = int(rng.integers(*sides))
        x0, y0 = int(rng.integers(0, width - side)), int(rng.integers(0, height - side))
        placed.append((name, side, x0, y0))
    return picture, placed


def write_image(folder: Path, image_id: str, seed: int, sides: tuple[int, int] = SIDES) -> None:
    picture, objects = scene(seed, sides)
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


def write_scene_devkit(
    root: Path, train07: int = 24, train12: int = 8, test: int = 16, sides: tuple[int, int] = SIDES
) -> Path:
    """``root/VOCdevkit`` with the three splits (objects' sides drawn from ``range(*sides)``);
    returns the devkit folder."""
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
            write_image(folder, image_id, seed, sides)
            seed += 1
        (folder / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
        (folder / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return devkit


COCO_CATEGORIES = ({"id": 1, "name": "cat"}, {"id": 3, "name": "dog"})
"""COCO ids with a gap, as COCO's: labels 0 and 1 are ids 1 and 3."""


def disc_polygon(x0: float, y0: float, side: float, points: int = 16) -> list[float]:
    """A regular ``points``-gon inscribed in the square ``(x0, y0, side)``."""
    angles = np.linspace(0, 2 * np.pi, points, endpoint=False)
    radius, cx, cy = side / 2, x0 + side / 2, y0 + side / 2
    return [
        round(float(v), 2)
        for a in angles
        for v in (cx + radius * np.cos(a), cy + radius * np.sin(a))
    ]


def coco_scene(seed: int) -> tuple[Image.Image, list[dict]]:
    """One image and its objects as COCO annotations without ids: cats are discs (16-gons),
    dogs squares, drawn as their polygons so the photo shows exactly the annotation."""
    picture, placed = placements(seed)
    draw = ImageDraw.Draw(picture)
    objects = []
    for name, side, x0, y0 in placed:
        if name == "cat":
            polygon = disc_polygon(x0, y0, side)
        else:
            polygon = [x0, y0, x0 + side, y0, x0 + side, y0 + side, x0, y0 + side]
        draw.polygon(list(zip(polygon[0::2], polygon[1::2], strict=True)), fill=SHAPES[name][1])
        xs, ys = polygon[0::2], polygon[1::2]
        box = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
        category = 1 if name == "cat" else 3
        objects.append(
            {"category_id": category, "bbox": box, "iscrowd": 0, "segmentation": [polygon]}
        )
    return picture, objects


def write_scene_coco(root: Path, train: int = 24, test: int = 8) -> Path:
    """``root/coco`` in the official layout (``annotations/instances_{train,val}2017.json``,
    ``train2017/``, ``val2017/``): polygon objects, plus in the first training image a crowd
    region (an RLE over its top-left corner) and in the second a non-crowd object written as
    an uncompressed RLE (the bit-mask route); returns the folder."""
    from faster_coco_eval.core import mask as coco_mask

    coco = root / "coco"
    seed = 1000
    for split, count in (("train2017", train), ("val2017", test)):
        (coco / split).mkdir(parents=True, exist_ok=True)
        data = {"images": [], "annotations": [], "categories": list(COCO_CATEGORIES)}
        for n in range(count):
            image_id = 10 * n + 7
            picture, objects = coco_scene(seed)
            seed += 1
            name = f"{image_id:012d}.jpg"
            picture.save(coco / split / name, quality=92)
            data["images"].append(
                {
                    "id": image_id,
                    "file_name": name,
                    "width": picture.width,
                    "height": picture.height,
                }
            )
            if split == "train2017" and n in (0, 1):
                objects.append(_rle_object(picture.height, picture.width, crowd=n == 0))
            for entry in objects:
                if isinstance(entry["segmentation"], dict):
                    rle = coco_mask.frPyObjects(
                        entry["segmentation"], *entry["segmentation"]["size"]
                    )
                else:
                    rle = coco_mask.merge(
                        coco_mask.frPyObjects(entry["segmentation"], picture.height, picture.width)
                    )
                entry["area"] = float(coco_mask.area(rle))
                entry["id"] = len(data["annotations"]) + 1 + (0 if split == "train2017" else 5000)
                entry["image_id"] = image_id
                data["annotations"].append(entry)
        (coco / "annotations").mkdir(exist_ok=True)
        (coco / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    return coco


def _rle_object(height: int, width: int, crowd: bool) -> dict:
    """A 10x12 block at the top-left corner as an uncompressed RLE (column-major runs)."""
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[:10, :12] = 1
    runs, flat, value, count = [], mask.flatten(order="F"), 0, 0
    for pixel in flat:
        if pixel != value:
            runs.append(count)
            value, count = pixel, 0
        count += 1
    runs.append(count)
    return {
        "category_id": 1,
        "bbox": [0.0, 0.0, 12.0, 10.0],
        "iscrowd": int(crowd),
        "segmentation": {"size": [height, width], "counts": runs},
    }
