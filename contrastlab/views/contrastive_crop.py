"""ContrastiveCrop (Peng et al., CVPR 2022) in one module (plain PyTorch): localisation
(heatmap -> object box), the center-suppressed sampler, and :class:`ContrastiveCrop` (and
:class:`SimCCrop`), the box sampler holding the per-image box store and the schedule.

Boxes of objects are ``(top, left, bottom, right)`` fractions of the image; crop boxes are
integer ``(top, left, height, width)`` pixels, as every box sampler yields. The store is module
state indexed by dataset index: it is saved in checkpoints, moves with the model, and is read in
the training process where views are sampled, so an update is seen by the very next batch and
no data-loader worker holds a stale copy.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from contrastlab.views.crops import (
    ImageSize,
    centred_starts,
    crop_sizes,
    image_extents,
    random_resized_boxes,
)

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


def box_statistics(boxes: torch.Tensor) -> dict[str, float]:
    """What a localisation found, for the logs: the boxes' ``(N, 4)`` fractional ``(top,
    left, bottom, right)`` areas as a share of their image (mean, 10% and 90% quantiles) and
    the share of images whose box is the whole image (nothing above the threshold, or heat
    everywhere)."""
    boxes = boxes.float()
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    whole = (boxes == torch.tensor(WHOLE_IMAGE, device=boxes.device)).all(dim=1)
    low, high = torch.quantile(area, torch.tensor([0.1, 0.9], device=area.device)).tolist()
    return {
        "ccrop/box_area_mean": area.mean().item(),
        "ccrop/box_area_q10": low,
        "ccrop/box_area_q90": high,
        "ccrop/whole_image_share": whole.float().mean().item(),
    }


def check_box(box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    """Validate a fractional ``(top, left, bottom, right)`` box."""
    top, left, bottom, right = (float(v) for v in box)
    if not (0 <= top < bottom <= 1 and 0 <= left < right <= 1) or any(map(math.isnan, box)):
        raise ValueError(
            f"box {box} must be (top, left, bottom, right) fractions with "
            "0 <= top < bottom <= 1 and 0 <= left < right <= 1"
        )
    return top, left, bottom, right


# ------------------------------------------------------------------ the box sampler

DEFAULT_SCALE, DEFAULT_RATIO = (0.2, 1.0), (3 / 4, 4 / 3)


class ContrastiveCrop(nn.Module):
    """Center-suppressed crops around per-image object boxes, RandomResizedCrop before.

    Schedule (epochs counted from 0): RandomResizedCrop while ``epoch < warmup_epochs``; boxes
    are recomputed from the encoder at the start of ``warmup_epochs``, ``warmup_epochs +
    interval``, ... (see :meth:`localization_due`), and crops are sampled around them from then
    on. Both views are drawn independently from the same box.

    Args:
        alpha: ``Beta(alpha, alpha)`` placement of the crop centre inside the box (0.1 on
            CIFAR/STL/Tiny ImageNet, 0.6 on ImageNet; 1 is uniform).
        threshold: heatmap level ``k`` that delimits the object box.
        warmup_epochs, interval: the localisation schedule.
        scale, ratio: crop area fraction and aspect range, as RandomResizedCrop; unset, they
            are the views' (:meth:`match_views`; RandomResizedCrop's (0.2, 1) and (3/4, 4/3)
            until then), so ContrastiveCrop and its RandomResizedCrop baseline draw the same
            crop sizes.
        fixed_box: SimCCrop: one fixed box for every image, no localisation.
    """

    def __init__(
        self,
        alpha: float = 0.1,
        threshold: float = 0.1,
        warmup_epochs: int = 100,
        interval: int = 100,
        scale: tuple[float, float] | None = None,
        ratio: tuple[float, float] | None = None,
        fixed_box: tuple[float, float, float, float] | None = None,
    ) -> None:
        super().__init__()
        if not alpha > 0:
            raise ValueError(f"ContrastiveCrop.alpha must be > 0, got {alpha}")
        if not 0 <= threshold <= 1:
            raise ValueError(f"ContrastiveCrop.threshold must lie in [0, 1], got {threshold}")
        if interval < 1:
            raise ValueError(f"ContrastiveCrop.interval must be >= 1, got {interval}")
        if warmup_epochs < 0:
            raise ValueError(f"ContrastiveCrop.warmup_epochs must be >= 0, got {warmup_epochs}")
        self.alpha, self.threshold = float(alpha), float(threshold)
        self.warmup_epochs, self.interval = int(warmup_epochs), int(interval)
        self.given = {"scale": scale is not None, "ratio": ratio is not None}
        self.scale = tuple(scale) if scale is not None else DEFAULT_SCALE
        self.ratio = tuple(ratio) if ratio is not None else DEFAULT_RATIO
        self.fixed_box = check_box(fixed_box) if fixed_box is not None else None
        self.register_buffer("boxes", torch.empty(0, 4))
        self.register_buffer("active", torch.tensor(False))

    def config(self) -> dict:
        """Constructor arguments as plain values (checkpoint hyperparameters)."""
        return {
            "alpha": self.alpha,
            "threshold": self.threshold,
            "warmup_epochs": self.warmup_epochs,
            "interval": self.interval,
            "scale": list(self.scale),
            "ratio": list(self.ratio),
            "fixed_box": list(self.fixed_box) if self.fixed_box is not None else None,
        }

    def match_views(self, scale: tuple[float, float], ratio: tuple[float, float]) -> None:
        """Take the views' crop ``scale`` and ``ratio`` where this sampler's are unset; a value
        set here that differs from the views' is refused (a run with ContrastiveCrop would
        otherwise draw other crop sizes than its RandomResizedCrop baseline, unsaid)."""
        for name, views in (("scale", tuple(scale)), ("ratio", tuple(ratio))):
            mine = getattr(self, name)
            if not self.given[name]:
                setattr(self, name, views)
            elif any(abs(a - b) > 1e-9 for a, b in zip(mine, views, strict=True)):
                raise ValueError(
                    f"model.crop.{name} = {list(mine)} differs from the views' "
                    f"model.augment.{name} = {list(views)}: ContrastiveCrop takes the views' "
                    f"{name} when its own is unset; set one of them, or both alike"
                )

    @property
    def localizes(self) -> bool:
        return self.fixed_box is None

    def reset(self, num_images: int) -> None:
        """Size the store for a dataset: every box the whole image (or the fixed box)."""
        box = self.fixed_box or WHOLE_IMAGE
        device = self.boxes.device
        self.boxes = torch.tensor(box, device=device).repeat(num_images, 1)

    def localization_due(self, epoch: int) -> bool:
        """True at the start of the epochs whose boxes come from a fresh localisation."""
        after = epoch - self.warmup_epochs
        return self.localizes and after >= 0 and after % self.interval == 0

    def start_if_due(self, epoch: int) -> None:
        """Switch from RandomResizedCrop to center-suppressed crops once warm-up is over."""
        if epoch >= self.warmup_epochs:
            self.active.fill_(True)

    @torch.no_grad()
    def update(self, indices: torch.Tensor, boxes: torch.Tensor) -> None:
        """Store ``boxes`` ``(n, 4)`` (fractions) for the images with dataset ``indices``."""
        self.boxes[indices.to(self.boxes.device)] = boxes.to(self.boxes)

    def forward(
        self, indices: torch.Tensor, image_size: ImageSize, generator: torch.Generator
    ) -> torch.Tensor:
        """The box sampler: ``(dataset indices, (H, W) or (B, 2) sizes, generator) -> (B, 4)``
        int crop boxes."""
        if not bool(self.active):
            return random_resized_boxes(len(indices), image_size, self.scale, self.ratio, generator)
        if len(self.boxes) == 0:
            raise RuntimeError("ContrastiveCrop has no boxes: call reset(num_images) first")
        boxes = self.boxes[indices.to(self.boxes.device)]
        return center_suppressed_boxes(
            boxes, image_size, self.scale, self.ratio, self.alpha, generator
        )

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        saved = state_dict.get(prefix + "boxes")
        if saved is not None:  # the store takes the saved dataset's size
            self.boxes = torch.empty_like(saved, device=self.boxes.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class SimCCrop(ContrastiveCrop):
    """The fixed-box baseline of ContrastiveCrop: center-suppressed crops around the box
    ``(0.25, 0.25, 0.75, 0.75)`` for every image, no localisation, from the first epoch."""

    def __init__(
        self,
        alpha: float = 0.1,
        box: tuple[float, float, float, float] = (0.25, 0.25, 0.75, 0.75),
        warmup_epochs: int = 0,
        scale: tuple[float, float] | None = None,
        ratio: tuple[float, float] | None = None,
    ) -> None:
        super().__init__(
            alpha=alpha, warmup_epochs=warmup_epochs, scale=scale, ratio=ratio, fixed_box=box
        )
