"""Views for Siamese frameworks: batched augmentation and crop-box samplers (plain PyTorch)."""

from contrastlab.views.augment import Augment, ViewSampler, apply_view, sample_parameters
from contrastlab.views.contrastive_crop import (
    ContrastiveCrop,
    SimCCrop,
    boxes_from_heatmaps,
    center_suppressed_boxes,
    heatmaps,
    localize_boxes,
)
from contrastlab.views.crops import RandomResizedCropBoxes, crop_and_resize, random_resized_boxes

__all__ = [
    "Augment",
    "ContrastiveCrop",
    "RandomResizedCropBoxes",
    "SimCCrop",
    "ViewSampler",
    "apply_view",
    "boxes_from_heatmaps",
    "center_suppressed_boxes",
    "crop_and_resize",
    "heatmaps",
    "localize_boxes",
    "random_resized_boxes",
    "sample_parameters",
]
