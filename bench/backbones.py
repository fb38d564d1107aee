"""Pretraining throughput of MoCo v2 with different encoders, in one run: the CIFAR-stem
ResNet-18 of the CIFAR recipe against timm backbones (ViT-Tiny with 4x4 patches at 32 px, as in
the ``cifar10/mocov2_vit`` preset, and ConvNeXt-Atto), on real CIFAR-10.

Each backbone trains through the Lightning trainer for --warmup + --steps optimiser steps in
each --precision, each in its own process; images/s is measured over the last --steps steps.

    python bench/backbones.py --data ../shared/data --batch 128 --steps 6 --warmup 2 \
        --precision 32-true bf16-mixed
"""

from __future__ import annotations

import argparse
import sys

import torch
from throughput import child_result, report_result, timed_fit

BACKBONES: dict[str, dict] = {
    "resnet18 (CIFAR stem)": {"backbone": "resnet18", "cifar_stem": True, "bn_splits": 8},
    "timm/vit_tiny_patch16_224, 4 px patches": {
        "backbone": "timm/vit_tiny_patch16_224",
        "backbone_kwargs": {"img_size": 32, "patch_size": 4},
        "cifar_stem": False,
        "bn_splits": 1,
        "optimizer": "adamw",
        "lr": 5e-4,
    },
    "timm/convnext_atto, 1 px stem": {
        "backbone": "timm/convnext_atto",
        "backbone_kwargs": {"patch_size": 1},
        "cifar_stem": False,
        "bn_splits": 1,
    },
}


def run(args: argparse.Namespace) -> dict:
    import lightning.pytorch as pl

    from contrastlab.methods import MoCoV2

    pl.seed_everything(0)
    model = MoCoV2(queue_size=4096, channels_last=True, **BACKBONES[args.backbone])
    parameters = sum(p.numel() for p in model.backbone.parameters())
    return {"images_per_sec": timed_fit(model, args), "params": parameters}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", nargs="+", default=["32-true", "bf16-mixed"])
    parser.add_argument("--backbone", choices=list(BACKBONES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.backbone:
        args.precision = args.precision[-1]
        report_result(run(args))
        return
    rows = []
    for precision in args.precision:
        for backbone in BACKBONES:
            command = [sys.executable, __file__, *sys.argv[1:], "--backbone", backbone]
            command += ["--precision", precision]
            rows.append((backbone, precision, child_result(command, backbone)))
            print(backbone, precision, rows[-1][2], flush=True)
    print(f"\nMoCo v2, batch {args.batch}, {args.device}\n")
    print("| backbone | parameters | precision | images/s | ratio to ResNet-18 |")
    print("| --- | --- | --- | --- | --- |")
    for backbone, precision, result in rows:
        base = next(r[2] for r in rows if r[1] == precision)["images_per_sec"]
        print(
            f"| {backbone} | {result['params'] / 1e6:.1f} M | {precision} | "
            f"{result['images_per_sec']:.1f} | {result['images_per_sec'] / base:.2f}x |"
        )


if __name__ == "__main__":
    main()
