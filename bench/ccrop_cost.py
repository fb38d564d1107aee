"""What ContrastiveCrop costs: the localisation pass as a share of training time, and the crop
sampler's throughput against RandomResizedCrop.

Part 1 times one localisation pass (``ContrastiveMethod.localize``: eval-mode feature maps of
whole images, heatmap, box, gathered store) and training steps of the same model (views,
forward, backward, SGD step) on real CIFAR-10, then extrapolates both linearly to the 50,000
training images and to the paper's schedule (500 epochs, passes before epochs 100, 200, 300,
400). Part 2 draws one epoch of crop boxes three ways: RandomResizedCrop boxes (ours, batched),
center-suppressed boxes (ours, batched) and torchvision's ``RandomResizedCrop.get_params`` one
image at a time (how data-loader pipelines, the authors' included, draw them).

    python bench/ccrop_cost.py --data ../shared/data [--images 5120 --steps 4 --batch 256]
"""

from __future__ import annotations

import argparse
import time

import torch
import torchvision

from contrastlab.data.readers import read_cifar
from contrastlab.methods import SimCLR
from contrastlab.views import ContrastiveCrop, center_suppressed_boxes, random_resized_boxes

CIFAR_TRAIN = 50_000


def seconds(fn, repeats: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def localisation_share(images: torch.Tensor, steps: int, batch: int, eval_batch: int) -> dict:
    torch.manual_seed(0)
    model = SimCLR(crop=ContrastiveCrop(), channels_last=True)
    model.to(memory_format=torch.channels_last)
    model.crop.reset(len(images))
    indices = torch.arange(len(images))
    batches = [
        (images[i : i + eval_batch], indices[i : i + eval_batch])
        for i in range(0, len(images), eval_batch)
    ]
    model.localize(batches[:1])  # warm-up
    per_pass = seconds(lambda: model.localize(batches)) * CIFAR_TRAIN / len(images)

    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.train()

    def step(i: int) -> None:
        rows = indices[(i * batch) % len(images) :][:batch]
        views = [model._layout(v) for v in model.views(images[rows], rows)]
        loss = model.contrastive_loss(views, rows, rows)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step(0)  # warm-up
    start = time.perf_counter()
    for i in range(steps):
        step(i + 1)
    per_image = (time.perf_counter() - start) / (steps * batch)
    epoch = per_image * CIFAR_TRAIN
    crop = ContrastiveCrop(warmup_epochs=100, interval=100)
    passes = sum(crop.localization_due(e) for e in range(500))
    share = passes * per_pass / (500 * epoch + passes * per_pass)
    return {"pass_s": per_pass, "epoch_s": epoch, "passes": passes, "share": share}


def sampler_rates(n: int, size: tuple[int, int]) -> dict[str, float]:
    generator = torch.Generator().manual_seed(0)
    corner = torch.rand(n, 2, generator=generator) * 0.5
    boxes = torch.cat([corner, corner + 0.5], dim=1)
    rrc = seconds(lambda: random_resized_boxes(n, size, (0.2, 1.0), (3 / 4, 4 / 3), generator), 3)
    ccrop = seconds(lambda: center_suppressed_boxes(boxes, size, generator=generator), 3)
    image = torch.zeros(3, *size)
    get_params = torchvision.transforms.RandomResizedCrop.get_params
    loop = seconds(lambda: [get_params(image, [0.2, 1.0], [3 / 4, 4 / 3]) for _ in range(n)])
    return {"rrc": n / rrc, "ccrop": n / ccrop, "torchvision": n / loop}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="folder holding cifar-10-batches-py")
    parser.add_argument("--images", type=int, default=5120, help="images in the timed pass")
    parser.add_argument("--steps", type=int, default=4, help="timed training steps")
    parser.add_argument("--batch", type=int, default=256, help="training batch")
    parser.add_argument("--eval-batch", type=int, default=512, help="localisation batch")
    args = parser.parse_args()
    torch.set_grad_enabled(True)
    images = read_cifar(args.data, "cifar10", "train").images[: args.images]
    cost = localisation_share(images, args.steps, args.batch, args.eval_batch)
    rates = sampler_rates(CIFAR_TRAIN, (32, 32))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("\n| quantity (SimCLR, ResNet-18 CIFAR stem, CIFAR-10, 50,000 images) | value |")
    print("| --- | --- |")
    print(f"| one localisation pass | {cost['pass_s']:.1f} s |")
    print(f"| one training epoch | {cost['epoch_s']:.1f} s |")
    print(f"| one pass / one epoch | {100 * cost['pass_s'] / cost['epoch_s']:.2f}% |")
    print(f"| passes in 500 epochs (warm-up 100, interval 100) | {cost['passes']} |")
    print(f"| localisation share of total training time | {100 * cost['share']:.3f}% |")
    print("\n| crop sampler, 50,000 boxes in 32x32 images | boxes/s | vs our RandomResizedCrop |")
    print("| --- | --- | --- |")
    for name, key in (
        ("RandomResizedCrop boxes, batched (contrastlab)", "rrc"),
        ("center-suppressed boxes, batched (contrastlab)", "ccrop"),
        ("torchvision RandomResizedCrop.get_params, per image", "torchvision"),
    ):
        print(f"| {name} | {rates[key]:,.0f} | {rates[key] / rates['rrc']:.2f}x |")


if __name__ == "__main__":
    main()
