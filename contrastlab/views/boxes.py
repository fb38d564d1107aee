"""ContrastiveCrop as a box sampler with its per-image box store (plain PyTorch).

The store is module state indexed by dataset index: it is saved in checkpoints, moves with the
model, and is read in the training process where views are sampled, so an update is seen by
the very next batch and no data-loader worker holds a stale copy.
"""

from __future__ import annotations

import torch
from torch import nn

from contrastlab.views.crops import ImageSize, random_resized_boxes
from contrastlab.views.localize import WHOLE_IMAGE, center_suppressed_boxes, check_box

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
