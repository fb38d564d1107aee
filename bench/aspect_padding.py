"""How much of a detection batch is padding, with and without grouping batches by orientation?

torchvision's detection transform resizes each training image (shorter side drawn from the
protocol's sizes, longer side at most ``--max-size``) and pads every process's batch to its
largest height and width. This script runs that transform (the VOC task's detector, in
training mode) on batches drawn by ``contrastlab.transfer``'s sampler, once as the run draws
them (every global batch of one orientation, :func:`contrastlab.transfer.training.aspect_groups`)
and once from the same permutation ungrouped, and prints the share of the batches' pixels that
is padding. Only the photos' sizes matter; their sizes come from ``../shared/data/photos``.

    python bench/aspect_padding.py --photos ../shared/data/photos/imagenet-size --repeat 10 \
        --processes 8 --per-process 2 --epochs 10
"""

from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace

import torch
import torchvision
from PIL import Image

from contrastlab.data.sampling import GlobalBatchSampler
from contrastlab.transfer.detectors import faster_rcnn_c4
from contrastlab.transfer.tasks import VOC_C4
from contrastlab.transfer.training import aspect_groups


def padded_share(
    sizes: list[tuple[int, int]], groups: torch.Tensor | None, args: argparse.Namespace
) -> tuple[float, int]:
    """Padding's share of every per-process batch tensor's pixels over ``args.epochs``, and the
    number of per-process batches."""
    transform = faster_rcnn_c4(torchvision.models.resnet18(), 21, VOC_C4.settings).transform
    transform.train()
    torch.manual_seed(0)
    images, padded, batches = 0, 0, 0
    for epoch in range(args.epochs):
        for rank in range(args.processes):
            sampler = GlobalBatchSampler(
                len(sizes),
                args.per_process,
                seed=0,
                rank=rank,
                world_size=args.processes,
                groups=groups,
            )
            sampler.set_epoch(epoch)
            order = list(sampler)
            for start in range(0, len(order), args.per_process):
                chosen = order[start : start + args.per_process]
                tensors = [torch.zeros(3, sizes[i][1], sizes[i][0]) for i in chosen]
                batch, _ = transform(tensors)
                images += sum(h * w for h, w in batch.image_sizes)
                padded += batch.tensors.shape[0] * batch.tensors.shape[-2] * batch.tensors.shape[-1]
                batches += 1
    return 1 - images / padded, batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, default=Path("../shared/data/photos/imagenet-size"))
    parser.add_argument("--repeat", type=int, default=10, help="each photo's size this often")
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--per-process", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    sizes = [Image.open(path).size for path in sorted(args.photos.glob("*.jpg"))] * args.repeat
    if not sizes:
        raise SystemExit(f"no .jpg photos in {args.photos}")
    groups = aspect_groups([SimpleNamespace(width=w, height=h) for w, h in sizes])
    landscape = int((groups == 0).sum())
    print(
        f"{len(sizes)} images: {landscape} landscape, {len(sizes) - landscape} portrait or square"
    )
    print("| batches | per-process batches | padding's share of the pixels |")
    print("|---|---|---|")
    for name, grouping in (("mixed", None), ("one orientation", groups)):
        share, batches = padded_share(sizes, grouping, args)
        print(f"| {name} | {batches} | {100 * share:.1f}% |")


if __name__ == "__main__":
    main()
