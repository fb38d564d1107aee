"""Crops as boxes: samplers yield per-image integer boxes, one batched op crops and resizes.

A box is ``(top, left, height, width)`` in pixels. Separating "where to crop" (a sampler) from
"cut it out and resize" (:func:`crop_and_resize`) lets another sampler, such as
ContrastiveCrop's center-suppressed one, replace RandomResizedCrop without touching the rest.
"""

from __future__ import annotations

import math

import torch
from torchvision.ops import roi_align

ATTEMPTS = 10  # as torchvision's RandomResizedCrop

ImageSize = tuple[int, int] | torch.Tensor
"""One ``(H, W)`` for the whole batch, or an ``(n, 2)`` tensor of each image's own size."""


def image_extents(n: int, image_size: ImageSize) -> torch.Tensor:
    """``(n, 2)`` float64 ``(H, W)`` per image from either form of :data:`ImageSize`."""
    extent = torch.as_tensor(image_size, dtype=torch.float64).cpu()
    if extent.ndim == 1:
        return extent.expand(n, 2)
    if extent.shape != (n, 2):
        raise ValueError(f"image sizes must be (2,) or ({n}, 2), got {tuple(extent.shape)}")
    return extent


def crop_sizes(
    n: int,
    image_size: ImageSize,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop ``(height, width)`` per image, drawn exactly as torchvision's RandomResizedCrop on
    each image's own size.

    Area ``~ U(scale) * H * W`` and ``log(w / h) ~ U(log ratio)``; up to ten attempts, the first
    whose crop fits is kept; otherwise the fallback is the largest crop whose aspect is clamped
    to ``ratio``, which torchvision centres (:func:`centred_starts`). Returns ``(n, 2)`` int64
    sizes and ``(n,)`` bool, True where the fallback was taken.
    """
    extent = image_extents(n, image_size)
    height, width = extent[:, :1], extent[:, 1:]
    u = torch.rand(n, ATTEMPTS, 2, generator=generator, dtype=torch.float64)
    target = height * width * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[..., 1])
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.argmax(fits.to(torch.int8), dim=1)
    rows = torch.arange(n)
    chosen = torch.stack([h[rows, first], w[rows, first]], dim=1)
    fell_back = ~fits.any(dim=1)
    chosen = torch.where(fell_back[:, None], fallback_sizes(extent, ratio), chosen)
    return chosen.to(torch.int64), fell_back


def centred_starts(image_size: ImageSize, sizes: torch.Tensor) -> torch.Tensor:
    """``((H - h) // 2, (W - w) // 2)``: where torchvision puts the fallback crop."""
    extent = image_extents(len(sizes), image_size).to(torch.int64)
    return torch.div(extent - sizes, 2, rounding_mode="floor")


def fallback_sizes(extent: torch.Tensor, ratio: tuple[float, float]) -> torch.Tensor:
    """torchvision's fallback crop per ``(H, W)`` row of ``extent``: the whole image with its
    aspect ``W / H`` clamped to ``ratio`` (Python's round, half to even, as torch.round)."""
    height, width = extent[:, 0], extent[:, 1]
    aspect = width / height
    low, high = min(ratio), max(ratio)
    h = torch.where(aspect < low, torch.round(width / low), height)
    w = torch.where(aspect > high, torch.round(height * high), width)
    return torch.stack([h, w], dim=1)


def random_resized_boxes(
    n: int,
    image_size: ImageSize,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator,
) -> torch.Tensor:
    """RandomResizedCrop boxes: sizes from :func:`crop_sizes`, top-left uniform over the
    positions where the crop fits (centred for the fallback, as torchvision). Returns
    ``(n, 4)`` int64 ``(top, left, height, width)``."""
    sizes, fell_back = crop_sizes(n, image_size, scale, ratio, generator)
    room = image_extents(n, image_size).to(torch.int64) - sizes + 1  # valid positions per axis
    u = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    start = torch.floor(u * room).to(torch.int64)
    start = torch.where(fell_back[:, None], centred_starts(image_size, sizes), start)
    return torch.cat([start, sizes], dim=1)


class RandomResizedCropBoxes:
    """The box sampler of the standard recipe: RandomResizedCrop over the whole image."""

    def __init__(
        self, scale: tuple[float, float] = (0.2, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3)
    ) -> None:
        self.scale, self.ratio = tuple(scale), tuple(ratio)

    def __call__(
        self, indices: torch.Tensor, image_size: ImageSize, generator: torch.Generator
    ) -> torch.Tensor:
        return random_resized_boxes(len(indices), image_size, self.scale, self.ratio, generator)


def crop_and_resize(
    images: torch.Tensor, boxes: torch.Tensor, size: int, antialias: bool = True
) -> torch.Tensor:
    """Cut ``boxes`` (``(B, 4)`` top, left, height, width) out of float ``images`` and resize
    each to ``size x size`` in one batched call: what torchvision's ``resize(crop(image, box),
    antialias=True)`` makes, for every image at once.

    Pixel centres sit at half-integers. Each output pixel is a triangle-weighted mean of the
    box's pixels, the triangle's half-width ``max(1, box / size)`` source pixels (PIL's and
    torchvision's anti-aliased bilinear filter), its weights renormalised at the box's edges;
    an upscale is therefore plain bilinear interpolation. A batch that only upscales takes
    ``roi_align`` (one fused kernel, the same values inside the box); a downscale takes
    :func:`antialiased_crops`. ``antialias=False`` always takes ``roi_align``, which averages
    ``ceil(box / size)`` bilinear samples per output pixel: faster, but it keeps 2.5x the
    aliasing (``bench/data_pipeline.py``).
    """
    # decided on the boxes where they were drawn (the host, mostly): no device round trip
    downscales = antialias and bool((boxes[:, 2:] > size).any())
    boxes = boxes.to(device=images.device, dtype=images.dtype)
    if downscales:
        return antialiased_crops(images, boxes, size)
    top, left, height, width = boxes.unbind(1)
    batch = torch.arange(len(images), device=images.device, dtype=images.dtype)
    rois = torch.stack([batch, left, top, left + width, top + height], dim=1)
    return roi_align(
        images, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True
    )


def antialiased_crops(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """The crops as two batched matrix products, ``Wy @ image @ Wx^T``, with
    :func:`resize_weights` on each axis: exact for any mix of up- and downscaled boxes."""
    rows = resize_weights(boxes[:, 0], boxes[:, 2], size, images.shape[-2])
    columns = resize_weights(boxes[:, 1], boxes[:, 3], size, images.shape[-1])
    resized = torch.matmul(rows[:, None], images)  # (B, C, size, W)
    return torch.matmul(resized, columns[:, None].transpose(-1, -2))


def resize_weights(
    start: torch.Tensor, length: torch.Tensor, size: int, extent: int
) -> torch.Tensor:
    """``(B, size, extent)`` weights of an anti-aliased bilinear resize of ``[start, start +
    length)`` to ``size`` pixels along an axis of ``extent`` pixels: output ``i`` samples
    ``c = start + (i + 0.5) * s`` with ``s = length / size``, and source pixel ``j`` weighs
    ``max(0, 1 - |j + 0.5 - c| / max(s, 1))`` if it lies in the box, normalised to sum to 1."""
    dtype = torch.float64 if start.dtype == torch.float64 else torch.float32
    start, length = start.to(dtype), length.to(dtype)
    scale = length / size
    outputs = torch.arange(size, device=start.device, dtype=dtype) + 0.5
    centres = start[:, None] + outputs[None] * scale[:, None]  # (B, size)
    pixels = torch.arange(extent, device=start.device, dtype=dtype)
    distance = (pixels[None, None] + 0.5 - centres[..., None]).abs()
    weights = (1 - distance / scale.clamp(min=1)[:, None, None]).clamp(min=0)
    inside = (pixels >= start.floor()[:, None]) & (pixels < (start + length).ceil()[:, None])
    weights = weights * inside[:, None]
    return weights / weights.sum(-1, keepdim=True).clamp(min=torch.finfo(dtype).tiny)
