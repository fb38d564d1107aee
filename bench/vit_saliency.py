"""Do ContrastiveCrop's boxes find objects? Boxes against known ones, ResNet vs ViT saliency.

Images with a known object: a textured square (random size, place and colour) on a smooth
background. Each encoder localises it as ContrastiveCrop does (saliency map, min-max normalised,
threshold 0.1, tightest box); the table gives the mean IoU with the true box, how often the
box holds the object's centre, and how often it is the whole image. Baselines: the whole image
and SimCCrop's fixed centre box. Encoders: the CIFAR-stem ResNet-18 (the paper's channel sum),
a ViT-Tiny with 8x8 patches summing channels (signed: d times each token's mean) and taking
each token's norm (non-negative, contrastlab's choice), untrained unless --checkpoint gives a
trained contrastlab checkpoint (its backbone is measured too).

    python bench/vit_saliency.py [--images 256 --size 64 --checkpoint CKPT]
"""

from __future__ import annotations

import argparse

import torch
from torch.nn import functional as F

from contrastlab.models.backbones import build_backbone
from contrastlab.views.contrastive_crop import boxes_from_heatmaps, heatmaps


def object_images(count: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(count, 3, size, size)`` floats in [0, 1] and their object boxes ``(top, left,
    bottom, right)`` as fractions: a smooth two-colour gradient behind a square of side
    20-60% of the image filled with coarse random texture of its own colour."""
    generator = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 1, size)
    images, boxes = [], []
    for _ in range(count):
        a, b = torch.rand(3, 1, 1, generator=generator), torch.rand(3, 1, 1, generator=generator)
        angle = torch.rand(1, generator=generator).item()
        mix = angle * ramp[None, :, None] + (1 - angle) * ramp[None, None, :]
        image = a * (1 - mix) + b * mix
        side = int(size * (0.2 + 0.4 * torch.rand(1, generator=generator).item()))
        top = int(torch.randint(0, size - side + 1, (1,), generator=generator))
        left = int(torch.randint(0, size - side + 1, (1,), generator=generator))
        colour = torch.rand(3, 1, 1, generator=generator)
        coarse = torch.rand(1, 1, max(2, side // 4), max(2, side // 4), generator=generator)
        texture = F.interpolate(coarse, size=(side, side), mode="nearest")[0]
        image[:, top : top + side, left : left + side] = (colour * (0.5 + texture)).clamp(0, 1)
        images.append(image)
        boxes.append(torch.tensor([top, left, top + side, left + side]) / size)
    return torch.stack(images), torch.stack(boxes)


def iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise IoU of ``(top, left, bottom, right)`` boxes."""
    height = (torch.minimum(a[:, 2], b[:, 2]) - torch.maximum(a[:, 0], b[:, 0])).clamp(min=0)
    width = (torch.minimum(a[:, 3], b[:, 3]) - torch.maximum(a[:, 1], b[:, 1])).clamp(min=0)
    inter = height * width
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def row(name: str, found: torch.Tensor, truth: torch.Tensor) -> str:
    centre_y, centre_x = (truth[:, 0] + truth[:, 2]) / 2, (truth[:, 1] + truth[:, 3]) / 2
    holds = (found[:, 0] <= centre_y) & (centre_y <= found[:, 2])
    holds &= (found[:, 1] <= centre_x) & (centre_x <= found[:, 3])
    whole = (found == torch.tensor([0.0, 0.0, 1.0, 1.0])).all(dim=1)
    return (
        f"| {name} | {iou(found, truth).mean():.3f} | {holds.float().mean():.0%} | "
        f"{whole.float().mean():.0%} |"
    )


@torch.no_grad()
def boxes_of(saliency: torch.Tensor, size: int) -> torch.Tensor:
    return boxes_from_heatmaps(heatmaps(saliency, (size, size)), 0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--checkpoint", default=None, help="a trained contrastlab checkpoint")
    args = parser.parse_args()
    torch.manual_seed(0)
    images, truth = object_images(args.images, args.size)
    x = (images - 0.45) / 0.25
    n = len(truth)
    rows = [
        row(
            "whole image (no localisation)",
            torch.tensor([[0.0, 0.0, 1.0, 1.0]]).repeat(n, 1),
            truth,
        ),
        row(
            "SimCCrop's fixed box 0.25-0.75",
            torch.tensor([[0.25, 0.25, 0.75, 0.75]]).repeat(n, 1),
            truth,
        ),
    ]
    resnet = build_backbone("resnet18", cifar_stem=True).eval()
    rows.append(
        row(
            "ResNet-18 (CIFAR stem), untrained: channel sum",
            boxes_of(resnet.saliency_map(x), args.size),
            truth,
        )
    )
    vit = build_backbone(
        "timm/vit_tiny_patch16_224", kwargs={"img_size": args.size, "patch_size": 8}
    ).eval()
    with torch.no_grad():
        tokens = vit.feature_map(x)
    negative = (tokens.sum(1) < 0).float().mean()
    rows.append(
        row(
            "ViT-Tiny (8x8 patches), untrained: channel sum (signed)",
            boxes_of(tokens.sum(1, keepdim=True), args.size),
            truth,
        )
    )
    rows.append(
        row(
            "ViT-Tiny (8x8 patches), untrained: token norm",
            boxes_of(vit.saliency_map(x), args.size),
            truth,
        )
    )
    if args.checkpoint:
        from contrastlab.runs.resume import load_checkpoint_file, method_from_checkpoint

        model = method_from_checkpoint(load_checkpoint_file(args.checkpoint)).eval()
        with torch.no_grad():
            saliency = model.backbone.saliency_map(F.interpolate(x, size=model.augment.size))
        rows.append(row(f"{args.checkpoint}: its saliency", boxes_of(saliency, args.size), truth))
    print(f"{n} images of {args.size} px, threshold 0.1", end="; ")
    print(f"share of the untrained ViT-Tiny's channel-sum map below 0: {negative:.0%}\n")
    print("| boxes | mean IoU with the object | box holds the object's centre | whole image |")
    print("| --- | --- | --- | --- |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
