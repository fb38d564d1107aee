"""The learning-regression tests' margins: each recipe of ``tests/learning.py`` over several
seeds (its kNN gain over its own untrained encoder) and once broken (the variant its test must
catch, and any it is known not to). Prints a markdown table for bench/RESULTS.md.

    python bench/learning_margins.py --data ../shared/data --seeds 0 1 2 [--only mocov2 byol]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from learning import BROKEN, RECIPES, STEPS, knn_gain


def margin_text(name: str) -> str:
    margin = RECIPES[name].margin
    return "not pinned" if margin is None else f"{margin:+.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="CIFAR-10 root")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", nargs="+", default=list(RECIPES))
    parser.add_argument("--out", type=Path, default=Path("bench/out/learning"))
    parser.add_argument("--no-broken", action="store_true", help="skip the broken variants")
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    rows = []
    for name in args.only:
        gains, seconds = [], []
        for seed in args.seeds:
            start = time.perf_counter()
            untrained, trained = knn_gain(name, args.data, args.out / f"{name}_{seed}", seed)
            seconds.append(time.perf_counter() - start)
            gains.append(trained - untrained)
            print(f"{name} seed {seed}: {untrained:.2f} -> {trained:.2f}", flush=True)
        broken = []
        for number, (what, patch) in enumerate([] if args.no_broken else BROKEN[name]):
            with patch():
                run_dir = args.out / f"{name}_broken{number}"
                untrained, trained = knn_gain(name, args.data, run_dir)
            broken.append(f"{what}: {trained - untrained:+.2f}")
            print(f"{name} broken ({what}): {untrained:.2f} -> {trained:.2f}", flush=True)
        spread = f"{min(gains):+.2f} .. {max(gains):+.2f}"
        sd = statistics.stdev(gains) if len(gains) > 1 else 0.0
        rows.append(
            f"| {name} | {' '.join(f'{g:+.2f}' for g in gains)} | {spread} | "
            f"{statistics.mean(gains):+.2f} ± {sd:.2f} | {margin_text(name)} | "
            f"{'; '.join(broken)} | {statistics.mean(seconds):.0f} |"
        )
    print(f"\n{STEPS} steps each, seeds {args.seeds}\n")
    print("| recipe | gain per seed | range | mean ± sd | pinned margin | broken: gain | s/run |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
