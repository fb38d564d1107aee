"""MoCo v2 with SynCo negatives and ContrastiveCrop views in a plain PyTorch loop (no Lightning).

Every contrastlab piece used here is plain PyTorch: the view sampler with its ContrastiveCrop box
store, the key queue, the synthetic negatives, the losses, the backbone.

    python examples/plain_loop.py --data ../shared/data --images 2560 --epochs 3   # ~4 min, 2 CPUs
    python examples/plain_loop.py --random --images 64 --epochs 2 --size 16   # no dataset
"""

from __future__ import annotations

import argparse

import torch
from torch.nn import functional as F

from contrastlab.data.readers import read_cifar
from contrastlab.models import ResNetBackbone, mlp_head
from contrastlab.models.momentum import frozen_copy, momentum_update
from contrastlab.negatives import KeyQueue, SyntheticNegatives, infonce_logits, infonce_loss
from contrastlab.views import Augment, ContrastiveCrop, ViewSampler, localize_boxes
from contrastlab.views.augment import whole_view


def load_images(args: argparse.Namespace) -> torch.Tensor:
    if args.random:
        generator = torch.Generator().manual_seed(0)
        return torch.randint(0, 256, (args.images, 3, 32, 32), generator=generator).byte()
    return read_cifar(args.data, "cifar10", "train").images[: args.images]


@torch.no_grad()
def relocalize(encoder, images, crop: ContrastiveCrop, augment: Augment, batch: int) -> None:
    """Every image's box from the encoder's last feature map (eval mode, whole images)."""
    encoder.eval()
    for start in range(0, len(images), batch):
        chunk = images[start : start + batch]
        maps = encoder.feature_map(whole_view(chunk, augment))
        indices = torch.arange(start, start + len(chunk))
        crop.update(indices, localize_boxes(maps, chunk.shape[-2:], crop.threshold))
    encoder.train()


def train(args: argparse.Namespace) -> list[float]:
    torch.manual_seed(0)
    images = load_images(args)
    augment = Augment(size=args.size)
    encoder = ResNetBackbone("resnet18", cifar_stem=True, bn_splits=2)  # 4x4 maps at 32 px
    head = mlp_head(encoder.feature_dim, 512, 128)
    key_encoder, key_head = frozen_copy(encoder), frozen_copy(head)
    crop = ContrastiveCrop(alpha=0.1, threshold=0.1, warmup_epochs=1, interval=1)
    crop.reset(len(images))
    views = ViewSampler([augment, augment], box_sampler=crop, seed=0)
    queue = KeyQueue(size=args.queue, dim=128)
    synthetic = SyntheticNegatives.synco(n_hard=min(1024, args.queue))
    parameters = [*encoder.parameters(), *head.parameters()]
    optimizer = torch.optim.SGD(parameters, lr=0.06, momentum=0.9, weight_decay=5e-4)
    losses = []
    for epoch in range(args.epochs):
        if crop.localization_due(epoch):
            relocalize(encoder, images, crop, augment, batch=256)
        crop.start_if_due(epoch)  # RandomResizedCrop until the warm-up is over
        order = torch.randperm(len(images))
        for start in range(0, len(images) - args.batch + 1, args.batch):
            indices = order[start : start + args.batch]
            x1, x2 = views(images[indices], indices)
            q = F.normalize(head(encoder(x1)), dim=1)
            with torch.no_grad():
                momentum_update(encoder, key_encoder, 0.99)
                momentum_update(head, key_head, 0.99)
                k = F.normalize(key_head(key_encoder(x2)), dim=1)
            bank = queue.keys.clone()
            bank_logits = q @ bank.T
            same_image = indices[:, None] == queue.indices[None, :]
            extra = synthetic(q, bank, bank_logits=bank_logits, exclude=same_image)
            logits = infonce_logits(q, k, negative_logits=bank_logits, extra_negative_logits=extra)
            loss = infonce_loss(logits, temperature=0.2)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            queue.push(k, indices)  # one enqueue per step, after the loss
            losses.append(loss.item())
        print(f"epoch {epoch}: loss {losses[-1]:.3f}, ContrastiveCrop active {bool(crop.active)}")
    return losses


def main(argv: list[str] | None = None) -> list[float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data", help="folder with cifar-10-batches-py")
    parser.add_argument("--random", action="store_true", help="random images instead of CIFAR-10")
    parser.add_argument("--images", type=int, default=5120)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--queue", type=int, default=4096)
    parser.add_argument("--size", type=int, default=32, help="view size")
    return train(parser.parse_args(argv))


if __name__ == "__main__":
    main()
