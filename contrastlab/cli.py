"""The ``contrastlab`` command.

``contrastlab fit --config cifar10/mocov2 [--trainer.max_epochs 2 --data.root DIR ...]``
pretrains (Lightning's CLI: constructor signatures are the config schema); ``--resume [PATH]``
continues from a checkpoint (``last.ckpt`` of the run directory by default).
``contrastlab knn --checkpoint PATH`` evaluates a checkpoint with weighted kNN.
``contrastlab crops --checkpoint PATH --out crops.png`` draws what the encoder attends to:
heatmaps, ContrastiveCrop boxes and sampled crops of training images.
"""

from __future__ import annotations

import difflib
import re
import sys
from importlib import resources
from pathlib import Path

import torch

COMMANDS = ("fit", "knn", "crops", "presets")


def preset_dir() -> Path:
    return Path(str(resources.files("contrastlab") / "configs"))


def list_presets() -> list[str]:
    root = preset_dir()
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))


def resolve_config(value: str) -> str:
    """A YAML path as given, or a shipped preset name such as ``cifar10/mocov2``."""
    if Path(value).is_file():
        return value
    preset = preset_dir() / f"{value.removesuffix('.yaml')}.yaml"
    if preset.is_file():
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


def suggest_keys(message: str, valid: list[str]) -> str:
    """Append the closest valid keys to each unknown key named in a parser error."""
    unknown = re.findall(r"--([\w.]+)", message)
    parent = re.search(r'Parser key "([\w.]+)"', message)
    for option in re.findall(r"Option '([\w.]+)' is not accepted", message):
        unknown.append(f"{parent.group(1)}.{option}" if parent else option)
    hints = []
    for key in dict.fromkeys(unknown):
        if key in valid:
            continue
        close = difflib.get_close_matches(key, valid, n=3, cutoff=0.6)
        siblings = [v for v in valid if v.rsplit(".", 1)[0] == key.rsplit(".", 1)[0]]
        options = close or siblings[:12]
        if options:
            hints.append(f"'{key}' is not a valid key; valid alternatives: {', '.join(options)}")
    return "\n".join([message, *hints])


def default_precision() -> str:
    """bf16 autocast on GPUs that support it, fp16 on older GPUs, fp32 on CPUs (bf16 autocast
    measured no faster than fp32 on the AVX512-BF16 CPU of bench/RESULTS.md)."""
    if torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def fit(args: list[str]) -> None:
    from contrastlab.training import ContrastCLI

    argv, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI warns when argv and args both exist
    try:
        ContrastCLI(args=["fit", *rewrite_fit_args(args)])
    finally:
        sys.argv = argv


def knn(args: list[str]) -> None:
    import argparse

    from contrastlab.evaluate import knn_from_checkpoint

    parser = argparse.ArgumentParser(
        prog="contrastlab knn", description="Weighted kNN accuracy of a checkpoint."
    )
    parser.add_argument("--checkpoint", required=True, help="a contrastlab .ckpt file")
    parser.add_argument("--k", type=int, default=200, help="neighbours (default 200)")
    parser.add_argument("--t", type=float, default=0.1, help="temperature (default 0.1)")
    parser.add_argument(
        "--data.root",
        dest="root",
        default=None,
        help="data root (default: the one the checkpoint was trained with)",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    options = parser.parse_args(args)
    top1 = knn_from_checkpoint(
        options.checkpoint, options.k, options.t, options.root, options.device
    )
    print(f"kNN top-1 {top1:.2f}% (k={options.k}, t={options.t}) {options.checkpoint}")


def crops(args: list[str]) -> None:
    import argparse

    from contrastlab.data.datasets import images_at
    from contrastlab.evaluate import data_from_checkpoint, method_from_checkpoint
    from contrastlab.figures import crop_picture, draw_crop_picture, save_figure
    from contrastlab.training import load_checkpoint_file

    parser = argparse.ArgumentParser(
        prog="contrastlab crops",
        description="Draw training images with the encoder's heatmap, its ContrastiveCrop box "
        "and sampled crops.",
    )
    parser.add_argument("--checkpoint", required=True, help="a contrastlab .ckpt file")
    parser.add_argument("--out", default="crops.png", help="image file (default crops.png)")
    parser.add_argument("--images", type=int, default=8, help="rows (default 8)")
    parser.add_argument("--crops", type=int, default=4, help="crops per image (default 4)")
    parser.add_argument("--threshold", type=float, default=None, help="default: the run's")
    parser.add_argument("--alpha", type=float, default=None, help="default: the run's")
    parser.add_argument("--seed", type=int, default=0, help="which images and crops")
    parser.add_argument("--data.root", dest="root", default=None, help="default: the run's")
    options = parser.parse_args(args)
    checkpoint = load_checkpoint_file(options.checkpoint)
    model = method_from_checkpoint(checkpoint)
    data = data_from_checkpoint(checkpoint, options.root)
    data.setup("fit")
    generator = torch.Generator().manual_seed(options.seed)
    count = min(options.images, len(data.train_set))
    indices = torch.randperm(len(data.train_set), generator=generator)[:count]
    picture = crop_picture(
        model,
        images_at(data.train_set, indices),
        indices,
        options.crops,
        options.threshold,
        options.alpha,
        options.seed,
    )
    title = f"{Path(options.checkpoint).name}, epoch {checkpoint.get('epoch', '?')}"
    out = save_figure(draw_crop_picture(picture, title), options.out)
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        print(f"\ncommands: {', '.join(COMMANDS)}; presets: {', '.join(list_presets())}")
        return
    from contrastlab.data.readers import DatasetError

    try:
        run(argv[0], argv[1:])
    except DatasetError as error:
        raise SystemExit(f"contrastlab: data error: {error}") from None


def run(command: str, rest: list[str]) -> None:
    if command == "fit":
        fit(rest)
    elif command == "knn":
        knn(rest)
    elif command == "crops":
        crops(rest)
    elif command == "presets":
        print("\n".join(list_presets()))
    else:
        close = difflib.get_close_matches(command, COMMANDS, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise SystemExit(
            f"contrastlab: unknown command {command!r}{hint}; expected one of {', '.join(COMMANDS)}"
        )
