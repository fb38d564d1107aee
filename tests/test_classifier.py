"""The paper linear probe and semi-supervised fine-tuning streaming from a photo folder: the
references' head, schedules and counts, a frozen backbone that stays bit-identical, a kill
and an exact resume, the backbone-lr sweep, and two processes."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import QUIET_BATCHES_OF_16, fit_run
from kill_harness import kill_at_first_checkpoint
from photos import write_photo_folder
from test_crashproof import assert_same_state
from torch import nn

from contrastlab.app.cli import main
from contrastlab.eval.classifier import ClassifierProtocol, ClassifierTraining, topk_hits
from contrastlab.runs.resume import load_checkpoint_file
from contrastlab.views.augment import Augment


class Flat(nn.Module):
    """A stand-in backbone: flattened pixels, ``feature_dim`` wide."""

    def __init__(self, feature_dim: int) -> None:
        super().__init__()
        self.feature_dim = feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, : self.feature_dim]


def training(protocol: ClassifierProtocol, feature_dim: int = 8, classes: int = 3):
    return ClassifierTraining(Flat(feature_dim), Augment(size=8), classes, protocol)


def test_the_head_starts_as_mocos_and_syncos_normal_0_01_with_zero_bias():
    torch.manual_seed(0)
    head = training(ClassifierProtocol(True, 10, 30.0, 256), 512, 1000).head
    w = head.weight.detach().double().flatten()
    assert torch.equal(head.bias, torch.zeros(1000))
    assert abs(w.mean().item()) < 5e-5
    assert abs(w.std().item() / 0.01 - 1) < 0.01
    kurtosis = (((w - w.mean()) / w.std()) ** 4).mean().item()
    assert abs(kurtosis - 3) < 0.05  # a normal's; PyTorch's default (uniform) init gives 1.8


def lr_per_epoch(protocol: ClassifierProtocol) -> list[list[float]]:
    configured = training(protocol).configure_optimizers()
    optimizer, schedule = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    assert configured["lr_scheduler"]["interval"] == "epoch"
    rates = []
    for _ in range(protocol.epochs):
        rates.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        schedule.step()
    return rates


def test_the_probe_schedule_divides_by_ten_at_60_and_80_percent():
    rates = lr_per_epoch(ClassifierProtocol(True, epochs=10, head_lr=30.0, batch_size=256))
    expected = [30.0] * 6 + [3.0] * 2 + [0.3] * 2
    assert [r[0] for r in rates] == pytest.approx(expected)
    assert all(len(r) == 1 for r in rates)  # a frozen backbone is not in the optimiser


def test_fine_tuning_anneals_both_rates_per_epoch_as_synco():
    protocol = ClassifierProtocol(
        False, epochs=4, head_lr=0.5, batch_size=1024, backbone_lr=0.02, schedule="cosine"
    )
    rates = lr_per_epoch(protocol)
    for epoch, (head, backbone) in enumerate(rates):
        factor = (1 + math.cos(math.pi * epoch / 4)) / 2
        assert head == pytest.approx(0.5 * factor) and backbone == pytest.approx(0.02 * factor)


def test_the_optimiser_is_sgd_with_the_protocols_momentum_and_decay():
    protocol = ClassifierProtocol(False, 2, 0.5, 8, backbone_lr=0.1, weight_decay=1e-6)
    optimizer = training(protocol).configure_optimizers()["optimizer"]
    assert isinstance(optimizer, torch.optim.SGD)
    assert [g["momentum"] for g in optimizer.param_groups] == [0.9, 0.9]
    assert [g["weight_decay"] for g in optimizer.param_groups] == [1e-6, 1e-6]


def test_hits_count_top1_and_top5_by_hand():
    logits = torch.tensor(
        [
            [9.0, 1, 2, 3, 4, 5, 6],  # label 0: top-1
            [0.0, 1, 2, 3, 4, 5, 6],  # label 2: 5th largest, top-5 only
            [0.0, 1, 2, 3, 4, 5, 6],  # label 1: 6th largest, neither
        ]
    )
    hits = topk_hits(logits, torch.tensor([0, 2, 1]))
    assert hits.tolist() == [1.0, 2.0, 3.0]


def test_bad_protocols_are_refused():
    with pytest.raises(ValueError, match="schedule"):
        ClassifierProtocol(True, 10, 1.0, 8, schedule="linear")
    with pytest.raises(ValueError, match="epochs"):
        ClassifierProtocol(True, 0, 1.0, 8)


# ----------------------------------------------------------------------------- on a folder

QUIET = ["--precision", "32-true", "--device", "cpu", "--no-progress"]
PROBE = ["linear", "--mode", "paper", "--epochs", "5", "--batch-size", "8", "--lr", "0.05"]
FINETUNE = ["finetune", "--epochs", "3", "--batch-size", "8", "--lr", "0.01", "--head-lr", "0.1"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """A SimCLR checkpoint of one epoch on a photo folder (64 training, 16 validation
    photos of every shape and format, 2 classes)."""
    root = tmp_path_factory.mktemp("classifier")
    write_photo_folder(root / "photos" / "train", copies=4)
    write_photo_folder(root / "photos" / "val", copies=1)
    options = ["--data.dataset", "folder", "--data.lazy", "true", *QUIET_BATCHES_OF_16]
    tiny = ["--model.augment.size", "16", "--data.batch_size", "8", "--trainer.max_epochs", "1"]
    fit_run(root / "run", root / "photos", "cifar10/simclr", *options, *tiny)
    return root / "run" / "checkpoints" / "last.ckpt"


def copy_run(checkpoint: Path, to: Path) -> Path:
    """The pretraining checkpoint in a run directory of its own (evaluations go beside it)."""
    target = to / "checkpoints" / "last.ckpt"
    target.parent.mkdir(parents=True)
    shutil.copy(checkpoint, target)
    return target


def command(checkpoint: Path, *args: str) -> list[str]:
    return [*args[:1], "--checkpoint", str(checkpoint), *args[1:], *QUIET]


def backbone_state(checkpoint: dict, prefix: str) -> dict[str, torch.Tensor]:
    state = checkpoint["state_dict"]
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["linear", "finetune"])
def test_a_run_on_a_photo_folder_survives_a_kill_and_resumes_exactly(tmp_path, pretrained, kind):
    args = PROBE if kind == "linear" else [*FINETUNE, "--labels", "25%"]
    name = "linear_paper" if kind == "linear" else "finetune_25pct"
    straight = copy_run(pretrained, tmp_path / "straight")
    main(command(straight, *args))
    killed = copy_run(pretrained, tmp_path / "killed")
    run_dir = killed.parent.parent / "eval" / name
    epoch = int(
        kill_at_first_checkpoint(command(killed, *args), run_dir, tmp_path / "log")["epoch"]
    )
    assert epoch < int(args[args.index("--epochs") + 1]) - 1  # killed before the end
    with pytest.raises(SystemExit, match="add --resume"):
        main(command(killed, *args))
    main(command(killed, *args, "--resume"))

    ends = [
        p.parent.parent / "eval" / name / "checkpoints" / "last.ckpt" for p in (straight, killed)
    ]
    assert_same_state(*ends)
    results = [json.loads((p.parent.parent / "eval" / f"{name}.json").read_text())
               for p in (straight, killed)]  # fmt: skip
    for key in ("top1", "top5", "best_top1", "best_epoch"):
        assert results[0][key] == results[1][key], key
    final = load_checkpoint_file(ends[0])
    history = final["contrastlab"]["history"]
    assert len(history) == int(args[args.index("--epochs") + 1])
    assert results[0]["top1"] == history[-1][0]
    before = backbone_state(load_checkpoint_file(pretrained), "backbone.")
    after = backbone_state(final, "backbone.")
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    if kind == "linear":  # frozen and in eval mode: weights and BN statistics bit-identical
        assert changed == []
        assert results[0]["train_images"] == 64 and results[0]["eval_images"] == 16
    else:
        assert any("running_mean" in k for k in changed) and any("weight" in k for k in changed)
        assert results[0]["labelled_images"] == 16  # 25% of 32 per class


@pytest.mark.slow
def test_the_probes_accuracy_is_the_saved_classifier_on_centre_views(tmp_path, pretrained):
    """The reported last-epoch top-1 equals the saved head on features computed apart (the
    un-augmented centre views every evaluation measures)."""
    from contrastlab.app.evaluate import Evaluation

    checkpoint = copy_run(pretrained, tmp_path / "run")
    main(command(checkpoint, *PROBE))
    final = load_checkpoint_file(
        tmp_path / "run" / "eval" / "linear_paper" / "checkpoints" / "last.ckpt"
    )
    features, labels = Evaluation.open(checkpoint).features("val")
    weight, bias = final["state_dict"]["head.weight"], final["state_dict"]["head.bias"]
    top1 = 100.0 * ((features @ weight.T + bias).argmax(1) == labels).float().mean().item()
    assert final["contrastlab"]["history"][-1][0] == pytest.approx(top1)


@pytest.mark.slow
def test_a_subset_list_and_the_backbone_lr_sweep(tmp_path, pretrained, capsys):
    checkpoint = copy_run(pretrained, tmp_path / "run")
    train = pretrained.parents[2] / "photos" / "train"
    files = sorted(train.rglob("*_[01].*"))
    listed = tmp_path / "2percent.txt"  # SimCLR's format: file names, one per line
    listed.write_text("\n".join(p.name for p in files) + "\n")
    with pytest.raises(SystemExit, match="several class folders; write them as class/file"):
        main(command(checkpoint, *FINETUNE, "--labels", str(listed)))
    names = [f"{p.parent.name}/{p.name}" for p in files]  # each name recurs in both classes
    listed.write_text("\n".join(names) + "\n")
    main(command(checkpoint, *FINETUNE, "--labels", str(listed), "--sweep", "0.01", "0.05"))
    out = capsys.readouterr().out
    result = json.loads((tmp_path / "run" / "eval" / "finetune_2percent.json").read_text())
    assert result["labelled_images"] == len(names) == 32
    assert set(result["sweep"]) == {"0.01", "0.05"}
    assert "held-out 10% of the labelled images (3 of 32;" in result["sweep_split"]
    chosen = max([0.01, 0.05], key=lambda lr: (result["sweep"][f"{lr:g}"], -lr))
    assert result["lr"] == chosen and "backbone lr chosen on a held-out" in out
    for lr in ("0.01", "0.05"):  # each candidate is a run of its own, resumable
        sweep_run = tmp_path / "run" / "eval" / "finetune_2percent" / "sweep" / f"lr_{lr}"
        saved = load_checkpoint_file(sweep_run / "checkpoints" / "last.ckpt")
        assert saved["contrastlab"]["protocol"]["backbone_lr"] == float(lr)
        assert saved["contrastlab"]["history"][-1][0] == result["sweep"][lr]


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_share_the_batches_and_count_every_evaluation_image(tmp_path, pretrained):
    checkpoint = copy_run(pretrained, tmp_path / "run")
    args = command(checkpoint, *PROBE, "--devices", "2")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node=2", "-m", "contrastlab"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*launcher, *args], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("linear probe (paper") == 1  # the first process reports
    result = json.loads((tmp_path / "run" / "eval" / "linear_paper.json").read_text())
    assert result["processes"] == 2 and result["eval_images"] == 16
    final = load_checkpoint_file(
        tmp_path / "run" / "eval" / "linear_paper" / "checkpoints" / "last.ckpt"
    )
    assert final["global_step"] == 5 * 64 // 8  # global batches of 8: 4 images per process
    assert final["contrastlab"]["view_rng"].shape[0] == 2  # each process's own stream

    from contrastlab.app.evaluate import Evaluation

    features, labels = Evaluation.open(checkpoint).features("val")
    logits = features @ final["state_dict"]["head.weight"].T + final["state_dict"]["head.bias"]
    top1 = 100.0 * (logits.argmax(1) == labels).float().mean().item()
    assert result["top1"] == pytest.approx(top1)


@pytest.mark.slow
def test_the_imagenet_batch_on_a_small_folder_says_which_option_to_lower(tmp_path, pretrained):
    checkpoint = copy_run(pretrained, tmp_path / "run")
    with pytest.raises(SystemExit, match="64 labelled training images cannot fill one global "
                       "batch of 256; lower --batch-size"):  # fmt: skip
        main(command(checkpoint, "linear", "--mode", "paper", "--epochs", "1"))
    assert not (tmp_path / "run" / "eval" / "linear_paper" / "checkpoints").exists()
