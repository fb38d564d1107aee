"""What the measured precision decision sees: images/s of a forward + backward step in fp32 and
in bf16 autocast, per network and view size, on this machine (no cache read or written).

    python bench/precision_choice.py [--batch 128] [--sizes 32 24 16]
"""

from __future__ import annotations

import argparse

import torch

from contrastlab.models.backbones import ResNetBackbone
from contrastlab.precision import candidates, device_name, images_per_second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 24, 16])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    names = candidates(args.device)
    print(f"{device_name(args.device)}, torch {torch.__version__}, batch {args.batch}\n")
    print(f"| network | view px | {' | '.join(f'{n} img/s' for n in names)} | choice |")
    print("| --- | --- |" + " --- |" * (len(names) + 1))
    for stem, label in ((True, "ResNet-18, CIFAR stem"), (False, "ResNet-18, torchvision stem")):
        network = ResNetBackbone("resnet18", cifar_stem=stem, bn_splits=4)
        for size in args.sizes:
            rates = {
                n: images_per_second(network, n, args.batch, size, args.device, min_seconds=3)
                for n in names
            }
            best = max(rates, key=rates.__getitem__)
            cells = " | ".join(f"{rates[n]:.0f}" for n in names)
            print(f"| {label} | {size} | {cells} | {best} |", flush=True)


if __name__ == "__main__":
    main()
