"""What a COCO instances file costs once read: ``read_coco``'s seconds and the memory its
dataset keeps, on a synthetic file shaped like COCO (640x480 images, ``--objects`` polygon
objects each of ``--points`` vertices), against the same polygons kept as tuples of Python
floats (the reader's earlier form), measured in the same run with tracemalloc.

    python bench/coco_memory.py --images 10000 --objects 7 --points 24
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from contrastlab.transfer.coco import read_coco


def write_file(root: Path, images: int, objects: int, points: int) -> Path:
    rng = np.random.default_rng(0)
    (root / "images").mkdir()
    (root / "images" / "x.jpg").write_bytes(b"")
    entries, annotations = [], []
    for image_id in range(1, images + 1):
        entries.append({"id": image_id, "file_name": "x.jpg", "width": 640, "height": 480})
        for _ in range(objects):
            polygon = rng.uniform(0, 400, 2 * points).round(2).tolist()
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "bbox": [1.0, 2.0, 30.0, 40.0],
                    "area": 1200.0,
                    "iscrowd": 0,
                    "segmentation": [polygon],
                }
            )
    path = root / "instances.json"
    categories = [{"id": 1, "name": "thing"}]
    path.write_text(
        json.dumps({"images": entries, "annotations": annotations, "categories": categories})
    )
    return path


def retained(build) -> tuple[object, float]:
    """What ``build()`` returns and the megabytes it keeps allocated."""
    gc.collect()
    tracemalloc.start()
    kept = build()
    gc.collect()
    size = tracemalloc.get_traced_memory()[0] / 1e6
    tracemalloc.stop()
    return kept, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--objects", type=int, default=7)
    parser.add_argument("--points", type=int, default=24)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = write_file(Path(folder), args.images, args.objects, args.points)
        start = time.perf_counter()
        read_coco(path, Path(folder) / "images")
        seconds = time.perf_counter() - start
        dataset, arrays = retained(lambda: read_coco(path, Path(folder) / "images"))
        polygons = [o.segmentation for i in dataset.images for o in i.objects]
        del dataset
        _, tuples = retained(lambda: [tuple(tuple(p.tolist()) for p in s) for s in polygons])
        _, array_part = retained(lambda: [tuple(p.copy() for p in s) for s in polygons])
    objects = args.images * args.objects
    coordinates = objects * 2 * args.points
    print(f"{args.images:,} images, {objects:,} objects, {coordinates:,} coordinates")
    print(f"read_coco: {seconds:.2f} s; the dataset keeps {arrays:.0f} MB")
    for name, size in (("float64 arrays", array_part), ("tuples of floats", tuples)):
        per = 1e6 * size / coordinates
        print(f"its polygons as {name}: {size:.0f} MB ({per:.1f} B per coordinate)")


if __name__ == "__main__":
    main()
