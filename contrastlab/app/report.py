"""``contrastlab report``: an HTML page of PNG plots for one run or several side by side.

Reads each run directory's ``metrics.csv`` (loss, learning rate, kNN, hardness statistics),
its ``eval/*.json`` results and ``checkpoints/last.ckpt`` (ContrastiveCrop picture, 2-D
embedding of evaluation features coloured by class). Several runs share the axes of every
curve, one legend naming the runs.
"""

from __future__ import annotations

import csv
import html
import json
import math
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import torch
import yaml
from matplotlib.figure import Figure

from contrastlab.app.figures import detection_figure, save_figure
from contrastlab.app.fit import format_duration
from contrastlab.io import atomic_write
from contrastlab.runs.run_info import read_run_info

Series = list[tuple[float, float]]


@dataclass
class Run:
    """One run directory's logged series (``x`` = step, or epoch for kNN) and results."""

    path: Path
    name: str
    series: dict[str, Series] = field(default_factory=dict)
    results: dict[str, dict] = field(default_factory=dict)
    epochs: int = 0
    """Epochs trained (the largest epoch ``metrics.csv`` logged, plus one)."""

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoints" / "last.ckpt"


EPOCH_KEYS = ("knn/", "rankme/", "ccrop/")
"""Monitors plotted against epochs trained (their untrained point, epoch -1, at 0)."""


def read_run(path: str | Path) -> Run:
    """Parse ``metrics.csv`` (Lightning's CSV logger) and ``eval/*.json`` of a run directory."""
    path = Path(path)
    metrics = path / "metrics.csv"
    if not metrics.is_file():
        raise FileNotFoundError(f"{path} is not a run directory: no metrics.csv")
    run = Run(path, path.name)
    with metrics.open(newline="") as f:
        for row in csv.DictReader(f):
            if row.get("epoch"):
                run.epochs = max(run.epochs, int(float(row["epoch"])) + 1)
            for key, value in row.items():
                if key in ("epoch", "step") or not value:
                    continue
                by_epoch = key.startswith(EPOCH_KEYS)
                x = float(row["epoch"]) + 1 if by_epoch else float(row["step"])
                run.series.setdefault(key, []).append((x, float(value)))
    for result in sorted((path / "eval").glob("*.json")):
        run.results[result.stem] = json.loads(result.read_text())
    return run


def curve_figure(runs: list[Run], keys: list[str], title: str, xlabel: str) -> Figure | None:
    """One axes per key in ``keys`` present in any run (rows of four); every run a line of its
    own colour (tab20 beyond ten runs), one legend (below for a few runs, on the right for
    many)."""
    present = [k for k in keys if any(k in r.series for r in runs)]
    if not present:
        return None
    many = len(runs) > 4
    columns = min(4, len(present))  # rows of at most four axes
    rows = math.ceil(len(present) / columns)
    size = (5.5 * columns + 2.5 * many, 3.6 * rows)
    figure = Figure(figsize=size, layout="constrained")
    grid = figure.subplots(rows, columns, squeeze=False).ravel()
    for unused in grid[len(present) :]:
        unused.set_visible(False)
    axes = grid[: len(present)]
    palette = matplotlib.colormaps["tab20" if len(runs) > 10 else "tab10"].colors
    for axis, key in zip(axes, present, strict=True):
        for i, run in enumerate(runs):
            points = finite(run.series.get(key, []))
            if points:
                x, y = zip(*points, strict=True)
                marker = "o" if len(x) < 30 else None
                axis.plot(x, y, label=run.name, marker=marker, ms=3, color=palette[i % 20])
        axis.set_title(key, fontsize=9)
        axis.set_xlabel(xlabel)
        axis.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if many:
        figure.legend(handles, labels, loc="outside right upper", fontsize=8)
    else:
        figure.legend(handles, labels, loc="outside lower center", ncols=len(runs))
    figure.suptitle(title, fontsize=10)
    return figure


def loss_keys(runs: list[Run]) -> list[str]:
    """The step losses, or each epoch's mean loss for runs that logged no steps."""
    if any("train/loss_step" in r.series for r in runs):
        return ["train/loss_step"]
    return ["train/loss_epoch"]


def hardness_title(runs: list[Run]) -> str:
    """Names what the hardness panels show: the queue's negatives only (plain MoCo), or real
    and synthetic ones (SynCo, MoCHi)."""
    real = ("hardness/positive", "hardness/pool/", "hardness/pool_false_negative_share")
    synthetic = any(
        k.startswith("hardness/") and not k.startswith(real) for r in runs for k in r.series
    )
    kinds = "real and synthetic negatives" if synthetic else "the queue's negatives"
    return f"hardness of {kinds} (cosine similarity to the query)"


CCROP_KEYS = [
    "ccrop/box_area_mean",
    "ccrop/box_area_q10",
    "ccrop/box_area_q90",
    "ccrop/whole_image_share",
]
SIZES = ("knn/bank_images", "knn/query_images", "knn/train_images", "rankme/images")
"""Counts, not curves (the table and the kNN title show them)."""


def other_keys(runs: list[Run], shown: set[str]) -> list[str]:
    """Every logged per-step series not in ``shown`` or :data:`SIZES`, nor the other loss
    series: so that no curve a run logged is missing from its report."""
    losses = {"train/loss_step", "train/loss_epoch"}
    logged = {k for r in runs for k in r.series if not k.startswith(EPOCH_KEYS)}
    return sorted(logged - shown - set(SIZES) - losses)


def hardness_keys(runs: list[Run]) -> list[str]:
    """The logged hardness statistics: positive, pool and per-kind means, share above positive."""
    names = sorted({k for r in runs for k in r.series if k.startswith("hardness/")})
    means = [k for k in names if k.endswith("/mean")]
    return ["hardness/positive", *means, "hardness/synthetic_above_positive"]


Embedding = tuple[str, torch.Tensor, torch.Tensor, list[str] | None]
"""``(run name, features, labels, class names or None)``."""


def embedding_figure(embeddings: list[Embedding]) -> Figure:
    """PCA to 2-D of each run's evaluation features, points coloured by class (named in the
    legend when the dataset names its classes)."""
    figure = Figure(figsize=(4.2 * len(embeddings), 4.2), layout="constrained")
    axes = figure.subplots(1, len(embeddings), squeeze=False)[0]
    for axis, (name, features, labels, class_names) in zip(axes, embeddings, strict=True):
        points = pca_2d(features)
        classes = int(labels.max()) + 1
        cmap = "tab10" if classes <= 10 else "tab20" if classes <= 20 else "turbo"
        scatter = axis.scatter(
            points[:, 0], points[:, 1], c=labels.numpy(), cmap=cmap, s=3, alpha=0.7
        )
        if classes <= 20:
            handles, names = scatter.legend_elements(num=classes)
            if class_names is not None and len(class_names) == len(handles):
                names = class_names
            axis.legend(handles, names, title="class", fontsize=6, title_fontsize=7, loc="best")
        axis.set_title(f"{name}: evaluation features, PCA", fontsize=9)
        axis.set_xticks([])
        axis.set_yticks([])
    return figure


def pca_2d(features: torch.Tensor) -> torch.Tensor:
    """The projection of centred, L2-normalised features on their two principal axes."""
    x = torch.nn.functional.normalize(features.float(), dim=1)
    x = x - x.mean(dim=0)
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    return x @ v[:2].T


def run_embedding(run: Run, subset: int, device: str) -> Embedding:
    """The run's evaluation features (a seeded subset), labels and class names."""
    from contrastlab.app.evaluate import Evaluation

    evaluation = Evaluation.open(run.checkpoint, device=device)
    _, split = evaluation.splits(None, None)
    features, labels = evaluation.features(split, subset)
    return run.name, features, labels, evaluation.data.class_names(split)


def run_crops(run: Run, out: Path, device: str) -> Path | None:
    """The ContrastiveCrop picture of a run trained with it (``None`` otherwise)."""
    from contrastlab.app.evaluate import write_crop_picture

    checkpoint = torch.load(run.checkpoint, map_location="cpu", weights_only=True)
    if not (checkpoint.get("hyper_parameters") or {}).get("crop"):
        return None
    return write_crop_picture(run.checkpoint, out, images=6, device=device)


@dataclass(frozen=True)
class ResultsTable:
    """The final numbers of each run: ``columns`` and one row of cells per run (text, empty
    where a run has no such number), rendered for the page and for papers."""

    columns: list[str]
    rows: list[tuple[str, list[str]]]
    first: str = "run"
    """The first column's heading (what each row is)."""

    def html(self) -> str:
        header = "".join(f"<th>{html.escape(c)}</th>" for c in [self.first, *self.columns])
        body = "".join(
            f"<tr><th>{html.escape(name)}</th>" + "".join(f"<td>{c}</td>" for c in cells)
            for name, cells in self.rows
        )
        return f"<table><tr>{header}</tr>{body}</table>"

    def markdown(self) -> str:
        lines = ["| " + " | ".join([self.first, *self.columns]) + " |"]
        lines.append("|" + "---|" * (len(self.columns) + 1))
        lines += ["| " + " | ".join([name, *cells]) + " |" for name, cells in self.rows]
        return "\n".join(lines) + "\n"

    def latex(self) -> str:
        """A ``booktabs`` tabular (``\\usepackage{booktabs}``), special characters escaped."""
        spec = "l" + "r" * len(self.columns)
        head = " & ".join(latex_escape(c) for c in [self.first, *self.columns])
        rows = [" & ".join(latex_escape(c) for c in [n, *cells]) + r" \\" for n, cells in self.rows]
        lines = [rf"\begin{{tabular}}{{{spec}}}", r"\toprule", head + r" \\", r"\midrule"]
        return "\n".join([*lines, *rows, r"\bottomrule", r"\end{tabular}"]) + "\n"


LATEX_SPECIALS = {c: "\\" + c for c in "%&#_$"} | {"~": r"\textasciitilde{}", "^": r"\^{}"}


def latex_escape(text: str) -> str:
    """``text`` for a LaTeX table cell: specials escaped, ``->`` an arrow."""
    parts = ("".join(LATEX_SPECIALS.get(c, c) for c in part) for part in text.split("->"))
    return r"$\rightarrow$".join(parts)


def final_table(runs: list[Run]) -> ResultsTable:
    """Last logged values and evaluation results per run."""
    columns = [
        "epochs",
        "final loss",
        "untrained kNN top-1",
        "final kNN top-1",
        "kNN bank / queries / training set",
        "RankMe untrained -> final (images)",
        *sorted({k for r in runs for k in r.results}),
    ]
    rows = []
    for run in runs:
        loss = run.series.get("train/loss_epoch") or run.series.get("train/loss_step") or []
        knn = run.series.get("knn/top1") or []
        untrained = knn[0][1] if knn and knn[0][0] == 0 else None  # logged at epoch -1
        trained = knn[-1] if knn and knn[-1][0] > 0 else None
        cells = [
            f"{run.epochs}" if run.epochs else "",
            f"{loss[-1][1]:.3f}" if loss else "",
            f"{untrained:.2f}%" if untrained is not None else "",
            f"{trained[1]:.2f}%" if trained else "",
            knn_sizes_text(run),
            rankme_text(run),
        ]
        for name in columns[6:]:
            result = run.results.get(name, {})
            if "AP50" in result:  # contrastlab transfer
                cells.append(transfer_text(result))
                continue
            top1 = result.get("top1", (result.get("results") or [{}])[0].get("top1"))
            cells.append(f"{top1:.2f}% ({_label(result)})" if top1 is not None else "")
        rows.append((run.name, cells))
    return ResultsTable(columns, rows)


def transfer_text(result: dict) -> str:
    """``AP50 / AP / AP75 82.40 / 57.00 / 63.60 (voc-c4, 24,000 iterations of 16)``; a COCO
    result: ``box AP / mask AP 41.00 / 35.70 (coco-c4-1x, ...)``."""
    if "mask" in result:
        scores = f"box AP / mask AP {result['AP']:.2f} / {result['mask']['AP']:.2f}"
    else:
        scores = "AP50 / AP / AP75 " + " / ".join(
            f"{result[k]:.2f}" for k in ("AP50", "AP", "AP75")
        )
    return (
        f"{scores} ({result.get('task', '?')}, "
        f"{result.get('iterations', 0):,} iterations of {result.get('global_batch', '?')})"
    )


def rankme_text(run: Run) -> str:
    """``65.9 -> 120.4 (2,048)``: the RankMe monitor's untrained and last values, or empty."""
    points = run.series.get("rankme/value") or []
    if not points:
        return ""
    first, last = points[0], points[-1]
    images = run.series.get("rankme/images") or [(0, 0)]
    start = f"{first[1]:.1f}" if first[0] == 0 else "?"
    end = f" -> {last[1]:.1f}" if last is not first else ""
    return f"{start}{end} ({int(images[0][1]):,})"


def knn_sizes_text(run: Run) -> str:
    """``bank / queries / training set`` of the run's kNN monitor (as ``metrics.csv`` logged
    them), or empty."""
    keys = ("knn/bank_images", "knn/query_images", "knn/train_images")
    sizes = [run.series[k][0][1] for k in keys if run.series.get(k)]
    return " / ".join(f"{int(n):,}" for n in sizes)


def knn_sizes_title(runs: list[Run]) -> str:
    """``, bank / queries / training set: 2,048 / 2,000 / 2,048`` (one figure shared by the
    runs, else each run's), or empty when no run logged them."""
    sizes = {run.name: knn_sizes_text(run) for run in runs if knn_sizes_text(run)}
    if not sizes:
        return ""
    if len(set(sizes.values())) == 1:
        return f", bank / queries / training set: {next(iter(sizes.values()))}"
    return ", bank / queries / training set: " + "; ".join(f"{n} {v}" for n, v in sizes.items())


def _label(result: dict) -> str:
    if "results" in result:  # contrastlab knn: its first (k, t)
        first, bank, queries = result["results"][0], result["bank"], result["queries"]
        sizes = f"{bank['images']:,} {bank['split']} / {queries['images']:,} {queries['split']}"
        return f"kNN k={first['k']}, t={first['t']}, {sizes} images"
    if "mode" in result:
        sizes = ""
        if result.get("train_images"):
            sizes = f", {result['train_images']:,} / {result['eval_images']:,} images"
        return f"linear {result['mode']}, last of {result['epochs']} epochs{sizes}"
    return f"{result.get('labels', '?')} labels, last of {result.get('epochs', '?')} epochs"


def write_report(
    run_dirs: list[str | Path],
    out: str | Path | None = None,
    embed_subset: int = 2000,
    device: str = "cpu",
    names: list[str] | None = None,
    pictures: bool = True,
    figures: str | Path | None = None,
) -> Path:
    """Write ``report.html`` and its PNGs to ``out`` (the run directory for one run,
    ``reports/<names>`` for several); returns the HTML path. ``names`` label the runs (their
    folder names by default); without ``pictures`` only the curves and the table are drawn
    (no ContrastiveCrop picture or embedding, which read the checkpoints). With ``figures``,
    every plot is also written there as PDF and SVG (fonts embedded as text: TrueType in the
    PDF, ``<text>`` in the SVG) and the results table as ``results.md`` and ``results.tex``."""
    with matplotlib.rc_context(PAPER_STYLE):
        return _write_report(run_dirs, out, embed_subset, device, names, pictures, figures)


PAPER_STYLE = {
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "pdf.fonttype": 42,  # TrueType, as journals ask; not Type 3
    "svg.fonttype": "none",  # text stays text
}
"""One style for every plot of the report and of ``--figures``."""


def _write_report(run_dirs, out, embed_subset, device, names, pictures, figures) -> Path:
    runs = [read_run(p) for p in run_dirs]
    for run, name in zip(runs, names or [], strict=False):
        run.name = name
    if out is None:
        out = (
            runs[0].path if len(runs) == 1 else Path("reports") / "_vs_".join(r.name for r in runs)
        )
    out = Path(out)
    images = out / "report"
    sections: list[tuple[str, str]] = []

    def add(title: str, figure: Figure | None, name: str) -> None:
        if figure is not None:
            save_figure(figure, images / name)
            sections.append((title, f"report/{name}"))
            if figures is not None:
                for suffix in (".pdf", ".svg"):
                    save_figure(figure, Path(figures) / Path(name).with_suffix(suffix))

    add("Loss", curve_figure(runs, loss_keys(runs), "training loss", "step"), "loss.png")
    add("Learning rate", curve_figure(runs, ["train/lr"], "learning rate", "step"), "lr.png")
    knn_title = f"kNN top-1 (%){knn_sizes_title(runs)}"
    knn = curve_figure(runs, ["knn/top1"], knn_title, "epochs trained (0: untrained)")
    add("kNN accuracy", knn, "knn.png")
    rank = curve_figure(
        runs,
        ["rankme/value", "rankme/feature_std"],
        "RankMe of the backbone's features (effective rank) and their spread (std x sqrt(d))",
        "epochs trained (0: untrained)",
    )
    add("RankMe (label-free: comparable within one method and backbone)", rank, "rankme.png")
    hardness = curve_figure(runs, hardness_keys(runs), hardness_title(runs), "step")
    add("Hardness of negatives", hardness, "hardness.png")
    boxes = curve_figure(
        runs,
        CCROP_KEYS,
        "ContrastiveCrop's boxes after each localisation (area as a share of the image)",
        "epochs trained",
    )
    add("ContrastiveCrop boxes", boxes, "ccrop_boxes.png")
    shown = {*loss_keys(runs), "train/lr", "knn/top1", "rankme/value", "rankme/feature_std"}
    shown |= set(hardness_keys(runs))
    other = other_keys(runs, shown | set(CCROP_KEYS))
    add("Every other logged curve", curve_figure(runs, other, "other curves", "step"), "other.png")
    for run in runs:
        _add_view_grids(run, images, sections)
        for name, result in run.results.items():
            if result.get("examples"):
                title = f"Detections after {name}: {run.name} ({transfer_text(result)})"
                add(title, detection_figure(result["examples"]), f"{name}_{run.name}.png")
    notes = []
    if pictures:
        notes += _add_pictures(runs, images, sections, embed_subset, device, add)
    if figures is not None:
        table = final_table(runs)
        atomic_write(Path(figures) / "results.md", lambda f: f.write(table.markdown().encode()))
        atomic_write(Path(figures) / "results.tex", lambda f: f.write(table.latex().encode()))
    return _write_html(out / "report.html", runs, sections, notes)


def _add_view_grids(run: Run, images: Path, sections: list[tuple[str, str]]) -> None:
    """The run's first and last view grids (``views/step_*.png``, :mod:`contrastlab.runs.
    view_grid`): each image beside the augmented views the model trained on."""
    grids = sorted((run.path / "views").glob("step_*.png"))
    for grid in dict.fromkeys([*grids[:1], *grids[-1:]]):
        step = int(grid.stem.removeprefix("step_"))
        name = f"views_{run.name}_{step}.png"
        images.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(grid, images / name)
        title = f"Views at step {step:,}: {run.name} (each image, then its augmented views)"
        sections.append((title, f"report/{name}"))


def _add_pictures(runs: list[Run], images: Path, sections, embed_subset: int, device: str, add):
    """The ContrastiveCrop picture of each run trained with it, and one embedding plot of all
    runs; returns notes on what could not be drawn."""
    notes = []
    for run in runs:
        if not run.checkpoint.is_file():
            notes.append(f"{run.name}: no checkpoints/last.ckpt, no crops or embedding")
            continue
        try:
            picture = run_crops(run, images / f"crops_{run.name}.png", device)
            if picture is not None:
                sections.append((f"ContrastiveCrop: {run.name}", f"report/{picture.name}"))
        except (OSError, ValueError) as error:
            notes.append(f"{run.name}: no crops picture ({error})")
    embeddings = []
    for run in runs:
        try:
            embeddings.append(run_embedding(run, embed_subset, device))
        except (OSError, ValueError) as error:
            notes.append(f"{run.name}: no embedding ({error})")
    if embeddings:
        add("Embedding of evaluation features", embedding_figure(embeddings), "embedding.png")
    return notes


def run_header(run: Run) -> list[tuple[str, str]]:
    """What the run was, as (label, text) pairs: preset and its card's title, the options given
    after it, the command, hardware, precision, wall time, speed, data wait and versions (from
    ``run.json`` and ``metrics.csv``; runs made before ``run.json`` show what the metrics have)."""
    info = read_run_info(run.path)
    rows: list[tuple[str, str]] = []
    if info.get("preset"):
        rows.append(("preset", f"{info['preset']}: {preset_title(info['preset'])}"))
    if info.get("options"):
        rows.append(("options after the preset", shlex.join(info["options"])))
    if info.get("command"):
        rows.append(("command", info["command"]))
    if info.get("device"):
        processes = info.get("processes", 1)
        plural = "es" if processes != 1 else ""
        rows.append(("hardware", f"{info['device']} x {processes} process{plural}"))
    if info.get("precision"):
        rows.append(("precision", info["precision"]))
    if info.get("wall_seconds"):
        epochs = f", epochs {info.get('epochs', run.epochs)}, steps {info.get('steps', '?')}"
        rows.append(("wall time", format_duration(info["wall_seconds"]) + epochs))
    speed = run.series.get("train/images_per_sec")
    if speed:
        rows.append(("images/s (last epoch)", f"{speed[-1][1]:,.1f}"))
    wait = run.series.get("train/data_wait")
    if wait:
        rows.append(("data wait (last epoch)", f"{wait[-1][1]:.0%} of step time"))
    if info.get("versions"):
        rows.append(("versions", ", ".join(f"{k} {v}" for k, v in info["versions"].items())))
    if info.get("resumed"):
        rows.append(("resumed", f"{len(info['resumed'])} time(s)"))
    return rows


def preset_title(name: str) -> str:
    from contrastlab.presets import load_card

    try:
        return load_card(name).title
    except (FileNotFoundError, ValueError):
        return "(no recipe card)"


def differing_settings(runs: list[Run]) -> ResultsTable | None:
    """The resolved settings (``config.yaml``, dotted keys) whose values differ between the
    runs, one row per setting and a column per run; ``None`` for one run or when they
    agree."""
    if len(runs) < 2:
        return None
    configs = [flatten(_read_config(run.path)) for run in runs]
    keys = sorted({k for c in configs for k in c} - {"trainer.default_root_dir"})
    differing = [k for k in keys if len({json.dumps(c.get(k), default=str) for c in configs}) > 1]
    if not differing:
        return None
    rows = [(key, [_cell(c.get(key)) for c in configs]) for key in differing]
    return ResultsTable([run.name for run in runs], rows, first="setting")


def _read_config(run_dir: Path) -> dict:
    try:
        return yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    """``{"model": {"init_args": {"lr": 0.1}}}`` -> ``{"model.init_args.lr": 0.1}``."""
    flat: dict[str, object] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat |= flatten(value, f"{name}.")
        else:
            flat[name] = value
    return flat


def _cell(value: object) -> str:
    return html.escape("" if value is None else json.dumps(value, default=str).strip('"'))


def wide(table: str) -> str:
    """A table that scrolls on its own when wider than the page."""
    return f"<div class='wide'>{table}</div>"


def _header_html(run: Run) -> str:
    rows = "".join(
        f"<tr><th>{html.escape(label)}</th><td>{html.escape(text)}</td></tr>"
        for label, text in run_header(run)
    )
    return f"<h2>{html.escape(run.name)}</h2><table class='header'>{rows}</table>" if rows else ""


PAGE_CHECK = """<pre id="page-check" hidden></pre><script>
addEventListener("load", () => {
  const images = [...document.images];
  const broken = images.filter((i) => !(i.complete && i.naturalWidth > 0));
  const root = document.documentElement;
  document.getElementById("page-check").textContent = JSON.stringify({
    images: images.length,
    broken: broken.map((i) => i.getAttribute("src")),
    overflow: root.scrollWidth > root.clientWidth,
  });
});
</script>"""
"""What a browser found once the page loaded (images that did not load, a page wider than the
window), in a hidden element that a headless browser's DOM dump shows (the report's test)."""


def _write_html(path: Path, runs: list[Run], sections, notes: list[str]) -> Path:
    names = ", ".join(html.escape(r.name) for r in runs)
    body = [f"<h1>contrastlab report: {names}</h1>"]
    body += [_header_html(run) for run in runs]
    differing = differing_settings(runs)
    if differing is not None:
        body.append(f"<h2>Settings that differ between the runs</h2>{wide(differing.html())}")
    body += ["<h2>Results</h2>", wide(final_table(runs).html())]
    body += [
        f"<h2>{html.escape(t)}</h2><img src='{src}' alt='{html.escape(t)}'>" for t, src in sections
    ]
    if notes:
        body.append(
            "<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>"
        )
    style = (
        "body{font-family:sans-serif;max-width:1400px;margin:2em auto;padding:0 1em}"
        "img{max-width:100%}.wide{overflow-x:auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}"
        "table.header td{overflow-wrap:anywhere}"
    )
    head = f"<meta charset='utf-8'><title>contrastlab report</title><style>{style}</style>"
    body.append(PAGE_CHECK)
    page = f"<!doctype html><html><head>{head}</head><body>{''.join(body)}</body></html>\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page)
    return path


def finite(values: Series) -> Series:
    """The points of a series whose value is a finite number."""
    return [(x, y) for x, y in values if math.isfinite(y)]
