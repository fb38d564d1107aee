"""Does a contrastlab-pretrained backbone transfer better than a random one, in a configuration
small enough for a CPU? MoCo v2 pretrains a ResNet-18 (ImageNet stem) on the tests' scene
photos (tests/scenes.py: red discs and blue squares pasted on photo-like backgrounds), then
``contrastlab transfer --task voc-c4`` fine-tunes it and a randomly initialised ResNet-18 for
the same iterations; the script prints both AP50 / AP per seed, the mean training loss over
each run's last quarter of iterations (its late loss) and the seconds each part took.
The scenes hold two of VOC's twenty classes (cat, dog) and VOC AP averages over all twenty
(a class without boxes counts 0), so the AP50 printed here is the mean over cat and dog:
``20 / 2`` times the task's reported AP50.

    python bench/transfer_learning.py --pretrain-images 512 --pretrain-epochs 20 \
        --iterations 150 --seeds 0 1 2

``--supervised-steps N`` replaces the MoCo v2 pretraining by a supervised one (the same
ResNet-18 taught to tell cat and dog objects and background apart on crops of other scenes,
``N`` steps of 32): what a backbone whose features know the classes gains in the same runs, an
upper bound for what the self-supervised one could. ``--sides A B`` draws the objects' sides
from ``range(A, B)`` px (14-40 by default, the tests' scenes; 28-56 fits the RPN's 32- and
64-px anchors).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import numpy as np
import torch
import torch.nn.functional as F
from scenes import scene, write_scene_devkit

from contrastlab.app.cli import main as cli
from contrastlab.app.transfer import torchvision_resnet
from contrastlab.runs.records import METRICS_FILE, read_rows

PRESENT = ("cat", "dog")
"""The scenes' classes (tests/scenes.py)."""


def write_photos(root: Path, count: int, sides: tuple[int, int]) -> Path:
    """``count`` scene photos (other seeds than the devkit's) as a one-class folder dataset."""
    for split, n in (("train", count), ("val", 16)):
        folder = root / split / "scenes"
        folder.mkdir(parents=True)
        for i in range(n):
            scene(50_000 + i + (0 if split == "train" else count), sides)[0].save(
                folder / f"{i}.jpg"
            )
    return root


def pretrain(photos: Path, run: Path, epochs: int, size: int, seed: int, extra: list[str]) -> Path:
    cli(
        [
            "fit", "--config", "cifar10/mocov2", "--data.dataset", "folder",
            "--data.lazy", "true", "--data.root", str(photos),
            "--trainer.default_root_dir", str(run), "--trainer.accelerator", "cpu",
            "--trainer.max_epochs", str(epochs), "--trainer.enable_progress_bar", "false",
            "--trainer.check_val_every_n_epoch", "1000", "--seed_everything", str(seed),
            "--model.cifar_stem", "false", "--model.bn_splits", "4",
            "--model.augment.size", str(size), "--model.queue_size", "512",
            "--data.batch_size", "64", "--data.eval_batch_size", "64", "--data.num_workers", "0",
            *extra,
        ]
    )  # fmt: skip
    return run / "checkpoints" / "last.ckpt"


def labelled_crops(
    count: int, size: int, seed: int, sides: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` crops of other scenes than the devkit's at ``size``: each object with a margin
    of 2-9 px (label 0 cat, 1 dog) and one background square per scene (label 2), normalised
    with ImageNet's mean and std as the detector normalises."""
    rng = np.random.default_rng(seed)
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    crops, labels = [], []
    for n in itertools.count(50_000):
        if len(crops) >= count:
            break
        picture, objects = scene(n, sides)
        image = (torch.from_numpy(np.array(picture)).permute(2, 0, 1) / 255 - mean) / std
        height, width = image.shape[-2:]
        regions = []
        for name, (x0, y0, x1, y1) in objects:  # 1-based inclusive pixels
            margin = int(rng.integers(2, 10))
            box = (
                max(0, x0 - 1 - margin),
                max(0, y0 - 1 - margin),
                min(width, x1 + margin),
                min(height, y1 + margin),
            )
            regions.append((box, name))
        side = int(rng.integers(16, 40))
        left, top = int(rng.integers(0, width - side)), int(rng.integers(0, height - side))
        regions.append(((left, top, left + side, top + side), "background"))
        for (a, b, c, d), name in regions:
            crop = image[None, :, b:d, a:c]
            crops.append(F.interpolate(crop, size=(size, size), mode="bilinear")[0])
            labels.append(("cat", "dog", "background").index(name))
    return torch.stack(crops), torch.tensor(labels)


def supervised(out: Path, steps: int, seed: int, sides: tuple[int, int]) -> Path:
    """A ResNet-18 trained on :func:`labelled_crops` (SGD lr 0.05, momentum 0.9, batch 32),
    written as an export (``out`` and its ``.json``)."""
    torch.manual_seed(seed)
    crops, labels = labelled_crops(2000, 64, seed, sides)
    net, head = torchvision_resnet("resnet18"), torch.nn.Linear(512, 3)
    net.fc = torch.nn.Identity()
    parameters = list(net.parameters()) + list(head.parameters())
    optimiser = torch.optim.SGD(parameters, lr=0.05, momentum=0.9, weight_decay=1e-4)
    for _ in range(steps):
        chosen = torch.randint(0, len(crops), (32,))
        loss = F.cross_entropy(head(net(crops[chosen])), labels[chosen])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    net.eval()
    with torch.no_grad():
        accuracy = (head(net(crops[:500])).argmax(1) == labels[:500]).float().mean()
    print(f"supervised: {steps} steps, accuracy on 500 of its crops {100 * accuracy:.1f}%")
    torch.save({k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}, out)
    Path(f"{out}.json").write_text(json.dumps({"arch": "resnet18"}))
    return out


def transfer(devkit: Path, source: str, out: Path, seed: int, args: argparse.Namespace) -> dict:
    cli(
        [
            "transfer", "--task", "voc-c4", "--checkpoint", source, "--backbone", "resnet18",
            "--data.root", str(devkit), "--out", str(out), "--batch-size", "4",
            "--iterations", str(args.iterations), "--train-sizes", "96", "128",
            "--max-size", "160", "--roi-batch", str(args.roi_batch), "--test-proposals", "20",
            "--precise-bn-iterations", "4", "--lr", str(args.lr),
            "--warmup-iterations", str(args.warmup or max(1, args.iterations // 20)),
            "--device", "cpu", "--precision", "32-true", "--workers", "0", "--no-progress",
            "--seed", str(seed),
        ]
    )  # fmt: skip
    return json.loads(Path(f"{out}.json").read_text())


def late_loss(out: Path) -> float:
    """The mean training loss over the run's last quarter of iterations (its ``metrics.csv``)."""
    _, rows = read_rows(next(out.rglob(METRICS_FILE)))
    losses = [float(row["train/loss"]) for row in rows if row.get("train/loss")]
    return float(np.mean(losses[-max(1, len(losses) // 4) :]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrain-images", type=int, default=512)
    parser.add_argument("--pretrain-epochs", type=int, default=8)
    parser.add_argument("--pretrain-size", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--lr", type=float, default=0.08, help="for 16 images (4 per iteration)")
    parser.add_argument(
        "--pretrain-args",
        default="",
        help='more fit arguments, e.g. "--model.augment.jitter_prob 0"',
    )
    parser.add_argument("--supervised-steps", type=int, default=0, help="see the docstring")
    parser.add_argument("--roi-batch", type=int, default=8, help="regions per image (8)")
    parser.add_argument("--warmup", type=int, default=None, help="iterations (1/20 of them)")
    parser.add_argument(
        "--sides", type=int, nargs=2, default=[14, 41], help="objects' sides: range(A, B) px"
    )
    parser.add_argument(
        "--random-only", action="store_true", help="only the random backbone: does it learn?"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        sides = tuple(args.sides)
        devkit = write_scene_devkit(root, train07=48, train12=16, test=32, sides=sides)
        photos = write_photos(root / "photos", args.pretrain_images, sides)
        rows = []
        for seed in args.seeds:
            start = time.perf_counter()
            sources = [("random", "random")]
            if args.supervised_steps:
                export = supervised(
                    root / f"supervised{seed}.pth", args.supervised_steps, seed, sides
                )
                sources.insert(0, ("pretrained", str(export)))
            elif not args.random_only:
                extra = args.pretrain_args.split()
                checkpoint = pretrain(photos, root / f"pre{seed}", args.pretrain_epochs,
                                      args.pretrain_size, seed, extra)  # fmt: skip
                sources.insert(0, ("pretrained", str(checkpoint)))
            pretrained_s = time.perf_counter() - start
            results = {"pretrained": (float("nan"),) * 4}
            for name, source in sources:
                start = time.perf_counter()
                out = root / f"{name}{seed}"
                result = transfer(devkit, source, out, seed, args)
                scale = 20 / len(PRESENT)  # the task's means over VOC's 20 classes
                results[name] = (
                    sum(result["AP50_per_class"][c] for c in PRESENT) / len(PRESENT),
                    scale * result["AP"],
                    late_loss(out),
                    time.perf_counter() - start,
                )
            rows.append((seed, pretrained_s, results))
            print(seed, pretrained_s, results, flush=True)
        print(
            "| seed | pretrain s | pretrained AP50 / AP / late loss | random AP50 / AP / late loss "
            "| transfer s |"
        )
        print("|---|---|---|---|---|")
        for seed, seconds, r in rows:
            p, q = r["pretrained"], r["random"]
            print(
                f"| {seed} | {seconds:.0f} | {p[0]:.2f} / {p[1]:.2f} / {p[2]:.3f} | "
                f"{q[0]:.2f} / {q[1]:.2f} / {q[2]:.3f} | {p[3]:.0f} + {q[3]:.0f} |"
            )


if __name__ == "__main__":
    main()
