"""Views for Siamese frameworks: batched augmentation and crop-box samplers (plain PyTorch)."""

from contrastlab.views.augment import Augment, ViewSampler, apply_view, sample_parameters
from contrastlab.views.crops import RandomResizedCropBoxes, crop_and_resize, random_resized_boxes

__all__ = [
    "Augment",
    "RandomResizedCropBoxes",
    "ViewSampler",
    "apply_view",
    "crop_and_resize",
    "random_resized_boxes",
    "sample_parameters",
]
