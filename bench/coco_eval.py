"""COCO box and mask AP: pycocotools against faster-coco-eval, on the same detections in one run.

Ground truth: ``--images`` images of 640x480 with ``--objects`` polygon objects each (random
convex-ish polygons over 80 categories, some crowd RLE regions); detections: ``--detections``
per image, jittered copies of the truth plus random boxes, each with an RLE mask. Both
libraries evaluate the same files (``bbox`` and ``segm``); the script checks that their twelve
summary numbers agree and prints one markdown row per library and IoU type with the seconds of
``evaluate() + accumulate() + summarize()`` (the loading of the files counted apart).

    pip install pycocotools   # the peer (faster-coco-eval is contrastlab's dependency)
    python bench/coco_eval.py --images 500 --objects 7 --detections 100
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def polygon(rng: np.random.Generator, width: int, height: int) -> tuple[list[float], list[float]]:
    """A star-shaped polygon and its (x, y, w, h) box."""
    cx, cy = rng.uniform(40, width - 40), rng.uniform(40, height - 40)
    radius = rng.uniform(8, 35)
    angles = np.sort(rng.uniform(0, 2 * np.pi, 8))
    r = radius * rng.uniform(0.6, 1.0, 8)
    xs, ys = cx + r * np.cos(angles), cy + r * np.sin(angles)
    box = [xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min()]
    return [float(v) for p in zip(xs, ys, strict=True) for v in p], [float(v) for v in box]


def make_files(folder: Path, images: int, objects: int, detections: int, seed: int = 0):
    from pycocotools import mask as mask_util

    rng = np.random.default_rng(seed)
    width, height = 640, 480
    truth = {"images": [], "annotations": [], "categories": []}
    truth["categories"] = [{"id": i + 1, "name": f"c{i}"} for i in range(80)]
    found = []
    for image_id in range(1, images + 1):
        truth["images"].append({"id": image_id, "width": width, "height": height})
        for _ in range(objects):
            poly, box = polygon(rng, width, height)
            category = int(rng.integers(1, 81))
            rle = mask_util.merge(mask_util.frPyObjects([poly], height, width))
            truth["annotations"].append(
                {
                    "id": len(truth["annotations"]) + 1,
                    "image_id": image_id,
                    "category_id": category,
                    "bbox": box,
                    "area": float(mask_util.area(rle)),
                    "iscrowd": 0,
                    "segmentation": [poly],
                }
            )
        for d in range(detections):
            jitter = rng.normal(0, 3, 16)
            source = truth["annotations"][-1 - d % objects]
            poly = (np.array(source["segmentation"][0]) + jitter).tolist()
            if d >= 2 * objects:
                poly, _ = polygon(rng, width, height)
            rle = mask_util.merge(mask_util.frPyObjects([poly], height, width))
            rle["counts"] = rle["counts"].decode()
            found.append(
                {
                    "image_id": image_id,
                    "category_id": source["category_id"]
                    if d < 2 * objects
                    else int(rng.integers(1, 81)),
                    "bbox": [float(v) for v in mask_util.toBbox(rle)],
                    "score": float(rng.uniform()),
                    "segmentation": rle,
                }
            )
    truth_file, found_file = folder / "truth.json", folder / "found.json"
    truth_file.write_text(json.dumps(truth))
    found_file.write_text(json.dumps(found))
    return truth_file, found_file


def evaluate(library: str, truth_file: Path, found_file: Path, kind: str):
    """``library``'s twelve summary numbers, its seconds to load the files and to evaluate."""
    if library == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval as Evaluator
    else:
        from faster_coco_eval import COCO
        from faster_coco_eval import COCOeval_faster as Evaluator

    with contextlib.redirect_stdout(io.StringIO()):
        start = time.perf_counter()
        gt = COCO(str(truth_file))
        dt = gt.loadRes(str(found_file))
        loaded = time.perf_counter()
        evaluator = Evaluator(gt, dt, kind)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return np.array(evaluator.stats[:12]), loaded - start, time.perf_counter() - loaded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--objects", type=int, default=7)
    parser.add_argument("--detections", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        files = make_files(Path(folder), args.images, args.objects, args.detections)
        print("| library | IoU type | load s | evaluate s | AP | AP50 | AP75 |")
        print("|---|---|---|---|---|---|---|")
        for kind in ("bbox", "segm"):
            results = {}
            for name in ("pycocotools", "faster-coco-eval"):
                stats, load, seconds = evaluate(name, *files, kind)
                results[name] = (stats, seconds)
                print(
                    f"| {name} | {kind} | {load:.2f} | {seconds:.2f} | {100 * stats[0]:.3f} | "
                    f"{100 * stats[1]:.3f} | {100 * stats[2]:.3f} |"
                )
            difference = np.abs(results["pycocotools"][0] - results["faster-coco-eval"][0]).max()
            ratio = results["pycocotools"][1] / results["faster-coco-eval"][1]
            print(f"\n{kind}: largest difference of the 12 numbers {difference:.2e}, ", end="")
            print(f"pycocotools / faster-coco-eval seconds {ratio:.1f}x\n")


if __name__ == "__main__":
    main()
