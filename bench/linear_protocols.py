"""Fast linear probe (cached features) next to the paper protocol (augmented images every
epoch) on one checkpoint: accuracy and wall time, feature extraction included.

    python bench/linear_protocols.py CHECKPOINT [--paper-epochs 10] [--fast-epochs 100]
"""

from __future__ import annotations

import argparse
import shutil
import time

import torch

from contrastlab.app.evaluate import linear_probe
from contrastlab.eval.features import default_cache_dir


def timed(**kwargs) -> tuple[object, float]:
    start = time.perf_counter()
    result = linear_probe(**kwargs)
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--fast-epochs", type=int, default=100)
    parser.add_argument("--paper-epochs", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    shutil.rmtree(default_cache_dir(args.checkpoint), ignore_errors=True)  # time the extraction
    rows = []
    common = {"path": args.checkpoint, "device": args.device}
    for mode, epochs, lr, note in (
        ("fast", args.fast_epochs, 1.0, "features extracted and cached"),
        ("fast", args.fast_epochs, 1.0, "cached features"),
        ("fast", args.paper_epochs, 1.0, "cached features, the paper run's epochs"),
        ("paper", args.paper_epochs, 10.0, "augmented images every epoch, the protocol's lr"),
        ("paper", args.paper_epochs, 1.0, "augmented images every epoch, the fast mode's lr"),
    ):
        result, wall = timed(mode=mode, epochs=epochs, lr=lr, **common)
        rows.append((mode, epochs, lr, note, result, wall))
        print(result.summary(), flush=True)
    print(f"\ntorch {torch.__version__}, device {args.device}, {torch.get_num_threads()} threads")
    header = (
        "mode | epochs | lr | top-1 (last epoch) | top-5 | best top-1 (extra) | wall (s) | note"
    )
    print(f"\n| {header} |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for mode, epochs, lr, note, r, wall in rows:
        print(
            f"| {mode} | {epochs} | {lr:g} | {r.top1:.2f} | {r.top5:.2f} | "
            f"{r.best_top1:.2f} (epoch {r.best_epoch}) | {wall:.1f} | {note} |"
        )


if __name__ == "__main__":
    main()
