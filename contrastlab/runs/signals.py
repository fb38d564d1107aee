"""Stop requests by signal: SIGTERM (schedulers, before pre-emption), SIGUSR1 (SLURM's
``--signal=USR1@<seconds>`` warning) and SIGINT (Ctrl-C).

The handler only records the first signal; the training loop finishes its current step,
saves, and exits with ``128 + signal number``. A second SIGINT raises ``KeyboardInterrupt`` at
once, for a user who does not want to wait for the save.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class StopSignals:
    """Installs handlers for :data:`STOP_SIGNALS` (main thread only) and remembers the first
    one received in :attr:`received`; :meth:`restore` puts the previous handlers back."""

    def __init__(self) -> None:
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, object] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # Ctrl-C twice: stop now, without saving
        if self.received is None:
            self.received = signal.Signals(signum)


def exit_code(signum: signal.Signals) -> int:
    """The shell's convention for a process ended by a signal: ``128 + signum``."""
    return 128 + int(signum)


def slurm_job_id() -> str | None:
    """The SLURM batch job this process runs in (``None`` outside SLURM or interactively)."""
    job = os.environ.get("SLURM_JOB_ID")
    if job is None or os.environ.get("SLURM_JOB_NAME") in ("bash", "interactive"):
        return None
    return os.environ.get("SLURM_ARRAY_JOB_ID", job) + (
        f"_{os.environ['SLURM_ARRAY_TASK_ID']}" if "SLURM_ARRAY_TASK_ID" in os.environ else ""
    )


def requeue_slurm_job(job: str) -> str:
    """``scontrol requeue <job>``: SLURM starts the job script again, which resumes with
    ``--resume``. Returns what happened, for the exit message."""
    scontrol = shutil.which("scontrol")
    if scontrol is None:
        return "not requeued: scontrol is not on PATH"
    result = subprocess.run([scontrol, "requeue", job], capture_output=True, text=True, check=False)
    if result.returncode:
        return f"requeue of SLURM job {job} failed: {result.stderr.strip() or result.returncode}"
    return f"SLURM job {job} requeued"
