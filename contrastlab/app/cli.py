"""The ``contrastlab`` command.

``contrastlab fit --config cifar10/mocov2 [--trainer.max_epochs 2 --data.root DIR ...]``
pretrains (Lightning's CLI: constructor signatures are the config schema); ``--resume [PATH]``
continues from a checkpoint (``last.ckpt`` of the run directory by default).
``contrastlab knn --checkpoint PATH [--k 20 200 --t 0.1]`` evaluates a checkpoint with weighted
kNN; ``contrastlab linear --checkpoint PATH [--mode fast|paper]`` with a linear probe;
``contrastlab finetune --checkpoint PATH --labels 1%|10%|N`` fine-tunes on a class-balanced
labelled subset; ``contrastlab export --checkpoint PATH --out F --format
safetensors|torchvision|timm|detectron2`` writes the backbone for other tools.
``contrastlab transfer --task voc-c4 --checkpoint PATH --data.root VOCdevkit`` fine-tunes the
backbone at the papers' detection protocol (Faster R-CNN R50-C4 on VOC07+12) and tests it.
``contrastlab crops --checkpoint PATH --out crops.png`` draws what the encoder attends to:
heatmaps, ContrastiveCrop boxes and sampled crops of training images.
``contrastlab embed --checkpoint PATH --folder DIR`` (or ``--split NAME``) writes one embedding
per image, ``embeddings.npy`` beside ``files.txt``, resumably.
``contrastlab report RUN_DIR [RUN_DIR ...]`` writes an HTML report (curves, kNN, hardness,
crops, embedding), comparing runs when given several.
``contrastlab reproduce --grid cifar10 --scale smoke|paper [--seeds 0 1 2 --budget-minutes M]``
runs a grid of experiments (each cell an ordinary ``fit`` run directory), resumably, and
writes ``results.md``, ``results.json`` and a report comparing the cells.
``--verbose`` (any command) brings back Lightning's banners, warnings and full parser errors.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import shlex
import sys
from pathlib import Path

import torch

from contrastlab.presets import list_presets, preset_path

COMMANDS = (
    "fit",
    "knn",
    "linear",
    "finetune",
    "export",
    "transfer",
    "crops",
    "embed",
    "report",
    "reproduce",
    "presets",
)


def resolve_config(value: str) -> str:
    """A YAML path as given, or a shipped preset name such as ``cifar10/mocov2``."""
    if Path(value).is_file():
        return value
    preset = preset_path(value)
    if preset is not None:
        return str(preset)
    close = difflib.get_close_matches(value, list_presets(), n=3, cutoff=0.4)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise SystemExit(
        f"contrastlab: --config {value!r} is neither a file nor a preset.{hint} "
        f"Presets: {', '.join(list_presets())}"
    )


def rewrite_fit_args(args: list[str]) -> list[str]:
    """Resolve preset names after ``--config`` and turn ``--resume [PATH]`` into
    Lightning's ``--ckpt_path`` (``last`` when no path is given)."""
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--config="):
            out.append(f"--config={resolve_config(arg.split('=', 1)[1])}")
        elif arg == "--config" and i + 1 < len(args):
            out += ["--config", resolve_config(args[i + 1])]
            i += 1
        elif arg == "--resume":
            has_value = i + 1 < len(args) and not args[i + 1].startswith("--")
            out += ["--ckpt_path", args[i + 1] if has_value else "last"]
            i += int(has_value)
        elif arg.startswith("--resume="):
            out += ["--ckpt_path", arg.split("=", 1)[1]]
        else:
            out.append(arg)
        i += 1
    return out


FIT_HELP = """
contrastlab's own options of fit (besides --checkpoint.* and --rankme.* above):
  --resume [PATH]       continue from PATH, or from <run dir>/checkpoints/last.ckpt
  --verbose             Lightning's banners, warnings and the parser's whole messages
  --config PRESET       a shipped preset (contrastlab presets) or a YAML file; given before
                        --help, its values show as the defaults
A framework's options (with its plug-ins'): contrastlab fit --model.help MoCoV2 (or SimCLR,
BYOL, SimSiam)."""


def fit(args: list[str]) -> None:
    """Train; a user's mistake, a failed save or a diverged loss ends in one line and a non-zero
    exit, and so does a stop by signal (``128 + signum``, after saving). ``--help`` ends with
    :data:`FIT_HELP`, what Lightning's help cannot list."""
    from contrastlab.app.fit import ContrastCLI

    argv, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI warns when argv and args both exist
    try:
        with run_endings("fit"):
            ContrastCLI(args=["fit", *rewrite_fit_args(args)], given=args)
    finally:
        sys.argv = argv
        if "-h" in args or "--help" in args:
            print(FIT_HELP)


@contextlib.contextmanager
def run_endings(command: str, mistakes: tuple[type[Exception], ...] = ()):
    """How a long run ends when it does not finish: a stop by signal after saving exits
    ``128 + signum`` (requeueing a SLURM job that asked for it) and says how to continue; a
    user's mistake (an option error, or one of ``mistakes``: the evaluation commands' bad
    values), a failed save or a diverged loss ends in one line and exit 1."""
    from contrastlab.app.fit import RunDirectoryError
    from contrastlab.options import OptionError
    from contrastlab.runs.checkpoints import CheckpointWriteError, NonFiniteLoss, RunStopped
    from contrastlab.runs.signals import exit_code, requeue_slurm_job, slurm_job_id

    try:
        yield
    except RunStopped as stop:
        job = slurm_job_id()
        requeued = ""
        if job is not None and stop.requeue and _rank() == 0:
            requeued = f"; {requeue_slurm_job(job)}"
        print(f"contrastlab {command}: {stop}; continue with --resume{requeued}", file=sys.stderr)
        raise SystemExit(exit_code(stop.signum)) from None
    except (
        OptionError,
        RunDirectoryError,
        CheckpointWriteError,
        NonFiniteLoss,
        *mistakes,
    ) as error:
        raise SystemExit(f"contrastlab {command}: {error}") from None


def _rank() -> int:
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    return rank_zero_only.rank


def add_subset_options(parser, *names: str) -> None:
    """``--data.<name>`` (as ``fit`` spells it; ``--<name with dashes>`` still parses): a seeded
    subset of the split."""
    for name in names:
        dashed = f"--{name.replace('_', '-')}"
        parser.add_argument(
            f"--data.{name}", dashed, dest=name, type=int, default=None, help="seeded subset size"
        )


def _checkpoint_parser(prog: str, description: str):
    import argparse

    parser = argparse.ArgumentParser(prog=f"contrastlab {prog}", description=description)
    parser.add_argument("--checkpoint", required=True, help="a contrastlab .ckpt file")
    parser.add_argument(
        "--data.root", dest="root", default=None, help="default: the run's data root"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser


def add_run_options(parser) -> None:
    """Options of the commands that train on an image folder on the run machinery (the paper
    linear probe, fine-tuning): processes, precision, workers and resuming."""
    group = parser.add_argument_group(
        "image folders (streamed, checkpointed every epoch; under torchrun, --devices and "
        "--num-nodes must match its processes)"
    )
    group.add_argument("--devices", type=int, default=1, help="processes per node (1)")
    group.add_argument("--num-nodes", type=int, default=1, help="nodes (1)")
    group.add_argument(
        "--precision", default=None, help="Lightning precision (default: bf16-mixed where fast)"
    )
    group.add_argument("--workers", type=int, default=None, help="data-loader workers per process")
    group.add_argument(
        "--resume", action="store_true", help="continue the stopped run from its last.ckpt"
    )
    group.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_launch(o):
    from contrastlab.app.classify import Launch

    return Launch(
        accelerator="gpu" if str(o.device).startswith("cuda") else "cpu",
        devices=o.devices,
        num_nodes=o.num_nodes,
        precision=o.precision,
        workers=o.workers,
        progress=not o.no_progress,
    )


def knn(args: list[str]) -> None:
    from contrastlab.app.evaluate import knn_grid

    parser = _checkpoint_parser("knn", "Weighted kNN accuracy of a checkpoint (cached features).")
    parser.add_argument("--k", type=int, nargs="+", default=[200], help="neighbours (200)")
    parser.add_argument("--t", type=float, nargs="+", default=[0.1], help="temperature (0.1)")
    parser.add_argument("--bank-split", default=None, help="labelled bank split (train)")
    parser.add_argument("--eval-split", default=None, help="query split (test / val)")
    add_subset_options(parser, "train_subset", "eval_subset")
    o = parser.parse_args(args)
    grid = knn_grid(
        path=o.checkpoint,
        ks=o.k,
        ts=o.t,
        root=o.root,
        device=o.device,
        bank_split=o.bank_split,
        eval_split=o.eval_split,
        train_subset=o.train_subset,
        eval_subset=o.eval_subset,
    )
    print("\n".join(grid.lines(o.checkpoint)))


def linear(args: list[str]) -> None:
    from contrastlab.app.evaluate import linear_probe

    parser = _checkpoint_parser("linear", "Linear probe on the frozen backbone (BN in eval).")
    parser.add_argument(
        "--mode",
        choices=["fast", "paper"],
        default="fast",
        help="fast: cached centre-view features (seconds); paper: augmented images each epoch",
    )
    parser.add_argument("--epochs", type=int, default=100, help="100; lr x0.1 at 60%% and 80%%")
    parser.add_argument(
        "--lr",
        type=float,
        default=None,
        help="SGD lr (paper: the dataset's protocol, 10 on CIFAR/STL-10/Tiny ImageNet, 30 on "
        "ImageNet folders; fast: chosen among 0.1-10 on a held-out 10%% of the training split)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="paper: the dataset's protocol (512 on CIFAR/STL-10/Tiny ImageNet, 256 on "
        "ImageNet folders); fast: 256",
    )
    add_subset_options(parser, "train_subset", "eval_subset")
    add_run_options(parser)
    o = parser.parse_args(args)
    with run_endings("linear", (ValueError,)):
        result = linear_probe(
            path=o.checkpoint,
            mode=o.mode,
            epochs=o.epochs,
            lr=o.lr,
            batch_size=o.batch_size,
            train_subset=o.train_subset,
            eval_subset=o.eval_subset,
            root=o.root,
            device=o.device,
            launch=run_launch(o),
            resume=o.resume,
        )
    if _rank() == 0:
        print(result.summary())


def finetune(args: list[str]) -> None:
    from contrastlab.app.evaluate import finetune_checkpoint

    parser = _checkpoint_parser("finetune", "Fine-tune on a class-balanced labelled subset.")
    parser.add_argument(
        "--labels",
        default="1%",
        help="1%%, 10%% (of each class), a count N, or a file listing the labelled images one "
        "per line (SimCLR's subset lists: image file names; or dataset indices)",
    )
    parser.add_argument(
        "--epochs", type=int, default=None, help="60 for 1%% of the labels, else 30 (SynCo's)"
    )
    parser.add_argument(
        "--lr",
        type=float,
        default=None,
        help="backbone lr (image folders: 0.005, SynCo's; in memory: 0.01)",
    )
    parser.add_argument(
        "--head-lr", type=float, default=None, help="classifier lr (image folders: 0.5; else 0.1)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="global batch (image folders: 1024; else 256)"
    )
    parser.add_argument(
        "--sweep",
        type=float,
        nargs="*",
        default=None,
        help="image folders: choose the backbone lr among these (none given: SynCo's 0.005 0.01 "
        "0.02 0.05 0.1) on a held-out 10%% of the labelled images, then train on all of them",
    )
    add_subset_options(parser, "eval_subset")
    parser.add_argument("--seed", type=int, default=0, help="which labelled subset")
    add_run_options(parser)
    o = parser.parse_args(args)
    from contrastlab.eval.classifier import SEMISUP_BACKBONE_LRS

    sweep = () if o.sweep is None else tuple(o.sweep or SEMISUP_BACKBONE_LRS)
    with run_endings("finetune", (ValueError,)):
        result = finetune_checkpoint(
            path=o.checkpoint,
            labels=o.labels,
            epochs=o.epochs,
            lr=o.lr,
            head_lr=o.head_lr,
            batch_size=o.batch_size,
            eval_subset=o.eval_subset,
            seed=o.seed,
            root=o.root,
            device=o.device,
            sweep=sweep,
            launch=run_launch(o),
            resume=o.resume,
        )
    if _rank() == 0:
        print(result.summary())


def transfer(args: list[str]) -> None:
    import argparse

    from contrastlab.app.transfer import RANDOM, summary
    from contrastlab.app.transfer import transfer as run_transfer
    from contrastlab.transfer.tasks import TASKS, configure

    parser = argparse.ArgumentParser(
        prog="contrastlab transfer",
        description="Fine-tune a pretrained backbone at a detection protocol and test it.",
    )
    parser.add_argument(
        "--task",
        required=True,
        choices=sorted(TASKS),
        help="voc-c4: Faster R-CNN R50-C4 on VOC07+12; coco-c4-1x, coco-c4-2x: Mask R-CNN R50-C4 "
        "on COCO; coco-fpn-1x: Mask R-CNN R50-FPN (SyncBN heads) on COCO",
    )
    parser.add_argument(
        "--checkpoint",
        required=True,
        help=f"a contrastlab .ckpt, an export (with its .json), or '{RANDOM}' (with --backbone)",
    )
    parser.add_argument("--backbone", default=None, help="the ResNet of --checkpoint random")
    parser.add_argument(
        "--data.root",
        dest="root",
        required=True,
        help="the VOCdevkit folder, or COCO's (annotations/, train2017/, val2017/)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="run folder (default: <run dir>/eval/transfer_<task>)",
    )
    parser.add_argument("--batch-size", type=int, default=16, help="global batch (16)")
    parser.add_argument("--seed", type=int, default=0)
    small = parser.add_argument_group("smaller settings than the protocol's (never the defaults)")
    small.add_argument(
        "--iterations", type=int, default=None, help="24000 (VOC), 90000 (1x); steps keep fractions"
    )
    small.add_argument("--lr", type=float, default=None, help="for 16 images (0.02; SynCo 0.01)")
    small.add_argument(
        "--train-sizes",
        type=int,
        nargs="+",
        default=None,
        help="480 512 ... 800 (VOC), 640 ... 800 (COCO); tests at the largest",
    )
    small.add_argument("--max-size", type=int, default=None, help="longer-side cap (1333)")
    small.add_argument("--precise-bn-iterations", type=int, default=None, help="200")
    small.add_argument("--warmup-iterations", type=int, default=None, help="100 (VOC), 1000 (COCO)")
    small.add_argument("--roi-batch", type=int, default=None, help="regions per image (512)")
    small.add_argument(
        "--test-proposals", type=int, default=None, help="proposals per test image (1000)"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_run_options(parser)
    o = parser.parse_args(args)
    with run_endings("transfer", (ValueError,)):
        task = configure(
            TASKS[o.task],
            iterations=o.iterations,
            lr=o.lr,
            train_sizes=tuple(o.train_sizes) if o.train_sizes else None,
            max_size=o.max_size,
            precise_bn_iterations=o.precise_bn_iterations,
            warmup_iterations=o.warmup_iterations,
            roi_batch=o.roi_batch,
            test_proposals=o.test_proposals,
        )
        result = run_transfer(
            task,
            o.checkpoint,
            o.root,
            batch=o.batch_size,
            arch=o.backbone,
            run_dir=o.out,
            launch=run_launch(o),
            resume=o.resume,
            seed=o.seed,
        )
    if _rank() == 0 and result:
        print(summary(result))


def export(args: list[str]) -> None:
    from contrastlab.app.export import FORMATS, export_backbone
    from contrastlab.runs.resume import load_checkpoint_file, method_from_checkpoint

    parser = _checkpoint_parser("export", "Write the pretrained backbone for another tool.")
    parser.add_argument("--format", choices=FORMATS, required=True)
    parser.add_argument("--out", required=True, help="output file (.safetensors / .pth / .pkl)")
    o = parser.parse_args(args)
    model = method_from_checkpoint(load_checkpoint_file(o.checkpoint))
    out = export_backbone(model, o.format, o.out)
    print(f"wrote {out} ({o.format}; how to load it: {out}.json)")


def embed(args: list[str]) -> None:
    from contrastlab.app.evaluate import embed_checkpoint
    from contrastlab.eval.embed import LOAD_LINES

    parser = _checkpoint_parser(
        "embed",
        "One embedding per image (the backbone's features of the centre view) as "
        "embeddings.npy + files.txt; rerun the same command to continue an interrupted run.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--folder", help="an image folder (flat, or with class sub-folders)")
    source.add_argument("--split", help="a split of the run's dataset (train, test, val, ...)")
    parser.add_argument("--out", default=None, help="default: <run dir>/embeddings/<name>")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    o = parser.parse_args(args)
    result = embed_checkpoint(
        path=o.checkpoint,
        folder=o.folder,
        split=o.split,
        out=o.out,
        root=o.root,
        device=o.device,
        batch_size=o.batch_size,
        workers=o.workers,
    )
    print(f"{result.summary()}; load them with:\n{LOAD_LINES}")


def report(args: list[str]) -> None:
    import argparse

    from contrastlab.app.report import write_report

    parser = argparse.ArgumentParser(
        prog="contrastlab report", description="An HTML report of one run, or several compared."
    )
    parser.add_argument("runs", nargs="+", help="run directories (trainer.default_root_dir)")
    parser.add_argument("--out", default=None, help="default: the run dir / reports/<names>")
    parser.add_argument("--embed-subset", type=int, default=2000, help="points in the PCA plot")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--figures",
        default=None,
        help="also write every plot as PDF and SVG, and the results table as Markdown and "
        "LaTeX, into this folder",
    )
    o = parser.parse_args(args)
    page = write_report(o.runs, o.out, o.embed_subset, o.device, figures=o.figures)
    print(f"wrote {page}" + (f"; figures and tables in {o.figures}" if o.figures else ""))


def crops(args: list[str]) -> None:
    from contrastlab.app.evaluate import write_crop_picture

    parser = _checkpoint_parser(
        "crops", "Training images with the encoder's heatmap, ContrastiveCrop box and crops."
    )
    parser.add_argument("--out", default="crops.png", help="image file (default crops.png)")
    parser.add_argument("--images", type=int, default=8, help="rows (default 8)")
    parser.add_argument("--crops", type=int, default=4, help="crops per image (default 4)")
    parser.add_argument("--threshold", type=float, default=None, help="default: the run's")
    parser.add_argument("--alpha", type=float, default=None, help="default: the run's")
    parser.add_argument("--seed", type=int, default=0, help="which images and crops")
    o = parser.parse_args(args)
    out = write_crop_picture(
        checkpoint_path=o.checkpoint,
        out=o.out,
        images=o.images,
        crops=o.crops,
        threshold=o.threshold,
        alpha=o.alpha,
        seed=o.seed,
        root=o.root,
        device=o.device,
    )
    print(f"wrote {out}")


def presets(args: list[str]) -> None:
    """``contrastlab presets``: every preset with its card's title; ``contrastlab presets NAME``:
    the preset's recipe card (each setting beside its source's, and why any differs)."""
    import argparse

    from contrastlab.presets import format_card, load_card

    parser = argparse.ArgumentParser(
        prog="contrastlab presets",
        description="List the shipped presets, or print one preset's recipe card: each setting "
        "beside the value its source (an author's configuration, or another preset) gives it, "
        "with where the source states it and why any value differs.",
    )
    parser.add_argument("name", nargs="?", help="a preset, such as cifar10/simclr")
    name = parser.parse_args(args).name
    if name is None:
        names = list_presets()
        width = max(map(len, names))
        for preset in names:
            print(f"{preset:<{width}}  {load_card(preset).title}")
        return
    if preset_path(name) is None:
        close = difflib.get_close_matches(name, list_presets(), n=3, cutoff=0.4)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise SystemExit(f"contrastlab presets: no preset {name!r}{hint}")
    print(format_card(name.removesuffix(".yaml")))


def reproduce(args: list[str]) -> None:
    import argparse

    from contrastlab.app.reproduce import GridError, Request
    from contrastlab.app.reproduce import reproduce as run_grid

    split = args.index("--") if "--" in args else len(args)
    parser = argparse.ArgumentParser(
        prog="contrastlab reproduce",
        description="Run a grid of experiments (resumable, budgeted) and tabulate them.",
        epilog="Options after -- go to every cell's `contrastlab fit` (after the grid's own).",
    )
    parser.add_argument("--grid", default="cifar10", help="a shipped grid or a YAML file")
    parser.add_argument("--scale", default="smoke", help="smoke (minutes on a CPU) or paper")
    parser.add_argument("--out", type=Path, default=None, help="runs/reproduce/<grid>_<scale>")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds (0)")
    parser.add_argument("--epochs", type=int, default=None, help="default: the scale's")
    parser.add_argument("--only", nargs="+", default=[], help="cell name patterns (fnmatch)")
    parser.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], default="auto", help="where cells train"
    )
    parser.add_argument(
        "--budget-minutes",
        type=float,
        default=None,
        help="stop cleanly after this long (the running cell saves); rerun to continue",
    )
    parser.add_argument(
        "--linear",
        nargs="?",
        const="fast",
        choices=["fast", "paper"],
        default=None,
        help="also a linear probe of every cell: fast (cached features, lr chosen on held-out "
        "training images; the default) or paper (the dataset's protocol on augmented images, "
        "e.g. lr 10 and batch 512 on CIFAR, both the last and the best epoch reported)",
    )
    parser.add_argument(
        "--probe-epochs", type=int, default=100, help="the linear probe's epochs (100)"
    )
    parser.add_argument(
        "--data.root", "--data-root", dest="data_root", default=None, help="the dataset's root"
    )
    parser.add_argument(
        "--transfer",
        default=None,
        help="also `contrastlab transfer --task TASK` of every cell (cells need the ImageNet "
        "stem: -- --model.cifar_stem false), e.g. voc-c4",
    )
    parser.add_argument(
        "--transfer.root", dest="transfer_root", default=None, help="the detection dataset"
    )
    parser.add_argument(
        "--transfer.options",
        dest="transfer_options",
        default="",
        help='options for each transfer, e.g. "--iterations 2400 --devices 8"',
    )
    parser.add_argument("--no-report", action="store_true", help="skip report.html")
    o = parser.parse_args(args[:split])
    if o.budget_minutes is not None and o.budget_minutes <= 0:
        parser.error(f"--budget-minutes {o.budget_minutes}: expected a positive number")
    if o.transfer is not None:
        from contrastlab.transfer.tasks import TASKS

        if o.transfer not in TASKS:
            parser.error(f"--transfer {o.transfer}: expected one of {', '.join(sorted(TASKS))}")
        if o.transfer_root is None:
            parser.error("--transfer needs --transfer.root (the VOCdevkit or COCO folder)")
    request = Request(
        grid=o.grid,
        scale=o.scale,
        out=o.out,
        seeds=tuple(o.seeds),
        epochs=o.epochs,
        only=tuple(o.only),
        device=o.device,
        budget_minutes=o.budget_minutes,
        linear=o.linear,
        probe_epochs=o.probe_epochs,
        transfer=o.transfer,
        transfer_root=o.transfer_root,
        transfer_options=tuple(shlex.split(o.transfer_options)),
        data_root=o.data_root,
        report=not o.no_report,
        options=tuple(args[split + 1 :]),
    )
    try:
        summary = run_grid(request)
    except GridError as error:
        raise SystemExit(f"contrastlab reproduce: {error}") from None
    if summary["stopped_by_signal"] is not None:
        raise SystemExit(128 + summary["stopped_by_signal"])
    if any(c["status"] == "failed" for c in summary["cells"]):
        raise SystemExit(1)


def show_notes_as_lines() -> None:
    """Print contrastlab's :class:`~contrastlab.options.Note` warnings as one line each,
    ``contrastlab: <message>``, once per message; other warnings as Python prints them."""
    import warnings

    from contrastlab.options import Note

    plain = warnings.formatwarning

    def format_warning(message, category, filename, lineno, line=None) -> str:
        if issubclass(category, Note):
            return f"contrastlab: {message}\n"
        return plain(message, category, filename, lineno, line)

    warnings.formatwarning = format_warning
    warnings.filterwarnings("once", category=Note)


def main(argv: list[str] | None = None) -> None:
    from contrastlab.app.console import take_verbose_flag

    argv = take_verbose_flag(list(sys.argv[1:] if argv is None else argv))
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        print(f"\ncommands: {', '.join(COMMANDS)}; presets: {', '.join(list_presets())}")
        return
    from contrastlab.data.readers import DatasetError
    from contrastlab.runs.resume import CheckpointError

    show_notes_as_lines()
    try:
        run(argv[0], argv[1:])
    except DatasetError as error:
        raise SystemExit(f"contrastlab: data error: {error}") from None
    except (CheckpointError, FileNotFoundError) as error:
        raise SystemExit(f"contrastlab {argv[0]}: {error}") from None
    from contrastlab.distributed import leave_process_group

    leave_process_group()


def run(command: str, rest: list[str]) -> None:
    handlers = {
        "fit": fit,
        "embed": embed,
        "knn": knn,
        "linear": linear,
        "finetune": finetune,
        "export": export,
        "transfer": transfer,
        "crops": crops,
        "report": report,
        "reproduce": reproduce,
    }
    if command in handlers:
        from contrastlab.app.console import quiet_third_parties

        quiet_third_parties()
        handlers[command](rest)
    elif command == "presets":
        presets(rest)
    else:
        close = difflib.get_close_matches(command, COMMANDS, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise SystemExit(
            f"contrastlab: unknown command {command!r}{hint}; expected one of {', '.join(COMMANDS)}"
        )
