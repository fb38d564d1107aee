"""A picture of the views a run trains on, the first thing to look at when a run does not learn.

:class:`ViewGrid` draws, before the first training step and at the first step after each
ContrastiveCrop localisation, the first few images of the training batch: each whole, at its
own aspect (letterboxed), beside its augmented views as the model receives them (denormalised).
The views come from the module's own view sampler, whose random state is restored afterwards,
so the run trains exactly as it would without the picture. Saved as
``<run dir>/views/step_<step>.png`` and logged to TensorBoard under ``views``.
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch
from torchvision.io import encode_png
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2.functional import resize
from torchvision.utils import make_grid

from contrastlab.data.datasets import PhotoBatch
from contrastlab.io import atomic_write

MIN_TILE = 96
"""Tiles smaller than this many pixels are enlarged (nearest neighbour) for viewing."""


def letterbox(image: torch.Tensor, size: int) -> torch.Tensor:
    """A uint8 ``(3, h, w)`` image scaled to fit ``size x size`` at its own aspect, centred on
    grey."""
    h, w = image.shape[-2:]
    scale = size / max(h, w)
    fitted = resize(image, [max(1, round(h * scale)), max(1, round(w * scale))], antialias=True)
    canvas = torch.full((3, size, size), 128, dtype=torch.uint8, device=image.device)
    top, left = (size - fitted.shape[-2]) // 2, (size - fitted.shape[-1]) // 2
    canvas[:, top : top + fitted.shape[-2], left : left + fitted.shape[-1]] = fitted
    return canvas


def to_pixels(view: torch.Tensor, mean: tuple, std: tuple) -> torch.Tensor:
    """A normalised float view ``(3, s, s)`` back to uint8 pixels."""
    mean_t = torch.tensor(mean, device=view.device).view(3, 1, 1)
    std_t = torch.tensor(std, device=view.device).view(3, 1, 1)
    return (view.float() * std_t + mean_t).clamp(0, 1).mul(255).round().to(torch.uint8)


SamplerInput = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]
"""``(uint8 images, indices, boxes or None)``, what the view sampler takes."""


def whole_images(batch, count: int) -> tuple[list[torch.Tensor], SamplerInput]:
    """The first ``count`` images of a training batch at their own sizes, and the view
    sampler's input for them (the padded rows, their indices and, for photos, the loader's
    boxes)."""
    if isinstance(batch, PhotoBatch):
        padded = batch.padded()[:count]
        shapes = batch.shapes[:count]
        wholes = [padded[i, :, :h, :w] for i, (h, w) in enumerate(shapes)]
        return wholes, (padded, batch.indices[:count], batch.boxes[:, :count])
    images, indices = batch[0][:count], batch[1][:count]
    return list(images), (images, indices, None)


def view_grid(pl_module: pl.LightningModule, batch, count: int) -> torch.Tensor:
    """The picture, uint8 ``(3, H, W)``: one row per image, the image then each view."""
    sampler = pl_module.views
    wholes, (images, indices, boxes) = whole_images(batch, count)
    state = sampler.get_state()
    try:
        views = sampler(images.to(pl_module.device), indices.to(pl_module.device), boxes)
    finally:
        sampler.set_state(state)  # the run's stream of views is untouched
    size = views[0].shape[-1]
    augments = sampler.augments
    tiles = []
    for i, whole in enumerate(wholes):
        tiles.append(letterbox(whole.to(views[0].device), size))
        for view, augment in zip(views, augments, strict=True):
            tiles.append(to_pixels(view[i], augment.mean, augment.std))
    grid = torch.stack(tiles).cpu()
    if size < MIN_TILE:  # small views (CIFAR's 32 px) shown larger, pixels kept sharp
        grid = resize(grid, [MIN_TILE, MIN_TILE], interpolation=InterpolationMode.NEAREST)
    return make_grid(grid, nrow=1 + len(views), padding=2, pad_value=255)


class ViewGrid(pl.Callback):
    """Draws :func:`view_grid` of ``images`` images at the run's start and after each
    ContrastiveCrop localisation (first process only)."""

    def __init__(self, images: int = 8) -> None:
        self.images = images

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module, batch, batch_idx: int) -> None:
        if batch_idx != 0 or trainer.global_rank != 0 or self.images <= 0:
            return  # every step passes here: leave at once
        crop = getattr(pl_module, "crop", None)
        localized = crop is not None and crop.localization_due(trainer.current_epoch)
        if trainer.global_step != 0 and not localized:
            return
        picture = view_grid(pl_module, batch, self.images)
        step = trainer.global_step
        path = Path(trainer.default_root_dir) / "views" / f"step_{step:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        data = encode_png(picture).numpy().tobytes()
        atomic_write(path, lambda f: f.write(data))
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_image"):
                experiment.add_image("views", picture, step)
