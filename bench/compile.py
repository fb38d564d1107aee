"""Training throughput of MoCo v2 (CIFAR-stem ResNet-18, real CIFAR-10) eager against
``--model.compile`` (torch.compile of the step's networks), in one run, each variant in its own
process; images/s over the last --steps steps after --warmup steps (the compilation happens in
the warm-up, whose wall time is printed too).

    python bench/compile.py --data ../shared/data --batch 128 --steps 6 --warmup 3 \
        --precision bf16-mixed
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from throughput import child_result, report_result, timed_fit

VARIANTS = {
    "eager": {},
    "compile, inductor": {"compile": True, "compile_backend": "inductor"},
}


def run(args: argparse.Namespace) -> dict:
    import lightning.pytorch as pl

    from contrastlab.methods import MoCoV2

    pl.seed_everything(0)
    model = MoCoV2(queue_size=4096, bn_splits=8, **VARIANTS[args.variant])
    start = time.perf_counter()
    rate = timed_fit(model, args)
    return {"images_per_sec": rate, "wall_s": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="bf16-mixed")
    parser.add_argument("--variant", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        report_result(run(args))
        return
    rows = {}
    for variant in VARIANTS:
        command = [sys.executable, __file__, *sys.argv[1:], "--variant", variant]
        rows[variant] = child_result(command, variant)
        print(variant, rows[variant], flush=True)
    base = rows["eager"]["images_per_sec"]
    print(f"\nMoCo v2, batch {args.batch}, {args.precision}, {args.device}\n")
    print("| variant | images/s | ratio to eager | wall time of the whole fit (s) |")
    print("| --- | --- | --- | --- |")
    for variant, result in rows.items():
        rate = result["images_per_sec"]
        print(f"| {variant} | {rate:.1f} | {rate / base:.2f}x | {result['wall_s']:.0f} |")


if __name__ == "__main__":
    main()
