"""One continuous record per run directory across resumes.

``metrics.csv`` is written through (every row reaches the file when it is logged, so a kill
loses none) and, when a run resumes from a checkpoint at step ``S``, the rows a killed run
wrote at steps ``>= S`` are dropped before the first new row, since the resumed run writes
them again: no row is lost, none is duplicated. TensorBoard gets ``purge_step=S``, which tells
it to discard the killed run's events from step ``S`` on, so the curves continue as one run.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from contrastlab.io import atomic_write

METRICS_FILE = "metrics.csv"


def read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Header and complete rows of a metrics CSV (a last line cut by a kill is dropped)."""
    if not path.is_file():
        return [], []
    text = path.read_text()
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    reader = csv.DictReader(io.StringIO(text))
    rows = [row for row in reader if None not in row and None not in row.values()]
    return list(reader.fieldnames or []), rows


def write_rows(path: Path, header: list[str], rows: list[dict[str, Any]]) -> None:
    """Replace ``path`` atomically with ``header`` and ``rows``."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=header, restval="")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, lambda f: f.write(buffer.getvalue().encode()))


class ContinuousCSVWriter(ExperimentWriter):
    """Lightning's CSV experiment writer, but it never deletes an earlier record: it keeps the
    rows at steps ``< keep_before_step`` (all of a killed run's rows before the checkpoint the
    run resumes from), and writes every new row to disk as it is logged."""

    def __init__(self, log_dir: str, keep_before_step: int) -> None:
        self.keep_before_step = keep_before_step
        self._trimmed = False
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        """Lightning deletes ``metrics.csv`` here; a run record must survive restarts."""

    def log_metrics(self, metrics_dict: dict[str, float], step: int | None = None) -> None:
        super().log_metrics(metrics_dict, step)
        self.save()

    def save(self) -> None:
        if not self.metrics:
            return
        path = Path(self.metrics_file_path)
        if not self._trimmed:
            self._trim(path)
        new_keys = {k for row in self.metrics for k in row} - set(self.metrics_keys)
        if new_keys or not path.is_file():
            self.metrics_keys = sorted({*self.metrics_keys, *new_keys})
            _, rows = read_rows(path)
            write_rows(path, self.metrics_keys, rows + self.metrics)
        else:
            with path.open("a", newline="") as f:
                csv.DictWriter(f, fieldnames=self.metrics_keys, restval="").writerows(self.metrics)
        self.metrics = []

    def _trim(self, path: Path) -> None:
        """Before the first new row: drop the rows the resumed run will write again."""
        header, rows = read_rows(path)
        kept = [
            r
            for r in rows
            if r.get("step", "").isdigit() and int(r["step"]) < self.keep_before_step
        ]
        self.metrics_keys = sorted(set(header))
        if path.is_file():
            write_rows(path, self.metrics_keys, kept)
        self._trimmed = True


class ContinuousCSVLogger(CSVLogger):
    """A :class:`CSVLogger` writing ``<run dir>/metrics.csv`` through
    :class:`ContinuousCSVWriter`."""

    def __init__(self, run_dir: str | Path, resume_step: int) -> None:
        super().__init__(run_dir, name="", version="")
        self.resume_step = resume_step

    @property
    @rank_zero_experiment
    def experiment(self) -> ContinuousCSVWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = ContinuousCSVWriter(self.log_dir, self.resume_step)
        return self._experiment


def run_loggers(run_dir: str | Path, resume_step: int) -> list:
    """TensorBoard events and ``metrics.csv`` in ``run_dir``, continuing from ``resume_step``
    (0 for a fresh run: an earlier record in the folder is then replaced)."""
    return [
        TensorBoardLogger(run_dir, name="", version="", purge_step=resume_step),
        ContinuousCSVLogger(run_dir, resume_step),
    ]
