"""ContrastiveCrop (Peng et al. 2022): semantic-aware localisation and center-suppressed crops.

Plain PyTorch. Boxes of objects are ``(top, left, bottom, right)`` fractions of the image;
crop boxes are integer ``(top, left, height, width)`` pixels, as every box sampler yields.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from torch.nn import functional as F

from contrastlab.views.crops import ImageSize, centred_starts, crop_sizes, image_extents

WHOLE_IMAGE = (0.0, 0.0, 1.0, 1.0)


def heatmaps(feature_maps: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """``(N, C, h, w)`` feature maps -> ``(N, H, W)`` heatmaps in [0, 1].

    ``A = sum_c F_c``, min-max normalised per image, ``(A - min A) / (max A - min A)``, then
    bilinearly upsampled to the image size. A constant map (nothing stands out) becomes all ones.
    A map smaller than 2x2 cannot localise anything (e.g. a torchvision-stem ResNet on 32 px
    images ends at 1x1): that is warned about, and every box stays the whole image.
    """
    if min(feature_maps.shape[-2:]) < 2:
        warnings.warn(
            f"ContrastiveCrop: the feature map is {tuple(feature_maps.shape[-2:])}, too small to "
            "localise objects; boxes stay the whole image. Use the CIFAR stem "
            "(model.cifar_stem=true) or larger images.",
            stacklevel=2,
        )
    summed = feature_maps.float().sum(dim=1, keepdim=True)
    low = summed.amin(dim=(2, 3), keepdim=True)
    span = summed.amax(dim=(2, 3), keepdim=True) - low
    normalised = torch.where(span > 0, (summed - low) / span.clamp_min(1e-12), 1.0)
    upsampled = F.interpolate(normalised, size=image_size, mode="bilinear", align_corners=False)
    return upsampled.squeeze(1).clamp_(0.0, 1.0)


def boxes_from_heatmaps(heat: torch.Tensor, threshold: float = 0.1) -> torch.Tensor:
    """The tightest box around the pixels with ``heat >= threshold`` (so 0 keeps the whole
    image), per image. ``(N, H, W)`` -> ``(N, 4)`` float ``(top, left, bottom, right)`` as
    fractions of the image; an image with no such pixel keeps the whole image."""
    height, width = heat.shape[-2:]
    mask = heat >= threshold
    rows, cols = mask.any(dim=2), mask.any(dim=1)
    top = _first_true(rows)
    bottom = rows.shape[1] - _first_true(rows.flip(1))
    left = _first_true(cols)
    right = cols.shape[1] - _first_true(cols.flip(1))
    scale = torch.tensor([height, width, height, width], dtype=torch.float32, device=heat.device)
    boxes = torch.stack([top, left, bottom, right], dim=1).float() / scale
    whole = torch.tensor(WHOLE_IMAGE, device=heat.device)
    return torch.where(rows.any(dim=1, keepdim=True), boxes, whole)


def _first_true(flags: torch.Tensor) -> torch.Tensor:
    return torch.argmax(flags.to(torch.int8), dim=1)


def localize_boxes(
    feature_maps: torch.Tensor, image_size: tuple[int, int], threshold: float = 0.1
) -> torch.Tensor:
    """Semantic-aware localisation: ``(N, C, h, w)`` last-stage feature maps -> ``(N, 4)``
    object boxes ``(top, left, bottom, right)`` as fractions of the image
    (:func:`heatmaps`, then :func:`boxes_from_heatmaps`)."""
    return boxes_from_heatmaps(heatmaps(feature_maps, image_size), threshold)


def beta_samples(shape: tuple[int, ...], alpha: float, generator: torch.Generator) -> torch.Tensor:
    """``Beta(alpha, alpha)`` draws (float64) that depend only on ``generator``'s state.

    torch's Beta sampler cannot take a generator, so a seed is drawn from ``generator`` and
    numpy's Beta sampler does the rest: the stream stays reproducible and resumable.
    """
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return torch.from_numpy(np.random.default_rng(seed).beta(alpha, alpha, size=shape))


def center_suppressed_boxes(
    boxes: torch.Tensor,
    image_size: ImageSize,
    scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    alpha: float = 0.1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Center-suppressed crops around object boxes.

    Crop size as RandomResizedCrop (area ``~ U(scale) H W``, ``log r ~ U(log ratio)``). Per
    axis, the crop's start is ``lo + floor((hi - lo) u)`` with ``u ~ Beta(alpha, alpha)`` and
    ``[lo, hi)`` the integer starts that put the crop's centre inside the box
    (``lo = ceil(box_lo - size / 2)``, ``hi = floor(box_hi - size / 2) + 1``), clamped so the
    crop stays in the image. When none of the ten size attempts fits, the fallback crop is
    centred in the image, as in torchvision and the authors' code. With the whole-image box and
    ``alpha = 1`` this is exactly RandomResizedCrop; ``alpha < 1`` favours centres near the box
    edges.

    Args:
        boxes: ``(N, 4)`` object boxes ``(top, left, bottom, right)``, fractions of the image.
        image_size: ``(H, W)`` of every image, or ``(N, 2)``: each image's own size.
    Returns:
        ``(N, 4)`` int64 crop boxes ``(top, left, height, width)`` inside the image (CPU).
    """
    generator = generator if generator is not None else torch.default_generator
    n = len(boxes)
    sizes, fell_back = crop_sizes(n, image_size, scale, ratio, generator)
    centred = centred_starts(image_size, sizes)
    sizes = sizes.to(torch.float64)
    extent = image_extents(n, image_size)
    boxes = boxes.detach().to("cpu", torch.float64)
    near, far = boxes[:, :2] * extent, boxes[:, 2:] * extent
    last_start = extent - sizes  # largest start that keeps the crop inside the image
    lo = torch.ceil(near - sizes / 2).clamp(min=torch.zeros_like(last_start), max=last_start)
    hi = torch.floor(far - sizes / 2) + 1
    hi = torch.maximum(hi.clamp(max=last_start + 1), lo + 1)
    u = beta_samples((n, 2), alpha, generator)
    start = (lo + torch.floor((hi - lo) * u)).clamp(max=hi - 1)  # u == 1 stays in range
    start = torch.where(fell_back[:, None], centred.to(torch.float64), start)
    return torch.cat([start, sizes], dim=1).to(torch.int64)


def check_box(box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    """Validate a fractional ``(top, left, bottom, right)`` box."""
    top, left, bottom, right = (float(v) for v in box)
    if not (0 <= top < bottom <= 1 and 0 <= left < right <= 1) or any(map(math.isnan, box)):
        raise ValueError(
            f"box {box} must be (top, left, bottom, right) fractions with "
            "0 <= top < bottom <= 1 and 0 <= left < right <= 1"
        )
    return top, left, bottom, right
