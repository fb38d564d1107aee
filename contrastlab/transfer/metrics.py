"""PASCAL VOC detection AP, computed as detectron2's ``PascalVOCDetectionEvaluator`` computes
the numbers MoCo, SynCo and ContrastiveCrop publish (AP50 / AP / AP75 on VOC07 test).

For each class and each IoU threshold ``t`` in 0.50, 0.55, ..., 0.95:

- the class's detections over all images, sorted by score (highest first), are matched in
  that order: a detection's overlap with a ground-truth box of its image and class is
  ``|A n B| / |A u B|`` with areas counted in whole pixels, ``(x1 - x0 + 1) (y1 - y0 + 1)``;
  its best-overlapping box decides: overlap ``> t`` with a difficult box: ignored; with a box
  not yet taken: a true positive (the box is taken); with a taken box, or no overlap ``> t``:
  a false positive;
- recall ``tp / npos`` (``npos``: the class's boxes that are not difficult) and precision
  ``tp / (tp + fp)`` after each detection;
- AP: VOC07's 11-point mean ``sum_r max{precision at recall >= r} / 11`` over
  ``r = 0, 0.1, ..., 1`` (``use_07_metric``), else the area under the interpolated curve.

AP50 and AP75 are the means over classes at 0.50 and 0.75; AP is the mean over the ten
thresholds of those means; a class without boxes counts as 0. All in percent.

detectron2's details are kept because they change the published numbers: a detection's box
becomes ``(x0 + 1, y0 + 1, x1, y1)`` (the XML's 1-based pixels), rounded to 0.1 px, its score
to 0.001; ties in score keep NumPy's ``argsort(-score)`` order of the detections as they came;
the recall points are ``np.arange(0, 1.1, 0.1)``, so 0.3, 0.6 and 0.7 lie a rounding error
above their decimals and a recall of exactly 3/10 does not reach the 0.3 point.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from contrastlab.transfer.voc import VOC_CLASSES, VocImage

IOU_THRESHOLDS = tuple(t / 100.0 for t in range(50, 100, 5))
RECALL_POINTS = np.arange(0.0, 1.1, 0.1)
"""VOC07's eleven recall points, as detectron2 (and the devkit's ``0:0.1:1``) make them."""


@dataclass(frozen=True)
class ClassDetections:
    """One class's detections over a dataset: the image each is on, its score and its box in
    the XML's coordinates, in the order they came."""

    image: np.ndarray
    score: np.ndarray
    box: np.ndarray


def voc_detection_ap(
    images: Sequence[VocImage],
    predictions: Sequence[Mapping[str, torch.Tensor]],
    classes: Sequence[str] = VOC_CLASSES,
    use_07_metric: bool = True,
) -> dict[str, float | dict[str, float]]:
    """``{"AP", "AP50", "AP75", "AP50_per_class"}`` in percent. ``predictions[i]`` is the
    detector's output for ``images[i]`` (torchvision's ``boxes`` as continuous 0-based
    ``(x0, y0, x1, y1)``, ``scores``, ``labels`` indexing ``classes``)."""
    if len(images) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions for {len(images)} images")
    per_threshold = {t: [] for t in IOU_THRESHOLDS}
    for label in range(len(classes)):
        truth = [_class_boxes(image, label) for image in images]
        found = class_detections(predictions, label)
        for threshold in IOU_THRESHOLDS:
            per_threshold[threshold].append(100 * class_ap(truth, found, threshold, use_07_metric))
    means = {t: float(np.mean(aps)) for t, aps in per_threshold.items()}
    return {
        "AP": float(np.mean(list(means.values()))),
        "AP50": means[0.5],
        "AP75": means[0.75],
        "AP50_per_class": dict(zip(classes, per_threshold[0.5], strict=True)),
    }


def _class_boxes(image: VocImage, label: int) -> tuple[np.ndarray, np.ndarray]:
    mine = [o for o in image.objects if o.label == label]
    boxes = np.array([o.box for o in mine], dtype=np.float64).reshape(-1, 4)
    return boxes, np.array([o.difficult for o in mine], dtype=bool)


def class_detections(
    predictions: Sequence[Mapping[str, torch.Tensor]], label: int
) -> ClassDetections:
    """Class ``label``'s detections in the evaluator's form: boxes moved to 1-based pixels and
    rounded to 0.1 px, scores to 0.001 (as its text files hold them)."""
    images, scores, boxes = [], [], []
    for index, prediction in enumerate(predictions):
        mine = prediction["labels"] == label
        box = prediction["boxes"][mine].detach().cpu().numpy().astype(np.float32)
        box[:, :2] += np.float32(1)
        images += [index] * len(box)
        scores += [float(f"{s:.3f}") for s in prediction["scores"][mine].tolist()]
        boxes += [[float(f"{v:.1f}") for v in row] for row in box]
    return ClassDetections(
        np.array(images, dtype=np.int64),
        np.array(scores, dtype=np.float64),
        np.array(boxes, dtype=np.float64).reshape(-1, 4),
    )


def pixel_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Overlap of ``box`` with each of ``boxes`` in whole pixels (inclusive coordinates)."""
    width = np.maximum(np.minimum(boxes[:, 2], box[2]) - np.maximum(boxes[:, 0], box[0]) + 1, 0)
    height = np.maximum(np.minimum(boxes[:, 3], box[3]) - np.maximum(boxes[:, 1], box[1]) + 1, 0)
    inter = width * height
    area = (box[2] - box[0] + 1) * (box[3] - box[1] + 1)
    areas = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    return inter / (area + areas - inter)


def class_ap(
    truth: Sequence[tuple[np.ndarray, np.ndarray]],
    found: ClassDetections,
    threshold: float,
    use_07_metric: bool = True,
) -> float:
    """One class's AP (a fraction) at one IoU threshold; ``truth[i]``: image ``i``'s boxes of
    the class and their difficult flags (module docstring)."""
    positives = sum(int((~difficult).sum()) for _, difficult in truth)
    taken = [np.zeros(len(boxes), dtype=bool) for boxes, _ in truth]
    order = np.argsort(-found.score)
    tp = np.zeros(len(order))
    fp = np.zeros(len(order))
    for rank, d in enumerate(order):
        boxes, difficult = truth[found.image[d]]
        if len(boxes) == 0:
            fp[rank] = 1
            continue
        overlaps = pixel_iou(found.box[d], boxes)
        best = int(np.argmax(overlaps))
        if overlaps[best] <= threshold:
            fp[rank] = 1
        elif not difficult[best]:
            tp[rank], fp[rank] = (0, 1) if taken[found.image[d]][best] else (1, 0)
            taken[found.image[d]][best] = True
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = tp / float(positives)  # no positives: nan, which no recall point reaches
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return eleven_point_ap(recall, precision) if use_07_metric else area_ap(recall, precision)


def eleven_point_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC07: ``sum_r max{precision[recall >= r]} / 11`` (0 where no recall reaches ``r``)."""
    total = 0.0
    for point in RECALL_POINTS:
        reached = recall >= point
        total += float(precision[reached].max()) if reached.any() else 0.0
    return total / 11.0


def area_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC2010+: the area under precision made monotone (each point the best to its right)."""
    recall = np.concatenate(([0.0], recall, [1.0]))
    precision = np.concatenate(([0.0], precision, [0.0]))
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.where(recall[1:] != recall[:-1])[0]
    return float(np.sum((recall[steps + 1] - recall[steps]) * precision[steps + 1]))
