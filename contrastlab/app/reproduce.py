"""``contrastlab reproduce``: a named grid of experiments (dataset x framework x plug-ins x
seeds) run as ordinary ``contrastlab fit`` runs, resumable and within a time budget, and
aggregated into ``results.md`` / ``results.json`` and an HTML report of the cells' curves.

A grid is data (``configs/grids/<name>.yaml``): experiments (a preset, its baseline, its
plug-ins, a published number) and scales (epochs, options for every cell, options per plug-in).
A cell is one experiment at one seed: the run directory ``<out>/<experiment>/seed<k>`` and
``contrastlab fit --config <preset> <scale options> <plug-in options> <your options>
--trainer.max_epochs E --trainer.check_val_every_n_epoch V --seed_everything=k --model.seed=k
--resume``. Its ``cell.json`` records that command, its status and its wall time; a cell whose
status is ``done`` is never run again.
"""

from __future__ import annotations

import fnmatch
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import yaml

from contrastlab import __version__
from contrastlab.app.fit import format_duration
from contrastlab.io import atomic_write
from contrastlab.presets import list_grids, preset_dir, preset_path
from contrastlab.runs.checkpoints import checkpoint_path
from contrastlab.runs.records import read_rows

CELL_FILE = "cell.json"
SIGNAL_EXITS = {128 + signal.SIGTERM, 128 + signal.SIGUSR1, 128 + signal.SIGINT}
"""Exit codes of a ``contrastlab fit`` stopped by a signal after saving its checkpoint."""


class GridError(ValueError):
    """A grid file, a scale, a pattern or an output folder that cannot be used (one line)."""


# ----------------------------------------------------------------------------- the grid


@dataclass(frozen=True)
class Published:
    """A source's figure and how it was measured: shown only beside cells that ran that
    measurement (``metric``) for as many epochs (``epochs``), at a scale that runs the sources'
    recipes."""

    value: float
    protocol: str
    metric: str
    epochs: int


METRICS = {
    "knn": "knn",
    "knn_best": "knn_best",
    "linear_paper_last": "linear_last",
    "linear_paper_best": "linear_best",
}
"""A published figure's measurement -> the grid row's value it stands beside (``linear_*``
only when the cells ran the paper probe)."""


@dataclass(frozen=True)
class Experiment:
    """One row of a grid: a preset, the experiment it is compared with, its plug-ins."""

    name: str
    preset: str
    baseline: str | None = None
    plugins: tuple[str, ...] = ()
    published: Published | None = None


@dataclass(frozen=True)
class Scale:
    """A scale's epochs, options for every cell and per plug-in, and whether its cells run the
    presets' own recipes (``comparable``: only then are published figures shown)."""

    epochs: int
    options: tuple[str, ...] = ()
    plugins: dict[str, tuple[str, ...]] = field(default_factory=dict)
    comparable: bool = False


@dataclass(frozen=True)
class Grid:
    name: str
    dataset: str
    protocol: str
    scales: dict[str, Scale]
    experiments: tuple[Experiment, ...]

    def experiment(self, name: str) -> Experiment:
        return next(e for e in self.experiments if e.name == name)


def grid_file(name: str) -> Path:
    """A shipped grid's file (``cifar10``) or a YAML path."""
    if Path(name).is_file():
        return Path(name)
    path = preset_dir() / "grids" / f"{name.removesuffix('.yaml')}.yaml"
    if not path.is_file():
        raise GridError(f"--grid {name!r} is neither a file nor a grid; grids: {list_grids()}")
    return path


def load_grid(name: str) -> Grid:
    """Read and check a grid (``yaml.safe_load``): every preset exists, every baseline is an
    experiment of the grid, every plug-in a cell names has options in every scale or none."""
    path = grid_file(name)
    raw = yaml.safe_load(path.read_text()) or {}
    try:
        scales = {
            key: Scale(
                int(s["epochs"]),
                tuple(str(o) for o in s.get("options") or ()),
                {p: tuple(str(o) for o in opts) for p, opts in (s.get("plugins") or {}).items()},
                bool(s.get("comparable", False)),
            )
            for key, s in raw["scales"].items()
        }
        experiments = tuple(_experiment(key, e) for key, e in raw["cells"].items())
        grid = Grid(path.stem, raw["dataset"], str(raw.get("protocol", "")), scales, experiments)
    except (KeyError, TypeError, ValueError) as error:
        raise GridError(f"{path}: not a grid ({type(error).__name__}: {error})") from None
    names = {e.name for e in experiments}
    for e in experiments:
        if preset_path(e.preset) is None:
            raise GridError(f"{path}: cell {e.name}: no preset {e.preset!r}")
        if e.baseline is not None and e.baseline not in names:
            raise GridError(f"{path}: cell {e.name}: baseline {e.baseline!r} is not a cell")
    return grid


def _experiment(name: str, raw: dict) -> Experiment:
    published = raw.get("published")
    if published and published["metric"] not in METRICS:
        raise ValueError(f"cell {name}: published metric must be one of {sorted(METRICS)}")
    return Experiment(
        name,
        raw["preset"],
        raw.get("baseline"),
        tuple(raw.get("plugins") or ()),
        Published(
            float(published["value"]),
            str(published["protocol"]),
            str(published["metric"]),
            int(published["epochs"]),
        )
        if published
        else None,
    )


# ----------------------------------------------------------------------------- cells


@dataclass(frozen=True)
class Cell:
    experiment: Experiment
    seed: int
    run_dir: Path
    arguments: tuple[str, ...]
    """``contrastlab fit`` arguments (after ``fit``)."""

    @property
    def label(self) -> str:
        return f"{self.experiment.name} seed {self.seed}"

    @property
    def command(self) -> str:
        return shlex.join(["contrastlab", "fit", *self.arguments])


def monitor_interval(epochs: int, preset_interval: int) -> int:
    """The largest kNN-monitor interval ``<= preset_interval`` that divides ``epochs``, so
    that the monitor runs after the last epoch (the grid's result)."""
    interval = max(1, min(preset_interval, epochs))
    while epochs % interval:
        interval -= 1
    return interval


def preset_monitor_interval(preset: str) -> int:
    path = preset_path(preset)
    trainer = (yaml.safe_load(path.read_text()) or {}).get("trainer") or {}
    return int(trainer.get("check_val_every_n_epoch") or 1)


def plan_cells(
    grid: Grid,
    scale: str,
    out: Path,
    seeds: Sequence[int],
    epochs: int | None = None,
    only: Sequence[str] = (),
    options: Sequence[str] = (),
) -> list[Cell]:
    """The cells of ``grid`` at ``scale`` for ``seeds`` whose experiment name matches one of
    the ``only`` patterns (fnmatch; all when empty); ``options`` go to every cell, last."""
    if scale not in grid.scales:
        raise GridError(f"--scale {scale!r}: grid {grid.name} has {sorted(grid.scales)}")
    chosen = [
        e for e in grid.experiments if not only or any(fnmatch.fnmatch(e.name, p) for p in only)
    ]
    if not chosen:
        names = [e.name for e in grid.experiments]
        raise GridError(f"--only {' '.join(only)} matches no cell of grid {grid.name}: {names}")
    setting = grid.scales[scale]
    epochs = setting.epochs if epochs is None else epochs
    if epochs < 1:
        raise GridError(f"--epochs {epochs}: expected at least 1")
    cells = []
    for experiment in chosen:
        plugin_options = [o for p in experiment.plugins for o in setting.plugins.get(p, ())]
        interval = monitor_interval(epochs, preset_monitor_interval(experiment.preset))
        for seed in seeds:
            run_dir = out / experiment.name / f"seed{seed}"
            arguments = (
                "--config",
                experiment.preset,
                *setting.options,
                *plugin_options,
                *options,
                "--trainer.max_epochs",
                str(epochs),
                "--trainer.check_val_every_n_epoch",
                str(interval),
                "--trainer.default_root_dir",
                str(run_dir),
                f"--seed_everything={seed}",
                f"--model.seed={seed}",
                f"--data.seed={seed}",  # the data order and subsets vary with the seed too
                "--resume",
            )
            cells.append(Cell(experiment, seed, run_dir, arguments))
    return cells


@dataclass
class CellState:
    """What ``cell.json`` records: the command, ``pending``/``running``/``stopped``/``failed``/
    ``done``, how many times it was started, the wall time of all its starts, and results."""

    command: list[str]
    status: str = "pending"
    starts: int = 0
    wall_s: float = 0.0
    exit_codes: list[int] = field(default_factory=list)
    linear: dict | None = None
    """The linear probe's record (mode, last and best epoch's top-1, lr, batch, sizes)."""
    linear_fast: float | None = None  # cells written before ``linear``: read, never written
    transfer: dict | None = None
    """The detection transfer's record (task, its command's options, AP50 / AP / AP75, COCO's
    mask AP)."""

    @classmethod
    def read(cls, cell: Cell) -> CellState:
        path = cell.run_dir / CELL_FILE
        if not path.is_file():
            return cls(list(cell.arguments))
        state = cls(**json.loads(path.read_text()))
        if state.command != list(cell.arguments):
            raise GridError(
                f"{path}: this cell was run with other options ({' '.join(state.command)}); "
                "give another --out, or remove that folder to start it over"
            )
        return state

    def write(self, cell: Cell) -> None:
        text = json.dumps(asdict(self), indent=2) + "\n"
        atomic_write(cell.run_dir / CELL_FILE, lambda f: f.write(text.encode()))


# ----------------------------------------------------------------------------- running


class Stop:
    """Why the grid stops early: the time budget, or a signal to the runner."""

    def __init__(self, budget_minutes: float | None) -> None:
        self.deadline = None if budget_minutes is None else time.monotonic() + 60 * budget_minutes
        self.signum: int | None = None

    @property
    def budget_spent(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    @property
    def requested(self) -> bool:
        return self.signum is not None or self.budget_spent


def run_cell(cell: Cell, state: CellState, stop: Stop, poll_s: float = 0.5) -> CellState:
    """Run (or continue) one cell as a ``contrastlab fit`` process whose output goes to
    ``fit.log``; when the budget is spent or the runner gets SIGTERM, send the cell SIGTERM,
    so that it saves its checkpoint and exits. SIGINT is not passed on: a terminal's Ctrl-C
    reaches the cell itself, and a second signal could end it after it restored its handlers."""
    cell.run_dir.mkdir(parents=True, exist_ok=True)
    state.status, state.starts = "running", state.starts + 1
    state.write(cell)
    command = [sys.executable, "-m", "contrastlab", "fit", *cell.arguments]
    start, signalled = time.monotonic(), False  # signalled: SIGTERM sent to the cell
    with (cell.run_dir / "fit.log").open("ab") as log:
        log.write(f"\n$ {cell.command}\n".encode())
        log.flush()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        while process.poll() is None:
            if stop.requested and stop.signum != signal.SIGINT and not signalled:
                process.send_signal(signal.SIGTERM)
                signalled = True
            time.sleep(poll_s)
    code = process.returncode
    state.wall_s += time.monotonic() - start
    state.exit_codes.append(code)
    if code == 0 and final_knn(cell) is not None:
        state.status = "done"
    elif code in SIGNAL_EXITS or (stop.requested and code < 0):
        state.status = "stopped"
    else:
        state.status = "failed"
    state.write(cell)
    return state


# ----------------------------------------------------------------------------- results


def knn_points(cell: Cell) -> list[tuple[int, float]]:
    """``(epoch, kNN top-1)`` of the cell's ``metrics.csv``; epoch -1 is the untrained
    encoder."""
    _, rows = read_rows(cell.run_dir / "metrics.csv")
    return [(int(r["epoch"]), float(r["knn/top1"])) for r in rows if r.get("knn/top1")]


def final_knn(cell: Cell, points: list[tuple[int, float]] | None = None) -> float | None:
    """The monitor's kNN after the last epoch of the schedule (from ``points``, else the
    cell's record), or ``None``."""
    epochs = int(cell.arguments[cell.arguments.index("--trainer.max_epochs") + 1])
    last = [v for e, v in (knn_points(cell) if points is None else points) if e == epochs - 1]
    return last[-1] if last else None


def best_knn(points: list[tuple[int, float]]) -> float | None:
    """The best kNN of the trained encoder over the monitor's evaluations (lightly's
    ``max_accuracy``), or ``None``; the untrained point (epoch -1) does not count."""
    trained = [v for e, v in points if e >= 0]
    return max(trained) if trained else None


def untrained_knn(points: list[tuple[int, float]]) -> float | None:
    """The untrained encoder's kNN (the monitor's point at epoch -1), or ``None``."""
    return next((v for e, v in points if e == -1), None)


def images_per_second(cell: Cell) -> float | None:
    _, rows = read_rows(cell.run_dir / "metrics.csv")
    rates = [float(r["train/images_per_sec"]) for r in rows if r.get("train/images_per_sec")]
    return statistics.fmean(rates) if rates else None


@dataclass
class CellResult:
    experiment: str
    seed: int
    status: str
    run_dir: str
    command: str
    knn_untrained: float | None
    knn_top1: float | None
    linear: dict | None
    wall_s: float
    images_per_s: float | None
    knn_sizes: dict[str, int] | None = None
    knn_best: float | None = None
    transfer: dict | None = None


def knn_sizes(cell: Cell) -> dict[str, int] | None:
    """The monitor's bank, query and training-set sizes, as the cell's run logged them."""
    _, rows = read_rows(cell.run_dir / "metrics.csv")
    row = next((r for r in rows if r.get("knn/bank_images")), None)
    if row is None:
        return None
    names = {"bank": "knn/bank_images", "query": "knn/query_images", "train": "knn/train_images"}
    return {name: int(float(row[key])) for name, key in names.items() if row.get(key)}


def cell_result(cell: Cell, state: CellState) -> CellResult:
    points = knn_points(cell)
    return CellResult(
        experiment=cell.experiment.name,
        seed=cell.seed,
        status=state.status,
        run_dir=str(cell.run_dir),
        command=cell.command,
        knn_untrained=untrained_knn(points),
        knn_top1=final_knn(cell, points) if state.status == "done" else None,
        linear=state.linear,
        wall_s=round(state.wall_s, 1),
        images_per_s=images_per_second(cell),
        knn_sizes=knn_sizes(cell),
        knn_best=best_knn(points) if state.status == "done" else None,
        transfer=state.transfer,
    )


@dataclass
class Spread:
    """Mean and sample standard deviation (``None`` below two values) of ``n`` values."""

    n: int
    mean: float | None
    sd: float | None

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        values = list(values)
        mean = statistics.fmean(values) if values else None
        sd = statistics.stdev(values) if len(values) >= 2 else None
        return cls(len(values), mean, sd)


def paired_difference(
    ours: dict[int, float], baseline: dict[int, float]
) -> tuple[Spread, list[int]]:
    """``ours[s] - baseline[s]`` over the seeds ``s`` both have: their spread and the seeds."""
    seeds = sorted(set(ours) & set(baseline))
    return Spread.of([ours[s] - baseline[s] for s in seeds]), seeds


def result_value(result: CellResult, key: str) -> float | None:
    """A cell's ``knn_top1``, ``knn_best``, ``knn_untrained``, its linear probe's last
    (``linear_last``) or best epoch's (``linear_best``) top-1, or its detection transfer's
    ``transfer_AP`` / ``transfer_AP50`` / ``transfer_AP75`` / ``transfer_mask_AP``."""
    if key in ("linear_last", "linear_best"):
        linear = result.linear or {}
        return linear.get("top1" if key == "linear_last" else "best_top1")
    if key.startswith("transfer_"):
        return (result.transfer or {}).get(key[len("transfer_") :])
    return getattr(result, key)


def summarise(
    grid: Grid, results: Sequence[CellResult], scale: str | None = None, epochs: int | None = None
) -> list[dict]:
    """One row per experiment that has cells: kNN and linear spread over its finished seeds,
    the seed-paired difference to its baseline, wall time and images/s, the monitor's and the
    probe's sizes and protocol, and the published figure where it is comparable: the scale
    runs the recipes (``comparable``), for the figure's epochs, and the cells measured the
    figure's metric (see :func:`comparable_published`)."""

    def by_seed(name: str, key: str) -> dict[int, float]:
        values = {
            r.seed: result_value(r, key)
            for r in results
            if r.experiment == name and r.status == "done"
        }
        return {seed: value for seed, value in values.items() if value is not None}

    rows = []
    for experiment in grid.experiments:
        mine = [r for r in results if r.experiment == experiment.name]
        if not mine:
            continue
        row: dict = {
            "experiment": experiment.name,
            "preset": experiment.preset,
            "baseline": experiment.baseline,
            "seeds_done": sum(r.status == "done" for r in mine),
            "seeds": len(mine),
        }
        for key, name in (
            ("knn_top1", "knn"),
            ("knn_best", "knn_best"),
            ("knn_untrained", "knn_untrained"),
            ("linear_last", "linear"),
            ("linear_best", "linear_best"),
            ("transfer_AP", "transfer_ap"),
            ("transfer_AP50", "transfer_ap50"),
            ("transfer_AP75", "transfer_ap75"),
            ("transfer_mask_AP", "transfer_mask_ap"),
        ):
            values = by_seed(experiment.name, key)
            row[name] = asdict(Spread.of(values.values()))
            if experiment.baseline is not None and key in (
                "knn_top1",
                "linear_last",
                "transfer_AP",
            ):
                delta, seeds = paired_difference(values, by_seed(experiment.baseline, key))
                row[f"{name}_delta"] = {**asdict(delta), "seeds": seeds}
        done = [r for r in mine if r.status == "done"]
        row["wall_s"] = asdict(Spread.of([r.wall_s for r in done]))
        row["images_per_s"] = asdict(Spread.of([r.images_per_s for r in done if r.images_per_s]))
        row["knn_sizes"] = next((r.knn_sizes for r in done if r.knn_sizes), None)
        probe = next((r.linear for r in done if r.linear), None)
        row["linear_protocol"] = probe_protocol(probe) if probe else None
        row["linear_mode"] = probe["mode"] if probe else None
        moved = next((r.transfer for r in done if r.transfer), None)
        row["transfer_protocol"] = transfer_protocol(moved) if moved else None
        shown = comparable_published(experiment.published, grid, scale, epochs, row)
        row["published"] = asdict(shown) if shown else None
        rows.append(row)
    return rows


def comparable_published(
    published: Published | None, grid: Grid, scale: str | None, epochs: int | None, row: dict
) -> Published | None:
    """``published`` when the row measured what it measures: a scale that runs the presets'
    recipes, the figure's number of epochs, and its metric among the row's values (a linear
    figure only beside the paper probe)."""
    if published is None or scale is None or not grid.scales[scale].comparable:
        return None
    if epochs != published.epochs:
        return None
    column = METRICS[published.metric]
    if column.startswith("linear") and row.get("linear_mode") != "paper":
        return None
    return published if row.get(column, {}).get("n") else None


def probe_protocol(linear: dict) -> str:
    """The linear probe a cell ran, in words (mode, lr, batch, epochs, image counts)."""
    mode = "paper probe (augmented images)" if linear["mode"] == "paper" else "fast probe"
    return (
        f"{mode}, lr {linear['lr']:g}, batch {linear['batch_size']}, {linear['epochs']} epochs, "
        f"{linear['train_images']:,} training and {linear['eval_images']:,} evaluation images"
    )


def transfer_protocol(transfer: dict) -> str:
    """The transfer a cell ran, in words: its task and the options it changed."""
    options = " ".join(transfer.get("options") or []) or "the protocol's settings"
    return f"{transfer['task']} ({options}), {transfer['iterations']:,} iterations"


def hardware(device: str) -> dict:
    from contrastlab.precision import device_name

    accelerator = "cuda" if device != "cpu" and torch.cuda.is_available() else "cpu"
    return {
        "device": device_name(torch.device(accelerator)),
        "cpu_cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "contrastlab": __version__,
    }


# ----------------------------------------------------------------------------- main loop


@dataclass
class Request:
    """What ``contrastlab reproduce`` was asked for (see :func:`reproduce`)."""

    grid: str = "cifar10"
    scale: str = "smoke"
    out: Path | None = None
    seeds: tuple[int, ...] = (0,)
    epochs: int | None = None
    only: tuple[str, ...] = ()
    device: str = "auto"
    budget_minutes: float | None = None
    linear: str | None = None
    """``fast`` or ``paper``: the linear probe to run on every finished cell (none if unset)."""
    probe_epochs: int = 100
    transfer: str | None = None
    """A ``contrastlab transfer`` task to run on every finished cell (none if unset)."""
    transfer_root: str | None = None
    transfer_options: tuple[str, ...] = ()
    """Options for each cell's ``contrastlab transfer`` (its smaller settings, devices)."""
    data_root: str | None = None
    report: bool = True
    options: tuple[str, ...] = ()

    def fit_options(self) -> list[str]:
        accelerator = {"auto": "auto", "cpu": "cpu", "cuda": "gpu", "gpu": "gpu"}[self.device]
        root = ["--data.root", self.data_root] if self.data_root else []
        return [*root, "--trainer.accelerator", accelerator, *self.options]

    def output(self) -> Path:
        return self.out or Path("runs") / "reproduce" / f"{self.grid}_{self.scale}"


def reproduce(request: Request, say: Callable[[str], None] = print) -> dict:
    """Run every unfinished cell of the request (in grid order, seeds inner), stopping cleanly
    when the budget is spent or on SIGINT/SIGTERM, then write ``results.json``, ``results.md``
    and ``report.html`` in the output folder. Returns the results."""
    if request.device == "cuda" and not torch.cuda.is_available():
        raise GridError("--device cuda: torch sees no CUDA device here")
    grid = load_grid(request.grid)
    out = request.output()
    cells = plan_cells(
        grid=grid,
        scale=request.scale,
        out=out,
        seeds=request.seeds,
        epochs=request.epochs,
        only=request.only,
        options=request.fit_options(),
    )
    states = [CellState.read(cell) for cell in cells]  # refuses changed options before any run
    todo = [i for i, s in enumerate(states) if s.status != "done"]
    budget = f", budget {request.budget_minutes:g} min" if request.budget_minutes else ""
    say(
        f"contrastlab reproduce: grid {grid.name}, scale {request.scale}, {len(cells)} cells "
        f"({len(cells) - len(todo)} done, {len(todo)} to run){budget}; output {out}"
    )
    stop = Stop(request.budget_minutes)
    with _StopOnSignals(stop):
        durations: list[float] = []
        for position, i in enumerate(todo, 1):
            if stop.requested:
                break
            cell, state = cells[i], states[i]
            eta = _eta(durations, len(todo) - position + 1)
            log = cell.run_dir / "fit.log"
            say(f"[{position}/{len(todo)}] {cell.label}: running{eta} (log: {log})")
            started = time.monotonic()
            states[i] = run_cell(cell, state, stop)
            durations.append(time.monotonic() - started)
            say(f"[{position}/{len(todo)}] {cell.label}: {_outcome(cell, states[i])}")
        if request.linear:
            _linear_probes(cells, states, request, stop, say)
        if request.transfer:
            _transfers(cells, states, request, stop, say)
    results = [cell_result(c, s) for c, s in zip(cells, states, strict=True)]
    epochs = request.epochs or grid.scales[request.scale].epochs
    summary = {
        "grid": grid.name,
        "scale": request.scale,
        "epochs": epochs,
        "seeds": list(request.seeds),
        "protocol": grid.protocol,
        "comparable": grid.scales[request.scale].comparable,
        "complete": all(r.status == "done" for r in results),
        "stopped_by_signal": stop.signum,
        "date": time.strftime("%Y-%m-%d"),
        "hardware": hardware(request.device),
        "experiments": summarise(grid, results, request.scale, epochs),
        "cells": [asdict(r) for r in results],
    }
    _write_text(out / "results.json", json.dumps(summary, indent=2) + "\n")
    _write_text(out / "results.md", results_markdown(summary))
    if request.report:
        _write_grid_report(cells, out)
    _closing_lines(summary, out, stop, say)
    return summary


def _eta(durations: list[float], remaining: int) -> str:
    if not durations:
        return ""
    return f", grid ETA {format_duration(statistics.fmean(durations) * remaining)}"


def _outcome(cell: Cell, state: CellState) -> str:
    took = f"after {format_duration(state.wall_s)} in all"
    if state.status == "done":
        points = knn_points(cell)
        untrained = untrained_knn(points)
        before = f"{untrained:.2f}% untrained -> " if untrained is not None else ""
        return f"done {took}, kNN top-1 {before}{final_knn(cell, points):.2f}%"
    if state.status == "stopped":
        return f"stopped {took} (it continues from its last checkpoint on the next run)"
    return f"failed (exit {state.exit_codes[-1]}) {took}; the end of its log:\n{_tail(cell)}"


def _tail(cell: Cell, lines: int = 12) -> str:
    text = (cell.run_dir / "fit.log").read_text(errors="replace").replace("\r", "\n")
    kept = [line for line in text.splitlines() if line.strip()]
    return "\n".join("    " + line[:300] for line in kept[-lines:])


def _linear_probes(
    cells: list[Cell],
    states: list[CellState],
    request: Request,
    stop: Stop,
    say: Callable[[str], None],
) -> None:
    """The linear probe (``request.linear``: ``fast`` on cached centre-view features, or the
    ``paper`` protocol of the dataset) of every finished cell lacking one, on the cell's own
    data subsets; stored in ``cell.json`` with both its last and best epoch."""
    from contrastlab.app.evaluate import linear_probe
    from contrastlab.runs.resume import load_checkpoint_file

    device = "cuda" if request.device != "cpu" and torch.cuda.is_available() else "cpu"
    for cell, state in zip(cells, states, strict=True):
        done_already = state.linear is not None and state.linear["mode"] == request.linear
        if state.status != "done" or done_already or stop.requested:
            continue
        checkpoint = cell.run_dir / "checkpoints" / "last.ckpt"
        data = load_checkpoint_file(checkpoint).get("datamodule_hyper_parameters") or {}
        result = linear_probe(
            checkpoint,
            request.linear,
            epochs=request.probe_epochs,
            train_subset=data.get("train_subset"),
            eval_subset=data.get("eval_subset"),
            root=request.data_root,
            device=device,
        )
        state.linear = result.to_dict()
        state.write(cell)
        say(
            f"{cell.label}: linear probe ({request.linear}) top-1 {result.top1:.2f}% last epoch, "
            f"{result.best_top1:.2f}% best"
        )


def _transfers(
    cells: list[Cell],
    states: list[CellState],
    request: Request,
    stop: Stop,
    say: Callable[[str], None],
) -> None:
    """``contrastlab transfer --task request.transfer`` on every finished cell lacking that
    transfer (in ``<cell>/eval/transfer_<task>``, so a stopped one resumes), its result in
    ``cell.json``."""
    from contrastlab.app.cli import transfer as transfer_command

    options = list(request.transfer_options)
    for cell, state in zip(cells, states, strict=True):
        record = {"task": request.transfer, "options": options}
        done_already = state.transfer is not None and all(
            state.transfer.get(k) == v for k, v in record.items()
        )
        if state.status != "done" or done_already or stop.requested:
            continue
        out = cell.run_dir / "eval" / f"transfer_{request.transfer}"
        resume = ["--resume"] if checkpoint_path(out).is_file() else []
        transfer_command(
            [
                "--task", request.transfer,
                "--checkpoint", str(cell.run_dir / "checkpoints" / "last.ckpt"),
                "--data.root", str(request.transfer_root), "--out", str(out),
                *options, *resume,
            ]
        )  # fmt: skip
        result = json.loads(Path(f"{out}.json").read_text())
        state.transfer = record | {
            k: result[k] for k in ("AP", "AP50", "AP75", "iterations", "global_batch")
        }
        if "mask" in result:
            state.transfer["mask_AP"] = result["mask"]["AP"]
        state.write(cell)
        say(
            f"{cell.label}: transfer ({request.transfer}) AP50 {result['AP50']:.2f}, "
            f"AP {result['AP']:.2f}"
        )


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def _write_grid_report(cells: list[Cell], out: Path) -> None:
    from contrastlab.app.report import write_report

    started = [c for c in cells if (c.run_dir / "metrics.csv").is_file()]
    if started:
        names = [f"{c.experiment.name} s{c.seed}" for c in started]
        write_report([c.run_dir for c in started], out, names=names, pictures=False)


def _closing_lines(summary: dict, out: Path, stop: Stop, say: Callable[[str], None]) -> None:
    cells = summary["cells"]
    done = sum(c["status"] == "done" for c in cells)
    failed = [f"{c['experiment']} seed {c['seed']}" for c in cells if c["status"] == "failed"]
    say(f"wrote {out / 'results.md'}, {out / 'results.json'} and {out / 'report.html'}")
    if summary["complete"]:
        say(f"all {done} cells done")
        return
    why = "stopped by a signal" if stop.signum else "budget spent" if stop.budget_spent else ""
    why = why or "not complete"
    say(f"{why}: {done} of {len(cells)} cells done; run the same command again to continue")
    if failed:
        say(f"failed (see their fit.log; the next run retries them): {', '.join(failed)}")


class _StopOnSignals:
    """SIGINT/SIGTERM to the runner: stop after the running cell has saved (SIGTERM is passed
    on to it by :func:`run_cell`; a terminal's Ctrl-C reaches it directly)."""

    def __init__(self, stop: Stop) -> None:
        self.stop, self.previous = stop, {}

    def __enter__(self) -> Stop:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self.previous[signum] = signal.signal(signum, self._handle)
        return self.stop

    def _handle(self, signum: int, frame) -> None:
        self.stop.signum = signum

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


# ----------------------------------------------------------------------------- results.md


EMPTY = {"n": 0, "mean": None, "sd": None}


def _spread(spread: dict, signed: bool = False) -> str:
    if spread["mean"] is None:
        return ""
    mean = f"{spread['mean']:+.2f}" if signed else f"{spread['mean']:.2f}"
    return mean + (f" ± {spread['sd']:.2f}" if spread["sd"] is not None else "")


def _transfer_details(row: dict) -> str:
    """``82.40 / 63.60`` (AP50 / AP75 means), with ``(mask 35.70)`` for a COCO task."""
    ap50, ap75 = row.get("transfer_ap50") or EMPTY, row.get("transfer_ap75") or EMPTY
    if ap50["mean"] is None:
        return ""
    mask = row.get("transfer_mask_ap") or EMPTY
    masks = f" (mask {mask['mean']:.2f})" if mask["mean"] is not None else ""
    return f"{ap50['mean']:.2f} / {ap75['mean']:.2f}{masks}"


def _delta_text(delta: dict | None) -> str:
    return _spread(delta, True) if delta and delta["n"] else ""


def recipe_title(preset: str) -> str:
    """The title of ``preset``'s recipe card (``contrastlab presets NAME`` prints the card)."""
    from contrastlab.presets import load_card

    try:
        return load_card(preset).title
    except (FileNotFoundError, ValueError):
        return "(no recipe card)"


def results_markdown(summary: dict) -> str:
    """The grid's table: one row per experiment, then one per cell with its command."""
    hw = summary["hardware"]
    rows = summary["experiments"]
    probes = sorted({row["linear_protocol"] for row in rows if row.get("linear_protocol")})
    published_note = (
        "A published figure stands only beside a row that ran its source's recipe and "
        "measurement (epochs, metric, probe), with that protocol printed beside it."
        if summary.get("comparable")
        else f"No published figure at the {summary['scale']} scale: its cells do not run the "
        "sources' recipes, so nothing here compares with a paper."
    )
    lines = [
        f"# contrastlab reproduce: grid {summary['grid']}, scale {summary['scale']}",
        "",
        f"{summary['epochs']} epochs, seeds {', '.join(map(str, summary['seeds']))} (each seed "
        f"sets the initialisation, the views, the data order and subsets); {summary['date']}, "
        f"{hw['device']} ({hw['cpu_cores']} CPU cores), torch {hw['torch']}, "
        f"contrastlab {hw['contrastlab']}."
        + ("" if summary["complete"] else " **Not complete**: some cells have not finished."),
        "",
        f"kNN: {summary['protocol']}, with the bank, query and training-set sizes of each row; "
        "its last epoch, and its best evaluation (the monitor runs every "
        "trainer.check_val_every_n_epoch epochs). "
        "Mean ± sample standard deviation over the finished seeds; Δ is each experiment minus "
        "its baseline with the seeds paired (mean ± sd of the per-seed differences). "
        + (
            f"Linear: {'; '.join(probes)}; its last epoch, and its best epoch (chosen on the "
            "evaluation split, as the ContrastiveCrop authors' DDP_linear.py reports it). "
            if probes
            else "Linear: not run (`--linear fast` or `--linear paper`). "
        )
        + published_note,
    ]
    transfers = sorted({row["transfer_protocol"] for row in rows if row.get("transfer_protocol")})
    lines[-1] += (
        f" Transfer: contrastlab transfer {'; '.join(transfers)}: AP (mean over IoU 0.50:0.95; "
        "COCO: box AP, with mask AP), AP50 / AP75, and Δ AP vs the baseline, seed-paired."
        if transfers
        else " Transfer: not run (`--transfer TASK --transfer.root DIR`)."
    )
    lines += [
        "",
        "| experiment | seeds done | kNN, last epoch | kNN, best epoch | untrained kNN | "
        "Δ kNN vs baseline | "
        "kNN bank / queries / training set | linear, last epoch | Δ linear | linear, best epoch | "
        "transfer AP | transfer AP50 / AP75 (mask AP) | Δ transfer AP | "
        "published | wall time per seed | images/s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- "
        "| --- |",
    ]
    for row in rows:
        delta = row.get("knn_delta")
        delta_text = f"{_spread(delta, True)} vs {row['baseline']}" if delta and delta["n"] else ""
        linear_delta = row.get("linear_delta")
        linear_delta_text = (
            _spread(linear_delta, True) if linear_delta and linear_delta["n"] else ""
        )
        published = row["published"]
        published_text = f"{published['value']:.2f}: {published['protocol']}" if published else ""
        sizes = row.get("knn_sizes") or {}
        sizes_text = " / ".join(f"{sizes[k]:,}" for k in ("bank", "query", "train") if k in sizes)
        wall = row["wall_s"]["mean"]
        lines.append(
            f"| {row['experiment']} | {row['seeds_done']}/{row['seeds']} | {_spread(row['knn'])} | "
            f"{_spread(row.get('knn_best') or EMPTY)} | {_spread(row['knn_untrained'])} | "
            f"{delta_text} | {sizes_text} | "
            f"{_spread(row['linear'])} | {linear_delta_text} | "
            f"{_spread(row.get('linear_best') or EMPTY)} | "
            f"{_spread(row.get('transfer_ap') or EMPTY)} | {_transfer_details(row)} | "
            f"{_delta_text(row.get('transfer_ap_delta'))} | {published_text} | "
            f"{format_duration(wall) if wall is not None else ''} | "
            f"{_spread(row['images_per_s'])} |"
        )
    lines += ["", "## Recipes", "", "Each experiment's preset and its recipe card's title:", ""]
    lines += [
        f"- {row['experiment']}: `{row['preset']}`: {recipe_title(row['preset'])}" for row in rows
    ]
    lines += [
        "",
        "## Cells",
        "",
        "| cell | status | kNN top-1 | wall time | run dir |",
        "| --- | --- | --- | --- | --- |",
    ]
    for c in summary["cells"]:
        knn = f"{c['knn_top1']:.2f}" if c["knn_top1"] is not None else ""
        lines.append(
            f"| {c['experiment']} seed {c['seed']} | {c['status']} | {knn} | "
            f"{format_duration(c['wall_s'])} | {c['run_dir']} |"
        )
    lines += ["", "Each cell's command (it also runs alone):", ""]
    for c in summary["cells"]:
        lines += [f"- {c['experiment']} seed {c['seed']}: `{c['command']}`"]
    return "\n".join(lines) + "\n"
