"""Pictures of what an encoder attends to: ContrastiveCrop heatmaps, boxes and sampled crops."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from contrastlab.methods.base import ContrastiveMethod
from contrastlab.views.augment import whole_view
from contrastlab.views.contrastive_crop import (
    boxes_from_heatmaps,
    center_suppressed_boxes,
    heatmaps,
)
from contrastlab.views.crops import crop_and_resize


@dataclass
class CropPicture:
    """Everything one figure shows, per image: ``images`` uint8 ``(N, 3, H, W)``, ``heat``
    ``(N, H, W)``, ``boxes`` fresh from the encoder and ``stored`` from the run's box store
    (``(N, 4)`` fractions, or ``None``), and ``crops`` ``(N, n_crops, 4)`` pixel boxes;
    ``shapes`` ``(N, 2)``: each photo's own ``(height, width)`` when ``images`` squashed them
    to a square (photo folders), so the picture shows each at its own aspect."""

    images: torch.Tensor
    heat: torch.Tensor
    boxes: torch.Tensor
    stored: torch.Tensor | None
    crops: torch.Tensor
    shapes: torch.Tensor | None = None

    def display_scale(self, i: int) -> tuple[float, float]:
        """``(sy, sx)``: how image ``i``'s square pixels stretch back to its own aspect (the
        longer side keeps its length)."""
        if self.shapes is None:
            return 1.0, 1.0
        height, width = self.images.shape[-2:]
        h, w = (float(v) for v in self.shapes[i])
        longest = max(h, w)
        return h / longest * max(height, width) / height, w / longest * max(height, width) / width


@torch.no_grad()
def crop_picture(
    model: ContrastiveMethod,
    images: torch.Tensor,
    indices: torch.Tensor,
    n_crops: int = 4,
    threshold: float | None = None,
    alpha: float | None = None,
    seed: int = 0,
) -> CropPicture:
    """Localise ``images`` with ``model``'s encoder (eval mode) as ContrastiveCrop does, and
    sample ``n_crops`` center-suppressed crops per image. ``threshold`` and ``alpha`` default
    to the model's ContrastiveCrop settings (0.1 and 0.1 without one)."""
    crop = model.crop
    threshold = threshold if threshold is not None else (crop.threshold if crop else 0.1)
    alpha = alpha if alpha is not None else (crop.alpha if crop else 0.1)
    scale, ratio = (crop.scale, crop.ratio) if crop else (model.augment.scale, model.augment.ratio)
    model.eval()
    size = (images.shape[-2], images.shape[-1])
    heat = heatmaps(model.backbone.saliency_map(whole_view(images, model.augment)), size)
    boxes = boxes_from_heatmaps(heat, threshold)
    generator = torch.Generator().manual_seed(seed)
    crops = torch.stack(
        [
            center_suppressed_boxes(boxes, size, scale, ratio, alpha, generator)
            for _ in range(n_crops)
        ],
        dim=1,
    )
    stored = None
    if crop is not None and len(crop.boxes) > int(indices.max()):
        stored = crop.boxes[indices.to(crop.boxes.device)].cpu()
    return CropPicture(images.cpu(), heat.cpu(), boxes.cpu(), stored, crops)


def draw_crop_picture(picture: CropPicture, title: str = "") -> Figure:
    """A grid, one row per image: the image; its heatmap with the object box (solid: fresh from
    the encoder; dashed: the box store used in training); the sampled crops outlined; then
    each crop cut out and resized as a training view would be (before colour augmentation)."""
    n, n_crops = picture.crops.shape[:2]
    height, width = picture.images.shape[-2:]
    columns = 3 + n_crops
    figure = Figure(figsize=(1.6 * columns, 1.6 * n + (0.4 if title else 0)), layout="constrained")
    axes = figure.subplots(n, columns, squeeze=False)
    headers = ["image", "heatmap + box", "crops", *[f"crop {j + 1}" for j in range(n_crops)]]
    for column, header in enumerate(headers):
        axes[0, column].set_title(header, fontsize=8)
    colours = ["#e41a1c", "#377eb8", "#4daf4a", "#984ea3", "#ff7f00", "#a65628"]
    for i in range(n):
        image = picture.images[i].permute(1, 2, 0).numpy()
        row = axes[i]
        sy, sx = picture.display_scale(i)
        extent = (-0.5, width * sx - 0.5, height * sy - 0.5, -0.5)  # the photo's own aspect
        for axis in row[:3]:
            axis.imshow(image, extent=extent)
        heat = picture.heat[i].numpy()
        row[1].imshow(heat, cmap="jet", alpha=0.5, vmin=0, vmax=1, extent=extent)
        row[1].add_patch(_box_patch(picture.boxes[i], height * sy, width * sx, "white", "-"))
        if picture.stored is not None:
            stored = _box_patch(picture.stored[i], height * sy, width * sx, "yellow", "--")
            row[1].add_patch(stored)
        cut = crop_and_resize(
            picture.images[i : i + 1].float().expand(n_crops, -1, -1, -1) / 255,
            picture.crops[i],
            max(height, width),
        )
        for j in range(n_crops):
            top, left, h, w = picture.crops[i, j].tolist()
            colour = colours[j % len(colours)]
            corner = (left * sx - 0.5, top * sy - 0.5)
            row[2].add_patch(Rectangle(corner, w * sx, h * sy, fill=False, ec=colour, lw=1))
            row[3 + j].imshow(cut[j].permute(1, 2, 0).clamp(0, 1).numpy())
            for spine in row[3 + j].spines.values():
                spine.set_edgecolor(colour)
        for axis in row:
            axis.set_xticks([])
            axis.set_yticks([])
    if title:
        figure.suptitle(title, fontsize=9)
    return figure


def _box_patch(
    box: torch.Tensor, height: float, width: float, colour: str, style: str
) -> Rectangle:
    top, left, bottom, right = box.tolist()
    return Rectangle(
        (left * width - 0.5, top * height - 0.5),
        (right - left) * width,
        (bottom - top) * height,
        fill=False,
        ec=colour,
        ls=style,
        lw=1.5,
    )


def detection_figure(examples: list[dict], title: str = "") -> Figure:
    """Test photos side by side: annotated boxes dashed white, detections solid with their class
    and score (``examples`` as :func:`contrastlab.transfer.training.detection_examples` writes
    them); a photo that cannot be read is drawn as an empty panel saying so."""
    from PIL import Image

    figure = Figure(figsize=(3.2 * len(examples), 3.4), layout="constrained")
    axes = figure.subplots(1, len(examples), squeeze=False)[0]
    for axis, example in zip(axes, examples, strict=True):
        axis.set_axis_off()
        axis.set_title(Path(example["image"]).name, fontsize=8)
        try:
            with Image.open(example["image"]) as photo:
                axis.imshow(photo.convert("RGB"))
        except OSError:
            axis.text(0.5, 0.5, "photo not found", ha="center", transform=axis.transAxes)
            continue
        for x0, y0, x1, y1 in example["truth"]:
            axis.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="white", ls="--"))
        for (x0, y0, x1, y1), label, score in zip(
            example["boxes"], example["labels"], example["scores"], strict=True
        ):
            axis.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="#e41a1c", lw=1.5))
            axis.text(x0, y0, f"{label} {score:.2f}", color="white", fontsize=7, va="bottom",
                      bbox={"facecolor": "#e41a1c", "pad": 1, "lw": 0})  # fmt: skip
    if title:
        figure.suptitle(title, fontsize=9)
    return figure


def save_figure(figure: Figure, out: str | Path, dpi: int = 150) -> Path:
    """Write ``figure`` (PNG, PDF or SVG by suffix); the folder is created."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=dpi)
    return out
