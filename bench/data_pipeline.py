"""Photo-folder input pipeline, one CPU core: the papers' reference loader against contrastlab's.

Each variant turns the same JPEG files into the inputs of two 224-px views, in one process, one
thread (a data-loader worker's share of the machine), and reports images/s per core. Rounds
alternate between the variants so that a drifting clock speed (a shared cloud core can swing by
a third within seconds) hits them alike; the tables give each variant's median round and the
median of the per-round ratios, each ratio taken between runs a second apart.

    python bench/data_pipeline.py --photos ../shared/data/photos --rounds 15 --seconds 1

- reference: the MoCo v2 / SynCo / ContrastiveCrop loaders: PIL decode, two torchvision
  ``RandomResizedCrop(224, scale=(0.2, 1))`` on the PIL image, ``pil_to_tensor`` (no colour
  augmentation: the papers add it on the CPU too, so the reference is flattered).
- bare decode: torchvision's ``decode_jpeg`` (libjpeg-turbo) of the whole image, nothing else.
- contrastlab: what a worker does for ``FolderViews``: two RandomResizedCrop boxes drawn on the
  image's own size from the folder index (in the training process, timed here too), the JPEG
  decoded by libjpeg-turbo at the smallest DCT scale that keeps both boxes >= 224 px, straight
  into one packed batch of 32 (no padding copied on the CPU).
  The crops are resized on the device, which this does not time.
- contrastlab squared: the ``working_size 256`` option (decode, resize to a 256 square).
- with ``--device cuda``: also ``decode_on_device`` (the workers read the files, nvJPEG decodes
  each batch of 32 on the GPU and lays it out there), timed end to end in this one process;
  compare it with the contrastlab column times the cores that would feed the GPU.

``--crops`` times the other half instead, the device's: two 224-px views cut out of a packed
batch of 32 and resized, by torchvision's ``roi_align`` (``antialias=False``: a box average of
bilinear samples) and by the anti-aliased resize that matches torchvision's ``resize(...,
antialias=True)`` (the default), on ``--device`` (the CPU's threads when not given).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from PIL import Image
from torchvision.io import decode_jpeg
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms.functional import pil_to_tensor

from contrastlab.data.datasets import FolderViews
from contrastlab.data.decode import image_size
from contrastlab.data.readers import decode_image
from contrastlab.views.crops import crop_and_resize, random_resized_boxes

VIEW, BATCH = 224, 32


def reference(files: list[Path]) -> None:
    crop = RandomResizedCrop(VIEW, scale=(0.2, 1.0))
    for path in files:
        with Image.open(path) as image:
            image = image.convert("RGB")
            pil_to_tensor(crop(image)), pil_to_tensor(crop(image))


def bare_decode(files: list[Path]) -> None:
    for path in files:
        decode_jpeg(torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8))


def ours(dataset: FolderViews, generator: torch.Generator) -> None:
    files, sizes = dataset.files, dataset.sizes
    for start in range(0, len(files), BATCH):
        rows = torch.arange(start, min(start + BATCH, len(files)))
        boxes = torch.stack(
            [random_resized_boxes(len(rows), sizes[rows], (0.2, 1.0), (3 / 4, 4 / 3), generator)]
            * 2
        )
        dataset.__getitems__([(int(i), boxes[:, j], VIEW) for j, i in enumerate(rows)])


def on_device(dataset: FolderViews, generator: torch.Generator, device: torch.device) -> None:
    files, sizes = dataset.files, dataset.sizes
    for start in range(0, len(files), BATCH):
        rows = torch.arange(start, min(start + BATCH, len(files)))
        boxes = torch.stack(
            [random_resized_boxes(len(rows), sizes[rows], (0.2, 1.0), (3 / 4, 4 / 3), generator)]
            * 2
        )
        batch = dataset.__getitems__([(int(i), boxes[:, j], VIEW) for j, i in enumerate(rows)])
        batch.pixels = batch.pixels.to(device)
        batch.padded()
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def squared(files: list[Path]) -> None:
    for path in files:
        decode_image(path, 256)


def crops(images: torch.Tensor, boxes: torch.Tensor, antialias: bool) -> None:
    for view in boxes:
        crop_and_resize(images, view, VIEW, antialias=antialias)
    if images.device.type == "cuda":
        torch.cuda.synchronize(images.device)


def crop_table(args: argparse.Namespace, generator: torch.Generator) -> None:
    """Images/s of cutting two views out of one decoded batch, each filter in turn."""
    device = torch.device(args.device or "cpu")
    print("| photos | roi_align crops/s | anti-aliased crops/s | anti-aliased / roi_align |"
          "\n|---|---|---|---|")  # fmt: skip
    for folder in sorted(p for p in args.photos.iterdir() if p.is_dir()):
        files = sorted(folder.glob("*.jpg"))[:BATCH]
        dataset = FolderViews(files, None, torch.tensor([image_size(p) for p in files]))
        sizes = dataset.sizes
        boxes = torch.stack(
            [random_resized_boxes(len(files), sizes, (0.2, 1.0), (3 / 4, 4 / 3), generator)] * 2
        )
        batch = dataset.__getitems__([(i, boxes[:, i], VIEW) for i in range(len(files))])
        images = batch.padded().to(device).float().div_(255)
        mapped = batch.boxes.to(device)
        variants = {
            "fast": partial(crops, images, mapped, False),
            "exact": partial(crops, images, mapped, True),
        }
        rates, median = alternate(variants, len(files), args)
        print(
            f"| {folder.name} ({len(files)}, decoded up to {images.shape[-2]}x"
            f"{images.shape[-1]}) | {median['fast']:.0f} | {median['exact']:.0f} "
            f"| {ratio(rates['exact'], rates['fast']):.2f}x |"
        )


def alternate(
    variants: dict[str, Callable[[], None]], count: int, args: argparse.Namespace
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Each variant's rate in every round, the variants alternating within a round (a drifting
    clock hits them alike), and each variant's median round."""
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, run in variants.items():
            rates[name].append(rate(run, count, args.seconds))
    return rates, {name: statistics.median(values) for name, values in rates.items()}


def rate(run: Callable[[], None], count: int, min_seconds: float) -> float:
    start, done = time.perf_counter(), 0
    while True:
        run()
        done += count
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return done / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=Path, default=Path("../shared/data/photos"))
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--seconds", type=float, default=1.0, help="per variant per round")
    parser.add_argument("--device", default=None, help="e.g. cuda: also time nvJPEG decoding")
    parser.add_argument("--crops", action="store_true", help="time the device's crop filters")
    args = parser.parse_args()
    if args.crops:
        return crop_table(args, torch.Generator().manual_seed(0))
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    extra = " decode on device (nvJPEG) |" if args.device else ""
    print("| photos | reference (PIL + 2 RRC) | bare decode_jpeg | contrastlab | "
          f"contrastlab squared 256 | ours / reference | ours / bare decode |{extra}")  # fmt: skip
    print("|---|---|---|---|---|---|---|" + ("---|" if args.device else ""))
    for folder in sorted(p for p in args.photos.iterdir() if p.is_dir()):
        files = sorted(folder.glob("*.jpg"))
        for path in files:  # the page cache holds them all: no variant reads the disk
            path.read_bytes()
        # the sizes come from the folder index, read once before training
        dataset = FolderViews(files, None, torch.tensor([image_size(p) for p in files]))
        variants = {
            "reference": lambda f=files: reference(f),
            "bare": lambda f=files: bare_decode(f),
            "ours": lambda d=dataset: ours(d, generator),
            "squared": lambda f=files: squared(f),
        }
        if args.device:
            encoded = FolderViews(files, None, dataset.sizes, decode_on_device=True)
            device = torch.device(args.device)
            variants["device"] = lambda d=encoded, on=device: on_device(d, generator, on)
        rates, median = alternate(variants, len(files), args)
        print(
            f"| {folder.name} ({len(files)}) | {median['reference']:.0f} | {median['bare']:.0f} "
            f"| {median['ours']:.0f} | {median['squared']:.0f} "
            f"| {ratio(rates['ours'], rates['reference']):.2f}x "
            f"| {ratio(rates['ours'], rates['bare']):.2f}x |"
            + (f" {median['device']:.0f} |" if args.device else "")
        )


def ratio(a: list[float], b: list[float]) -> float:
    """The median of the per-round ratios ``a / b``."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


if __name__ == "__main__":
    main()
