"""Cost of SynCo's synthetic negatives as a share of a MoCo v2 training step.

A MoCo v2 step (CIFAR ResNet-18, SplitBN 8, batch --batch, views included, forward + backward +
SGD) is timed once per queue size without synthetics; then, on the same q and queue, the
synthesis alone (pool top-N, draws, logits, and their backward into q) for contrastlab's
closed-form path and for a straightforward materialising implementation (build every
(B, n_syn, d) synthetic, then q . s), as in the authors' release. Reported: milliseconds and
share of the step.

    python bench/synthesis_overhead.py --batch 256 --queues 4096 65536
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.nn import functional as F

from contrastlab.methods import MoCoV2
from contrastlab.negatives import SyntheticNegatives


def timed(fn, repeats: int, device: torch.device) -> float:
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def moco_step_seconds(batch: int, queue: int, device: torch.device, repeats: int) -> float:
    model = MoCoV2(queue_size=queue, bn_splits=8).to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.06, momentum=0.9, weight_decay=5e-4)
    images = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8, device=device)
    indices = torch.arange(batch, device=device)
    labels = torch.zeros(batch, dtype=torch.long, device=device)

    def step() -> None:
        views = [
            v.contiguous(memory_format=torch.channels_last) for v in model.views(images, indices)
        ]
        model.momentum_update()
        loss = model.contrastive_loss(views, indices, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    model.log = lambda *args, **kwargs: None  # no trainer attached
    return timed(step, repeats, device)


def synthesis_seconds(
    batch: int, queue: int, device: torch.device, repeats: int, materialise: bool
) -> float:
    synth = SyntheticNegatives.synco()
    q = F.normalize(torch.randn(batch, 128, device=device), dim=1).requires_grad_(True)
    bank = F.normalize(torch.randn(queue, 128, device=device), dim=1)
    bank_logits = (q @ bank.T).detach().requires_grad_(True)  # the step has these already

    def fast() -> None:
        synth(q, bank, bank_logits=bank_logits).sum().backward()

    def slow() -> None:
        vectors = synth.materialize(q, bank, bank_logits=bank_logits)
        (vectors * q[:, None]).sum(-1).sum().backward()

    return timed(slow if materialise else fast, repeats, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--queues", type=int, nargs="+", default=[4096, 65536])
    parser.add_argument("--step-repeats", type=int, default=2)
    parser.add_argument("--synthesis-repeats", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(
        "| queue | MoCo v2 step (ms) | synthesis, closed form (ms) | share | "
        "synthesis, materialised (ms) | share | speed-up |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for queue in args.queues:
        step = moco_step_seconds(args.batch, queue, device, args.step_repeats)
        fast = synthesis_seconds(args.batch, queue, device, args.synthesis_repeats, False)
        slow = synthesis_seconds(args.batch, queue, device, args.synthesis_repeats, True)
        print(
            f"| {queue} | {step * 1e3:.0f} | {fast * 1e3:.1f} | {100 * fast / step:.2f}% | "
            f"{slow * 1e3:.1f} | {100 * slow / step:.2f}% | {slow / fast:.1f}x |",
            flush=True,
        )


if __name__ == "__main__":
    main()
