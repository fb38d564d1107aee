"""``<run dir>/run.json``: what a run was, for the report's header and for whoever reads the run
directory later.

Written when the data is read and again when fitting ends (atomically, first process only):
the command that reproduces the run, the preset it started from and the options given after
it, the contrastlab / torch / Lightning versions, the device and process count, the precision,
when it started, and at the end the wall time, epochs and steps. A resumed run keeps the first
start's command and adds its own to ``resumed``.
"""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from contrastlab.io import atomic_write

RUN_INFO = "run.json"


def read_run_info(run_dir: str | Path) -> dict[str, Any]:
    """The run's ``run.json``, or ``{}`` for runs made before it existed (or unreadable)."""
    try:
        info = json.loads((Path(run_dir) / RUN_INFO).read_text())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def preset_and_options(args: list[str], presets: dict[str, str]) -> tuple[str | None, list[str]]:
    """The preset named by ``--config`` in ``args`` (``presets`` maps resolved file paths to
    preset names) and every other argument, in order."""
    preset, rest, i = None, [], 0
    while i < len(args):
        arg = args[i]
        value = arg.split("=", 1)[1] if arg.startswith("--config=") else None
        if arg == "--config" and i + 1 < len(args):
            value, i = args[i + 1], i + 1
        if value is not None and value in presets:
            preset = presets[value]
        elif value is not None:
            rest += ["--config", value]
        else:
            rest.append(arg)
        i += 1
    return preset, rest


class RunInfo(pl.Callback):
    """Writes :data:`RUN_INFO` (see the module's docstring); ``args`` are the ``fit`` arguments
    as the user gave them, ``preset`` and ``options`` what :func:`preset_and_options` made of
    them, ``device`` the device's model."""

    def __init__(self, args: list[str], preset: str | None, options: list[str], device: str):
        self.args, self.preset, self.options, self.device = args, preset, options, device
        self.start = time.time()

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if trainer.global_rank != 0 or stage != "fit":
            return
        path = Path(trainer.default_root_dir) / RUN_INFO
        earlier = read_run_info(trainer.default_root_dir)
        command = shlex.join(["contrastlab", "fit", *self.args])
        info = {
            "command": earlier.get("command", command),
            "preset": self.preset,
            "options": self.options,
            "versions": versions(),
            "device": self.device,
            "processes": trainer.world_size,
            "precision": str(trainer.precision),
            "started": earlier.get("started", time.strftime("%Y-%m-%d %H:%M:%S %Z")),
            "resumed": earlier.get("resumed", []) + ([command] if earlier else []),
            "wall_seconds": earlier.get("wall_seconds", 0.0),
        }
        self.info, self.earlier_seconds = info, info["wall_seconds"]
        self._write(path)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_rank != 0 or not hasattr(self, "info"):
            return
        self.info["wall_seconds"] = self.earlier_seconds + time.time() - self.start
        self.info["epochs"], self.info["steps"] = trainer.current_epoch, trainer.global_step
        self._write(Path(trainer.default_root_dir) / RUN_INFO)

    def _write(self, path: Path) -> None:
        text = (json.dumps(self.info, indent=2) + "\n").encode()
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: f.write(text))


def versions() -> dict[str, str]:
    import contrastlab

    return {
        "contrastlab": contrastlab.__version__,
        "torch": torch.__version__,
        "lightning": pl.__version__,
    }
