"""Pretraining throughput of MoCo v2 on real CIFAR-10: contrastlab against lightly's recipe.

Both sides train the same network (ResNet-18, CIFAR stem unless --torchvision-stem, MLP head
512-512-128), batch, queue (4096 keys) and temperature, for --warmup + --steps optimiser steps;
images/s is measured over the last --steps steps, peak memory over the whole run. Each side runs
in its own process so that memory figures do not mix.

    python bench/throughput.py --data ../shared/data --batch 256 --steps 8 --warmup 2

contrastlab: uint8 CIFAR in memory, views sampled in batches on the device, channels-last,
the Lightning trainer. lightly: its documented CIFAR-10 MoCo pipeline, torchvision CIFAR10 with
PIL transforms (``MoCoV2Transform``) in DataLoader workers, ``NTXentLoss`` with a memory bank,
``update_momentum``, in a plain PyTorch loop as in its ``examples/pytorch/moco.py``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + children) / 1024


class Clock:
    """Wall time of the steps after the warm-up ones (synchronising the device)."""

    def __init__(self, warmup: int, device: torch.device) -> None:
        self.warmup, self.device, self.step, self.start = warmup, device, 0, 0.0

    def tick(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.step += 1
        if self.step == self.warmup:
            self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def timed_fit(model, args: argparse.Namespace) -> float:
    """Images/s of ``model`` trained by Lightning on real CIFAR-10 at ``args.batch`` for
    ``args.warmup + args.steps`` steps, timed over the last ``args.steps``."""
    import lightning.pytorch as pl

    from contrastlab.data.module import ContrastDataModule

    device = torch.device(args.device)
    clock = Clock(args.warmup, device)

    class Timer(pl.Callback):
        def on_train_batch_end(self, *unused) -> None:
            clock.tick()

    data = ContrastDataModule(
        "cifar10", root=args.data, batch_size=args.batch, on_device=device.type == "cuda"
    )
    trainer = pl.Trainer(
        accelerator=device.type,
        devices=1,
        max_steps=args.warmup + args.steps,
        limit_val_batches=0,
        precision=args.precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Timer()],
        use_distributed_sampler=False,
    )
    trainer.fit(model, data)
    return args.steps * args.batch / clock.elapsed()


def run_contrastlab(args: argparse.Namespace) -> dict:
    import lightning.pytorch as pl

    from contrastlab.methods import MoCoV2

    pl.seed_everything(0)
    model = MoCoV2(
        cifar_stem=not args.torchvision_stem,
        queue_size=4096,
        temperature=0.1,
        momentum=0.99,
        bn_splits=args.bn_splits,
        channels_last=True,
    )
    return {"images_per_sec": timed_fit(model, args)}


def run_lightly(args: argparse.Namespace) -> dict:
    import copy

    import torchvision
    from lightly.loss import NTXentLoss
    from lightly.models.modules import MoCoProjectionHead
    from lightly.models.utils import deactivate_requires_grad, update_momentum
    from lightly.transforms.moco_transform import MoCoV2Transform
    from torchvision.datasets import CIFAR10

    class CIFAR10Offline(CIFAR10):
        def _check_integrity(self) -> bool:  # shared/data: md5s differ (no 'filenames' key)
            return True

    device = torch.device(args.device)
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18()
    if not args.torchvision_stem:
        resnet.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        resnet.maxpool = torch.nn.Identity()
    backbone = torch.nn.Sequential(*list(resnet.children())[:-1])
    head = MoCoProjectionHead(512, 512, 128)
    key_backbone, key_head = copy.deepcopy(backbone), copy.deepcopy(head)
    deactivate_requires_grad(key_backbone)
    deactivate_requires_grad(key_head)
    for module in (backbone, head, key_backbone, key_head):
        module.to(device)
    transform = MoCoV2Transform(input_size=32, gaussian_blur=0.0)
    dataset = CIFAR10Offline(args.data, train=True, download=False, transform=transform)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=args.batch,
        shuffle=True,
        drop_last=True,
        num_workers=args.workers,
        persistent_workers=True,
    )
    criterion = NTXentLoss(temperature=0.1, memory_bank_size=(4096, 128))
    params = [*backbone.parameters(), *head.parameters()]
    optimizer = torch.optim.SGD(params, lr=0.06, momentum=0.9, weight_decay=5e-4)
    clock = Clock(args.warmup, device)
    autocast = torch.autocast(
        device.type, dtype=torch.bfloat16, enabled=args.precision.startswith("bf16")
    )
    for step, ((x_query, x_key), _) in enumerate(loader):
        if step == args.warmup + args.steps:
            break
        x_query, x_key = x_query.to(device), x_key.to(device)
        update_momentum(backbone, key_backbone, m=0.99)
        update_momentum(head, key_head, m=0.99)
        with autocast:
            query = head(backbone(x_query).flatten(start_dim=1))
            with torch.no_grad():
                key = key_head(key_backbone(x_key).flatten(start_dim=1))
        loss = criterion(query.float(), key.float())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        clock.tick()
    return {"images_per_sec": args.steps * args.batch / clock.elapsed()}


def report_result(result: dict) -> None:
    """A child process's answer to :func:`child_result` (one ``RESULT <json>`` line)."""
    print("RESULT " + json.dumps(result), flush=True)


def child_result(command: list[str], name: str) -> dict:
    """Run one benchmark variant in its own process; its :func:`report_result` dict."""
    done = subprocess.run(command, capture_output=True, text=True)
    line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
    if done.returncode or not line:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    return json.loads(line[0][len("RESULT ") :])


def child(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    args.precision = args.precision[-1]
    result = (run_contrastlab if args.side == "contrastlab" else run_lightly)(args)
    result["peak_memory_mb"] = peak_memory_mb(torch.device(args.device))
    report_result(result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="lightly's data-loader workers")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--bn-splits", type=int, default=8)
    parser.add_argument("--torchvision-stem", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", nargs="+", default=["32-true"])
    parser.add_argument("--side", choices=["contrastlab", "lightly"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        child(args)
        return
    rows = []
    for precision in args.precision:
        for side in ("lightly", "contrastlab"):
            command = [
                sys.executable,
                __file__,
                *sys.argv[1:],
                "--side",
                side,
                "--precision",
                precision,
            ]
            rows.append((side, precision, child_result(command, side)))
            print(side, precision, rows[-1][2], flush=True)
    print("\n| side | precision | images/s | peak memory (MiB) | ratio to lightly fp32 |")
    print("| --- | --- | --- | --- | --- |")
    base = next(r[2]["images_per_sec"] for r in rows if r[0] == "lightly")
    for side, precision, result in rows:
        print(
            f"| {side} | {precision} | {result['images_per_sec']:.1f} | "
            f"{result['peak_memory_mb']:.0f} | {result['images_per_sec'] / base:.2f}x |"
        )


if __name__ == "__main__":
    main()
