"""COCO box and mask AP, as the papers' detectron2 ``COCOEvaluator`` reports them.

The detector's outputs become COCO results (boxes as ``(x, y, w, h)`` in the image's pixels,
the category's COCO id, the score; masks thresholded at 0.5 and run-length encoded) and are
scored against the instances JSON by the COCO API's evaluation: AP is the mean over IoU
0.50:0.95 and the 80 categories of the 101-point interpolated precision, with crowd regions
matched without penalty and at most 100 detections per image; AP50, AP75 and the areas' APs
(small < 32², medium, large > 96²) beside it. All in percent.

The evaluation is faster-coco-eval's ``COCOeval_faster``, a C++ port of pycocotools'
``COCOeval``: the same twelve numbers to the last digit and 19x (boxes) and 6.6x (masks)
faster here (``bench/coco_eval.py``: 500 images, 700 detections each kind); on COCO val2017's
5,000 images pycocotools' box evaluation alone takes minutes on one core.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from faster_coco_eval import COCO, COCOeval_faster
from faster_coco_eval.core import mask as coco_mask

from contrastlab.transfer.coco import CocoDataset

SUMMARY = ("AP", "AP50", "AP75", "APs", "APm", "APl")
"""The first six of COCOeval's ``stats``: AP at 0.50:0.95, 0.50, 0.75, and by area."""


def coco_results(
    dataset: CocoDataset, predictions: Sequence[Mapping[str, torch.Tensor]], masks: bool
) -> list[dict]:
    """COCO results for ``predictions[i]`` on ``dataset.images[i]``: torchvision's ``boxes``
    (continuous ``(x0, y0, x1, y1)``), ``scores``, ``labels`` (contiguous, 0-based) and, with
    ``masks``, ``masks`` of ``(n, 1, H, W)`` probabilities or their ``rles``
    (:func:`encode_masks`)."""
    if len(predictions) != len(dataset.images):
        raise ValueError(f"{len(predictions)} predictions for {len(dataset.images)} images")
    results = []
    for image, found in zip(dataset.images, predictions, strict=True):
        boxes = found["boxes"].detach().cpu().double()
        boxes[:, 2:] -= boxes[:, :2]
        encoded = encode_masks(found)["rles"] if masks else [None] * len(boxes)
        rows = zip(
            boxes.tolist(),
            found["scores"].tolist(),
            found["labels"].tolist(),
            encoded,
            strict=False,
        )
        for box, score, label, rle in rows:
            row = {
                "image_id": image.image_id,
                "category_id": dataset.category_ids[label],
                "bbox": box,
                "score": score,
            }
            if rle is not None:
                row["segmentation"] = rle
            results.append(row)
    return results


def encode_masks(found: Mapping[str, Any]) -> dict[str, Any]:
    """``found`` with its ``masks`` (``(n, 1, H, W)`` probabilities) replaced by ``rles``: each
    mask thresholded at 0.5 and run-length encoded (COCO's compressed string)."""
    if "rles" in found:
        return dict(found)
    binary = (found["masks"][:, 0] >= 0.5).cpu().numpy().astype(np.uint8)
    encoded = coco_mask.encode(np.asfortranarray(binary.transpose(1, 2, 0)))
    for rle in encoded:
        rle["counts"] = rle["counts"].decode("ascii")
    return {k: v for k, v in found.items() if k != "masks"} | {"rles": list(encoded)}


def coco_ap(annotation_file: str | Path, results: list[dict], kind: str) -> dict[str, float | None]:
    """:data:`SUMMARY` in percent for ``results`` of IoU ``kind`` (``bbox`` or ``segm``)
    against ``annotation_file``; every number 0 when there is no result, ``None`` for an area
    without objects (COCOeval's -1)."""
    if not results:
        return dict.fromkeys(SUMMARY, 0.0)
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(str(annotation_file))
        found = truth.loadRes(results)
        evaluator = COCOeval_faster(truth, found, kind)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {
        n: 100 * float(v) if v >= 0 else None
        for n, v in zip(SUMMARY, evaluator.stats, strict=False)
    }


def coco_detection_ap(
    dataset: CocoDataset,
    annotation_file: str | Path,
    predictions: Sequence[Mapping[str, torch.Tensor]],
    masks: bool = True,
) -> dict[str, dict[str, float | None]]:
    """``{"box": SUMMARY, "mask": SUMMARY}`` (``mask`` only with ``masks``) in percent."""
    results = coco_results(dataset, predictions, masks)
    scores = {"box": coco_ap(annotation_file, results, "bbox")}
    if masks:
        scores["mask"] = coco_ap(annotation_file, results, "segm")
    return scores
