"""Kill a tiny real training run with SIGKILL many times at seeded random moments, resume it
each time, and report what survived (the figures of bench/RESULTS.md).

    python bench/kill_resume.py --kills 24 --seed 0 [--data DIR] [--out bench/out/kills]

Writes a tiny CIFAR-10 in the official format unless ``--data`` is given, runs the reference
(uninterrupted) and the killed run with the same command (``tests/kill_harness.py``), then
prints a markdown table: kills by moment, corrupt checkpoints, steps lost per kill, temporaries
left, and whether the final state and metrics.csv equal the uninterrupted run's.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from conftest import write_cifar
from kill_harness import fit_command, kill_campaign
from test_crashproof import assert_same_state, same_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=None, help="CIFAR-10 root (default: tiny)")
    parser.add_argument("--out", type=Path, default=Path("bench/out/kills"))
    parser.add_argument("--max-delay", type=float, default=0.3, help="mid-step: s after a step")
    parser.add_argument("--epochs", type=int, default=16, help="epochs of the tiny run (6 steps)")
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    data = args.data or args.out / "data"
    if args.data is None:
        write_cifar(data, structured=True)
    reference = args.out / "straight"
    started = time.perf_counter()
    extra = ("--trainer.max_epochs", str(args.epochs))
    subprocess.run(fit_command(reference, data, *extra), check=True, capture_output=True)
    print(f"uninterrupted run: {time.perf_counter() - started:.1f} s", flush=True)

    def show(kill) -> None:
        print(
            f"  {kill.kind:15s} steps done {kill.steps_done:3d}, checkpoint at "
            f"{kill.checkpoint_step}, lost {kill.steps_lost}, corrupt {kill.corrupt}, "
            f"temporaries {kill.temporaries_left}",
            flush=True,
        )

    killed = args.out / "killed"
    campaign = kill_campaign(killed, data, args.kills, args.seed, args.max_delay, extra, show)
    last = "checkpoints/last.ckpt"
    try:
        assert_same_state(reference / last, killed / last)
        state = "bit-identical"
    except AssertionError as error:
        state = f"DIFFERENT ({error})"
    try:
        same_rows(reference, killed)
        record = "identical (every step and epoch once)"
    except AssertionError:
        record = "DIFFERENT"
    lost = [k.steps_lost for k in campaign.kills]
    kinds = Counter(k.kind for k in campaign.kills)
    left = sum(k.temporaries_left > 0 for k in campaign.kills)
    rows = [
        ("kills (SIGKILL)", f"{len(lost)}: " + ", ".join(f"{n} {k}" for k, n in kinds.items())),
        ("resumes", f"{campaign.resumes} (the last ran to the end: {campaign.finished})"),
        ("corrupt checkpoints after a kill", str(sum(k.corrupt for k in campaign.kills))),
        (
            "steps lost per kill (checkpoint every 2 steps)",
            f"max {max(lost, default=0)}, mean {statistics.mean(lost) if lost else 0:.2f}",
        ),
        (
            "kills that left a temporary / temporaries after the final resume",
            f"{left} / {campaign.stale_temporaries_after_resume}",
        ),
        ("final weights, optimiser, queue, RNG vs uninterrupted", state),
        ("metrics.csv vs uninterrupted", record),
    ]
    print("\n| what | value |\n| --- | --- |")
    for what, value in rows:
        print(f"| {what} | {value} |")


if __name__ == "__main__":
    main()
