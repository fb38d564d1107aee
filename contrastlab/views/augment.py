"""Batched view augmentation on the device, independent randomness per image.

The MoCo v2 "aug+" recipe (RandomResizedCrop, colour jitter, grayscale, Gaussian blur, flip,
normalisation) applied to a whole uint8 batch at once. Every random parameter is drawn from an
explicit ``torch.Generator`` the :class:`ViewSampler` owns, so a checkpoint can hold it and a
resumed run draws the same views. The pixel kernels are kornia's torchvision-compatible ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import kornia
import torch
from torch import nn
from torchvision.transforms.v2.functional import center_crop, resize

from contrastlab.views.crops import RandomResizedCropBoxes, crop_and_resize

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

BoxSampler = Callable[[torch.Tensor, tuple[int, int], torch.Generator], torch.Tensor]
"""``(dataset indices (B,), image (H, W), generator) -> (B, 4) int boxes (top, left, h, w)``."""


@dataclass(frozen=True)
class Augment:
    """One view's recipe. Defaults are MoCo v2's aug+ at CIFAR size (blur off, as the CIFAR
    recipes use it; ImageNet presets set ``blur_prob=0.5, size=224``)."""

    size: int = 32
    scale: tuple[float, float] = (0.2, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    jitter_prob: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    grayscale_prob: float = 0.2
    blur_prob: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_prob: float = 0.0
    flip_prob: float = 0.5
    mean: tuple[float, float, float] = CIFAR10_MEAN
    std: tuple[float, float, float] = CIFAR10_STD
    antialias: bool = True  # crops resized as torchvision's antialias=True; False: roi_align

    def __post_init__(self) -> None:
        for name in ("jitter_prob", "grayscale_prob", "blur_prob", "solarize_prob", "flip_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"Augment.{name} must lie in [0, 1], got {getattr(self, name)}")
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"Augment.scale must satisfy 0 < lo <= hi <= 1, got {self.scale}")
        if not 0 <= self.hue <= 0.5:
            raise ValueError(f"Augment.hue must lie in [0, 0.5], got {self.hue}")
        if self.size < 1:
            raise ValueError(f"Augment.size must be >= 1, got {self.size}")
        for name in ("brightness", "contrast", "saturation"):
            if getattr(self, name) < 0:
                raise ValueError(f"Augment.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("ratio", "blur_sigma"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ValueError(f"Augment.{name} must satisfy 0 < lo <= hi, got {(low, high)}")

    @property
    def blur_kernel(self) -> int:
        """Odd kernel about a tenth of the view, as MoCo v2's 23 px at 224 px."""
        return 2 * int(self.size * 0.1 / 2) + 1


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def _coin(n: int, p: float, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=generator) < p


def sample_parameters(n: int, aug: Augment, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Every per-image random parameter of one view (CPU tensors of length ``n``).

    Jitter factors follow torchvision's ColorJitter: brightness, contrast and saturation
    ``~ U(max(0, 1 - x), 1 + x)``, hue ``~ U(-h, h)``; the jitter order is one random
    permutation per batch (torchvision draws one per call, i.e. per image).
    """
    return {
        "jitter": _coin(n, aug.jitter_prob, generator),
        "brightness": _uniform(n, max(0.0, 1 - aug.brightness), 1 + aug.brightness, generator),
        "contrast": _uniform(n, max(0.0, 1 - aug.contrast), 1 + aug.contrast, generator),
        "saturation": _uniform(n, max(0.0, 1 - aug.saturation), 1 + aug.saturation, generator),
        "hue": _uniform(n, -aug.hue, aug.hue, generator),
        "order": torch.randperm(4, generator=generator),
        "grayscale": _coin(n, aug.grayscale_prob, generator),
        "blur": _coin(n, aug.blur_prob, generator),
        "sigma": _uniform(n, aug.blur_sigma[0], aug.blur_sigma[1], generator),
        "solarize": _coin(n, aug.solarize_prob, generator),
        "flip": _coin(n, aug.flip_prob, generator),
    }


def _where(mask: torch.Tensor, changed: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.view(-1, 1, 1, 1), changed, images)


def color_jitter(images: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    """Brightness ``x f``, contrast and saturation blends with the grey mean / grey image, and a
    hue rotation, in ``p["order"]``, on images with ``p["jitter"]`` set; values in [0, 1]."""
    ops = (
        lambda x: kornia.enhance.adjust_brightness_accumulative(x, p["brightness"]),
        lambda x: kornia.enhance.adjust_contrast_with_mean_subtraction(x, p["contrast"]),
        lambda x: kornia.enhance.adjust_saturation_with_gray_subtraction(x, p["saturation"]),
        lambda x: kornia.enhance.adjust_hue(x, p["hue"] * 2 * math.pi).clamp(0, 1),
    )
    jittered = images
    for i in p["order"].tolist():
        jittered = ops[i](jittered)
    return _where(p["jitter"], jittered, images)


def apply_view(
    images: torch.Tensor, boxes: torch.Tensor, p: dict[str, torch.Tensor], aug: Augment
) -> torch.Tensor:
    """uint8 ``(B, 3, H, W)`` -> normalised float view ``(B, 3, size, size)``."""
    device = images.device
    p = {k: v.to(device, non_blocking=True) for k, v in p.items()}
    x = crop_and_resize(images.float().div_(255), boxes, aug.size, aug.antialias)
    if aug.jitter_prob > 0:
        x = color_jitter(x, p)
    if aug.grayscale_prob > 0:
        x = _where(p["grayscale"], kornia.color.rgb_to_grayscale(x).expand_as(x), x)
    if aug.blur_prob > 0:
        sigma = p["sigma"].view(-1, 1).expand(-1, 2)
        blurred = kornia.filters.gaussian_blur2d(x, aug.blur_kernel, sigma, border_type="reflect")
        x = _where(p["blur"], blurred, x)
    if aug.solarize_prob > 0:
        x = _where(p["solarize"], torch.where(x >= 0.5, 1 - x, x), x)
    x = _where(p["flip"], x.flip(-1), x)
    mean = torch.tensor(aug.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(aug.std, device=device).view(1, 3, 1, 1)
    return (x - mean) / std


class ViewSampler(nn.Module):
    """Two (or more) augmented views of a uint8 batch, drawn on the batch's device.

    ``box_sampler`` decides where each view is cropped (RandomResizedCrop by default;
    ContrastiveCrop plugs in here). The generator is module state: :meth:`get_state` /
    :meth:`set_state` let a checkpoint resume the exact stream of views.
    """

    def __init__(
        self,
        augments: list[Augment] | tuple[Augment, ...] = (Augment(), Augment()),
        box_sampler: BoxSampler | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not augments:
            raise ValueError("ViewSampler needs at least one Augment")
        self.augments = list(augments)
        first = self.augments[0]
        self.box_sampler = box_sampler or RandomResizedCropBoxes(first.scale, first.ratio)
        self.generator = torch.Generator().manual_seed(seed)

    def reseed(self, seed: int) -> None:
        self.generator.manual_seed(seed)

    def get_state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)

    @torch.no_grad()
    def draw_boxes(
        self, indices: torch.Tensor, sizes: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        """Every view's crop boxes ``(V, n, 4)`` for images of their own ``sizes`` ``(n, 2)``,
        drawn from ``generator`` (a data loader's, before it decodes the images)."""
        return torch.stack([self.box_sampler(indices, sizes, generator) for _ in self.augments])

    @torch.no_grad()
    def forward(
        self, images: torch.Tensor, indices: torch.Tensor, boxes: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """The views of a uint8 batch; with ``boxes`` ``(V, B, 4)`` (drawn by the loader, in
        each image's pixels), those crops instead of boxes drawn here on the batch's size."""
        size = (images.shape[-2], images.shape[-1])
        views = []
        for v, aug in enumerate(self.augments):
            if boxes is None:
                view_boxes = self.box_sampler(indices, size, self.generator)
            else:
                view_boxes = boxes[v]
            params = sample_parameters(len(images), aug, self.generator)
            views.append(apply_view(images, view_boxes, params, aug))
        return views


# ------------------------------------------------------------------ un-augmented views


def standardize(x: torch.Tensor, augment: Augment) -> torch.Tensor:
    """``(x - mean) / std`` with the recipe's statistics, ``x`` in [0, 1]."""
    mean = torch.tensor(augment.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(augment.std, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def eval_view(images: torch.Tensor, augment: Augment) -> torch.Tensor:
    """Un-augmented view for evaluation: centre-crop (or resize) to the training view size,
    then the training normalisation."""
    x = images.float().div_(255)
    if x.shape[-1] > augment.size:
        x = center_crop(x, [augment.size, augment.size])
    elif x.shape[-1] < augment.size:
        x = resize(x, [augment.size, augment.size], antialias=True)
    return standardize(x, augment)


def whole_view(
    images: torch.Tensor, augment: Augment, extents: torch.Tensor | None = None
) -> torch.Tensor:
    """The whole un-augmented uint8 image, normalised as the training views (localisation).

    With ``extents`` (``(B, 4)`` boxes covering each image of a padded native-resolution
    batch), each image is resized to ``size x size`` (its aspect not kept): a box found on it
    as fractions of each axis is the same fraction of the original image."""
    x = images.float().div_(255)
    if extents is not None:
        x = crop_and_resize(x, extents, augment.size)
    return standardize(x, augment)
