"""Seconds per training iteration of the VOC C4 detector (``contrastlab transfer --task voc-c4``)
on this machine: forward, detectron2's losses, backward and the SGD step, on the tests' scene
devkit (tests/scenes.py: photo-like backgrounds with pasted objects, 96-128 px, upsampled by
the detector's own resize to the configured sizes).

    python bench/transfer_iteration.py --arch resnet18 --batch 2 --sizes 64 80 --roi-batch 16
    python bench/transfer_iteration.py --arch resnet50 --batch 2   # the protocol's settings

Prints one markdown row: the configuration, the mean and spread of the timed iterations, and
the images per second.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from scenes import write_scene_devkit

from contrastlab.transfer.data import DetectionImages, detection_collate
from contrastlab.transfer.detectors import faster_rcnn_c4
from contrastlab.transfer.solver import sgd
from contrastlab.transfer.tasks import VOC_C4, configure
from contrastlab.transfer.voc import TRAIN_SPLITS, read_voc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="480 ... 800")
    parser.add_argument("--roi-batch", type=int, default=None, help="512")
    parser.add_argument("--iterations", type=int, default=5, help="timed, after one warm-up")
    args = parser.parse_args()
    task = configure(
        VOC_C4,
        train_sizes=tuple(args.sizes) if args.sizes else None,
        roi_batch=args.roi_batch,
    )
    torch.manual_seed(0)
    resnet = getattr(torchvision.models, args.arch)(weights=None)
    detector = faster_rcnn_c4(resnet, 20, task.settings).train()
    optimizer = sgd(detector, task.solver, args.batch)
    with tempfile.TemporaryDirectory() as folder:
        devkit = write_scene_devkit(Path(folder), train07=24, train12=8, test=1)
        images = DetectionImages(read_voc(devkit, TRAIN_SPLITS), seed=0)
        batches = [
            detection_collate(
                [images[(i * args.batch + j) % len(images)] for j in range(args.batch)]
            )
            for i in range(args.iterations + 1)
        ]
    seconds = []
    for pictures, targets in batches:
        start = time.perf_counter()
        loss = sum(detector(pictures, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seconds.append(time.perf_counter() - start)
    timed = seconds[1:]
    mean = statistics.mean(timed)
    spread = f"{min(timed):.2f}-{max(timed):.2f}"
    sizes = task.settings.train_sizes
    print(
        f"| {args.arch} | {args.batch} | {sizes[0]}-{sizes[-1]} | {task.settings.roi_batch} | "
        f"{torch.get_num_threads()} | {mean:.2f} ({spread}) | {args.batch / mean:.2f} |"
    )


if __name__ == "__main__":
    main()
