"""Detection transfer: the papers' PASCAL VOC and COCO protocols on torchvision's detectors.

``voc``: the PASCAL VOC reader (``Annotations/*.xml``, ``ImageSets/Main/*.txt``, difficult
flags, 07+12 combined), every malformed annotation an error naming the file and the object.
``coco``: the COCO instances reader (contiguous labels, polygons and RLEs, crowd flags;
detectron2's filter of invalid polygons, every other fault an error). ``data``: the decoded
photos and targets a detector trains on, flips seeded by (seed, epoch, index).
``detectors``: Faster R-CNN R50-C4 as MoCo's detectron2 config builds it, on torchvision's
parts, with detectron2's losses. ``solver``: detectron2's SGD groups, warm-up and steps,
precise BatchNorm. ``metrics``: VOC AP (the VOC07 11-point AP per class, AP50, AP75 and the
mean over IoU 0.50:0.95) as detectron2's ``PascalVOCDetectionEvaluator`` computes the papers'
numbers. ``masks``: polygons and RLEs rasterised, the mask head's targets as detectron2's
``crop_and_resize``. ``mask_rcnn``: Mask R-CNN C4 (res5 shared by the box and mask heads) and
R50-FPN with BatchNorm in backbone, FPN and heads. ``coco_metrics``: COCO box and mask AP.
``tasks``: the protocols (``voc-c4``, ``coco-c4-1x``, ``coco-c4-2x``, ``coco-fpn-1x``).

Plain PyTorch and NumPy (no Lightning) but ``training``, the Lightning module and data.
torchvision's FPN detector built around an exported backbone, ``faster_rcnn_from_export``,
lives in :mod:`contrastlab.models.exported`; its old name here still works, with a
``DeprecationWarning``.
"""

from __future__ import annotations

import warnings

_MOVED_TO_EXPORTED = (
    "faster_rcnn_from_export",
    "torchvision_resnet",
    "timm_resnet",
    "timm_backbone",
)


def __getattr__(name: str):
    if name in _MOVED_TO_EXPORTED:
        warnings.warn(
            f"contrastlab.transfer.{name} moved to contrastlab.models.exported; "
            "the old name will be removed",
            DeprecationWarning,
            stacklevel=2,
        )
        from contrastlab.models import exported

        return getattr(exported, name)
    raise AttributeError(f"module 'contrastlab.transfer' has no attribute {name!r}")
