"""Kill a real ``contrastlab fit`` process at seeded random moments and resume it each time.

Used by ``tests/test_crashproof.py`` (a few kills, in CI) and ``bench/kill_resume.py`` (many
kills, for the figures in ``bench/RESULTS.md``). Each kill is one of three moments:

- ``mid-step``: one to three steps on, plus a random fraction of a step;
- ``mid-write``: while a checkpoint is being written (its temporary file exists);
- ``epoch-boundary``: right after an epoch's summary row reaches ``metrics.csv``, when the
  epoch-end checkpoint is being written.

After each SIGKILL the harness checks that ``last.ckpt`` (if any) loads, counts the steps lost
(steps done, from the write-through ``metrics.csv``, minus the checkpoint's step) and resumes
with ``--resume``. The final state is compared with an uninterrupted run.
"""

from __future__ import annotations

import csv
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from conftest import tiny_moco_fit

from contrastlab.runs.resume import load_checkpoint_file

KINDS = ("mid-step", "mid-write", "epoch-boundary")


def fit_command(run_dir: Path, data_root: Path, *extra: str) -> list[str]:
    """:func:`fit_arguments` as a ``python -m contrastlab`` command."""
    return [sys.executable, "-m", "contrastlab", *fit_arguments(run_dir, data_root, *extra)]


def fit_arguments(run_dir: Path, data_root: Path, *extra: str) -> list[str]:
    """A tiny MoCo v2 run: 100 images, batches of 16 (6 steps an epoch), 3 epochs with kNN after
    each, a step checkpoint every 2 steps, every step logged, fp32 (bit-exact on the CPU)."""
    return tiny_moco_fit(
        run_dir,
        data_root,
        3,
        "--trainer.check_val_every_n_epoch",
        "1",
        "--trainer.precision",
        "32-true",
        "--checkpoint.every_n_steps",
        "2",
        *extra,
    )


def kill_at_first_checkpoint(args: list[str], run_dir: Path, log: Path) -> dict:
    """Run ``contrastlab *args`` in a process, SIGKILL it as soon as its first ``last.ckpt``
    exists (mid-run: no handler runs) and return that checkpoint. The process gets as many
    threads as this one, so that fp32 sums agree to the last bit with a run made here."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(torch.get_num_threads())}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "contrastlab", *args], stdout=out, stderr=out, env=env
        )
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not last.is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, log.read_text()[-2000:]
    return load_checkpoint_file(last)


def start(command: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("ab") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)


def metric_rows(run_dir: Path) -> list[dict[str, str]]:
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return []
    text = path.read_text()
    text = text[: text.rfind("\n") + 1]  # a kill can cut the last line
    return [r for r in csv.DictReader(text.splitlines()) if None not in r.values()]


def steps_done(run_dir: Path) -> int:
    """Optimiser steps finished, from the last logged step row (``step`` counts from 0)."""
    steps = [int(r["step"]) for r in metric_rows(run_dir) if r.get("train/loss_step")]
    return max(steps) + 1 if steps else 0


def epochs_logged(run_dir: Path) -> int:
    return sum(1 for r in metric_rows(run_dir) if r.get("train/loss_epoch"))


def temporaries(run_dir: Path) -> list[Path]:
    return list((run_dir / "checkpoints").glob(".*.tmp")) + list(run_dir.glob(".*.tmp"))


def wait_until(process: subprocess.Popen, ready, timeout: float = 120.0) -> bool:
    """Poll ``ready()`` every 2 ms; ``False`` if the process ended (or time ran out) first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.002)
    return False


@dataclass
class Kill:
    kind: str
    steps_done: int
    checkpoint_step: int | None
    corrupt: bool
    temporaries_left: int

    @property
    def steps_lost(self) -> int:
        return self.steps_done - (self.checkpoint_step or 0)


@dataclass
class Campaign:
    kills: list[Kill] = field(default_factory=list)
    resumes: int = 0
    finished: bool = False
    stale_temporaries_after_resume: int = 0


def kill_campaign(
    run_dir: Path,
    data_root: Path,
    kills: int,
    seed: int,
    max_delay: float = 0.3,
    extra: tuple[str, ...] = (),
    log=None,
) -> Campaign:
    """SIGKILL the run ``kills`` times at seeded moments, resuming after each, then let it
    finish. ``max_delay`` bounds the random ``mid-step`` delay (seconds after a step);
    ``extra`` options go to every ``fit`` (e.g. more epochs)."""
    rng = random.Random(seed)
    log_file = run_dir.parent / f"{run_dir.name}.log"
    campaign = Campaign()
    command = fit_command(run_dir, data_root, *extra, "--resume")
    for _ in range(kills):
        kind = rng.choice(KINDS)
        process = start(command, log_file)
        campaign.resumes += 1
        if not _reach(kind, process, run_dir, rng, max_delay):
            process.wait()
            break
        process.send_signal(signal.SIGKILL)
        process.wait()
        kill = _inspect(kind, run_dir)
        campaign.kills.append(kill)
        if log is not None:
            log(kill)
    process = start(command, log_file)
    campaign.resumes += 1
    process.wait()
    campaign.finished = process.returncode == 0
    campaign.stale_temporaries_after_resume = len(temporaries(run_dir))
    return campaign


def _reach(kind: str, process, run_dir: Path, rng: random.Random, max_delay: float) -> bool:
    if kind == "mid-write":  # during the 1st, 2nd or 3rd checkpoint write of this start
        seen: set[Path] = set()
        target = rng.randint(1, 3)

        def writing_target() -> bool:
            now = set((run_dir / "checkpoints").glob(".*.tmp"))
            seen.update(now)
            return len(seen) >= target and bool(now)

        return wait_until(process, writing_target)
    if kind == "epoch-boundary":
        logged = epochs_logged(run_dir)
        return wait_until(process, lambda: epochs_logged(run_dir) > logged)
    target = steps_done(run_dir) + rng.randint(1, 3)  # mid-step: a few steps on, then
    if not wait_until(process, lambda: steps_done(run_dir) >= target):
        return False
    time.sleep(rng.uniform(0.0, max_delay))  # a random part of the next step
    return process.poll() is None


def _inspect(kind: str, run_dir: Path) -> Kill:
    path = run_dir / "checkpoints" / "last.ckpt"
    step, corrupt = None, False
    if path.exists():
        try:
            step = int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])
        except Exception:
            corrupt = True
    return Kill(kind, steps_done(run_dir), step, corrupt, len(temporaries(run_dir)))
