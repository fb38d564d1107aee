"""``contrastlab transfer``: the protocol's settings and their smaller variants, the backbone a
detector starts from, the loaders, the test's score against the detector's own outputs, a run
killed mid-way that resumes exactly, and a run in two processes. On a VOC devkit the tests
write (tests/scenes.py)."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from conftest import QUIET_BATCHES_OF_16, TINY_MOCO, fit_run, write_cifar
from kill_harness import kill_at_first_checkpoint
from scenes import write_scene_devkit
from test_crashproof import assert_same_state

import contrastlab.transfer.training as training
from contrastlab.app.cli import main
from contrastlab.app.transfer import default_run_dir, detection_resnet
from contrastlab.runs.resume import CheckpointError, load_checkpoint_file
from contrastlab.transfer.detectors import faster_rcnn_c4
from contrastlab.transfer.metrics import voc_detection_ap
from contrastlab.transfer.tasks import VOC_C4, configure, scaled_steps
from contrastlab.transfer.training import DetectionData, DetectionTraining, aspect_groups
from contrastlab.transfer.voc import TEST_SPLITS, TRAIN_SPLITS, VOC_CLASSES, read_voc

# --------------------------------------------------------------------------- settings


def test_the_default_task_is_the_papers_protocol():
    s, solver = VOC_C4.settings, VOC_C4.solver
    assert (solver.iterations, solver.steps, solver.warmup_iterations) == (
        24000,
        (18000, 22000),
        100,
    )
    assert (solver.lr, solver.batch, solver.precise_bn_iterations) == (0.02, 16, 200)
    assert s.train_sizes == tuple(range(480, 801, 32)) and s.test_size == 800
    assert (s.roi_batch, s.rpn_post_nms_test, s.max_size) == (512, 1000, 1333)
    assert VOC_C4.train_splits == TRAIN_SPLITS and VOC_C4.test_splits == TEST_SPLITS


def test_smaller_settings_keep_the_schedules_shape():
    assert scaled_steps(VOC_C4.solver, 240) == (180, 220)  # 3/4 and 11/12, as 18k/22k of 24k
    assert scaled_steps(VOC_C4.solver, 2400) == (1800, 2200)
    small = configure(VOC_C4, iterations=60, lr=0.01, train_sizes=(128, 96), max_size=200)
    assert small.solver.steps == (45, 55) and small.solver.warmup_iterations == 60
    assert small.solver.lr == 0.01 and small.solver.iterations == 60
    assert small.settings.train_sizes == (96, 128) and small.settings.test_size == 128
    assert configure(VOC_C4, iterations=1000).solver.warmup_iterations == 100
    cheap = configure(VOC_C4, roi_batch=32, test_proposals=50, precise_bn_iterations=0)
    assert (cheap.settings.roi_batch, cheap.settings.rpn_post_nms_test) == (32, 50)
    assert cheap.solver.precise_bn_iterations == 0
    assert configure(VOC_C4) == VOC_C4


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"iterations": 0}, "iterations"),
        ({"lr": 0.0}, "lr"),
        ({"train_sizes": (16, 64)}, ">= 32"),
        ({"train_sizes": (96,), "max_size": 64}, "cap"),
        ({"roi_batch": 0}, "roi_batch"),
        ({"precise_bn_iterations": -1}, "precise-BN"),
    ],
)
def test_impossible_settings_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        configure(VOC_C4, **changes)


# --------------------------------------------------------------------------- the backbone


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """A tiny MoCo v2 checkpoint with the ImageNet stem and SplitBatchNorm (2 groups)."""
    root = tmp_path_factory.mktemp("pretrained")
    write_cifar(root, per_batch=20, structured=True)
    options = [*TINY_MOCO, *QUIET_BATCHES_OF_16, "--trainer.max_epochs", "1"]
    options += ["--model.augment.size", "32", "--model.cifar_stem", "false"]
    options += ["--data.train_subset", "32", "--data.eval_subset", "16"]
    fit_run(root / "run", root, "cifar10/mocov2", *options)
    return root / "run" / "checkpoints" / "last.ckpt"


def test_the_detector_starts_from_the_checkpoints_backbone_or_its_export(pretrained, tmp_path):
    saved = load_checkpoint_file(pretrained)["state_dict"]
    backbone = {k.removeprefix("backbone.net."): v for k, v in saved.items()}
    net = detection_resnet(str(pretrained))
    for name, value in net.state_dict().items():
        assert torch.equal(value, backbone[name]), name
    splits = [m.num_splits for m in net.modules() if hasattr(m, "num_splits")]
    assert splits and set(splits) == {1}  # MoCo's groups do not apply to detection batches
    out = tmp_path / "backbone.pth"
    main(["export", "--checkpoint", str(pretrained), "--format", "torchvision", "--out", str(out)])
    exported = detection_resnet(str(out))
    for name, value in exported.state_dict().items():
        assert torch.equal(value, backbone[name]), name
    Path(f"{out}.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"backbone\.pth\.json"):
        detection_resnet(str(out))
    assert default_run_dir(str(pretrained), VOC_C4) == pretrained.parents[1] / "eval" / (
        "transfer_voc-c4"
    )
    assert default_run_dir(str(out), VOC_C4) == tmp_path / "backbone_transfer_voc-c4"


def test_backbones_a_c4_detector_cannot_use_are_refused(tmp_path):
    with pytest.raises(ValueError, match="--backbone"):
        detection_resnet("random")
    random = detection_resnet("random", "resnet18")
    assert random.conv1.kernel_size == (7, 7)
    with pytest.raises(FileNotFoundError, match="not found"):
        detection_resnet(str(tmp_path / "missing.ckpt"))


# --------------------------------------------------------------------------- data and the test


@pytest.fixture(scope="module")
def devkit(tmp_path_factory) -> Path:
    return write_scene_devkit(tmp_path_factory.mktemp("scenes"), train07=6, train12=2, test=4)


def test_each_process_loads_its_share_of_each_global_batch_flipped_by_epoch(devkit, monkeypatch):
    train, test = read_voc(devkit, TRAIN_SPLITS), read_voc(devkit, TEST_SPLITS)

    def batches(rank: int, processes: int, epoch: int) -> list[list[int]]:
        monkeypatch.setattr(training, "world", lambda: (rank, processes))
        loader = DetectionData(train, test, 4, workers=0, seed=3).train_dataloader()
        loader.global_sampler.set_epoch(epoch)
        found = []
        for _, targets in loader:
            for target in targets:
                index = int(target["index"])
                flipped = not torch.equal(target["boxes"], train[index].boxes())
                assert flipped == loader.dataset.flipped(index)  # the epoch's own draw
            found.append([int(t["index"]) for t in targets])
        return found

    whole = batches(0, 1, epoch=1)
    halves = zip(batches(0, 2, epoch=1), batches(1, 2, epoch=1), strict=True)
    assert [a + b for a, b in halves] == whole
    assert len(whole) == 2 and sorted(i for batch in whole for i in batch) == list(range(8))
    orientation = aspect_groups(train)  # 4 landscape, 4 portrait or square
    assert orientation.tolist() == [int(i.width <= i.height) for i in train]
    assert all(len({int(orientation[i]) for i in batch}) == 1 for batch in whole)
    assert batches(0, 1, epoch=2) != whole  # a new order each epoch
    monkeypatch.setattr(training, "world", lambda: (0, 1))
    with pytest.raises(ValueError, match=r"\(1 landscape, 2 portrait or square\) cannot fill"):
        DetectionData(train[:3], test, 3, workers=0).train_dataloader()
    monkeypatch.setattr(training, "world", lambda: (1, 2))
    shares = DetectionData(train, test, 4, workers=0).val_dataloader()
    assert [int(t["index"]) for _, targets in shares for t in targets] == [1, 3]
    monkeypatch.setattr(training, "world", lambda: (0, 3))
    with pytest.raises(ValueError, match="does not divide over 3"):
        DetectionData(train, test, 4, workers=0).train_dataloader()


SMALL = configure(
    VOC_C4,
    iterations=2,
    train_sizes=(64, 80),
    max_size=120,
    precise_bn_iterations=3,
    roi_batch=16,
    test_proposals=20,
)


def test_the_test_scores_the_detectors_own_outputs_after_precise_bn(devkit):
    """The reported AP equals VOC AP of the tested detector's outputs computed here (classes
    shifted back from torchvision's background 0), and the statistics it tested with are
    precise BN's."""
    import torchvision

    train, test = read_voc(devkit, TRAIN_SPLITS), read_voc(devkit, TEST_SPLITS)
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(weights=None)
    module = DetectionTraining(faster_rcnn_c4(resnet, 20, SMALL.settings), SMALL.solver, 2)
    data = DetectionData(train, test, 2, workers=0)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=2,
        limit_val_batches=0,
        inference_mode=False,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=data)
    trained = copy.deepcopy(module.detector)
    trainer.limit_val_batches = 1.0
    trainer.validate(module, datamodule=data, verbose=False)
    assert module.precise_bn_batches == 3
    norms = [m for m in module.detector.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = [m for m in trained.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert int(norms[0].num_batches_tracked) == 3  # one cumulative average over 3 batches
    assert not torch.equal(norms[0].running_mean, before[0].running_mean)

    module.detector.eval()
    images = training.DetectionImages(test, flip_prob=0.0)
    with torch.no_grad():
        outputs = [module.detector([images[i][0]])[0] for i in range(len(test))]
    expected = voc_detection_ap(test, [{**o, "labels": o["labels"] - 1} for o in outputs])
    assert {k: v for k, v in module.result.items() if k != "examples"} == expected
    assert module.result["AP50_per_class"].keys() == set(VOC_CLASSES)


class Recording:
    """A scoring that returns what it was given."""

    def compact(self, found):
        return found

    def score(self, images, found):
        return {"images": images, "found": found}


def test_the_processes_detections_are_gathered_and_scored_in_test_order(monkeypatch):
    """Process 0 tested images 0 and 2, process 1 images 1 and 3 (the test sampler's r, r + n):
    the first process scores all four in test order; a missing image is an error."""
    from types import SimpleNamespace

    module = DetectionTraining(torch.nn.Identity(), SMALL.solver, 2, scoring=Recording())
    module._trainer = SimpleNamespace(datamodule=SimpleNamespace(test=["i0", "i1", "i2", "i3"]))
    shares = [[(0, "a"), (2, "c")], [(1, "b"), (3, "d")]]
    monkeypatch.setattr(training.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(training.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(training, "world", lambda: (0, 2))
    monkeypatch.setattr(
        training.dist, "all_gather_object", lambda out, mine: out.__setitem__(slice(None), shares)
    )
    module._found = list(shares[0])
    module.on_validation_epoch_end()
    assert module.result == {"images": ["i0", "i1", "i2", "i3"], "found": ["a", "b", "c", "d"]}
    shares[1] = [(1, "b")]
    with pytest.raises(RuntimeError, match="scored 3 of 4 images"):
        module.on_validation_epoch_end()


# --------------------------------------------------------------------------- a run


def transfer_command(devkit: Path, out: Path, *extra: str) -> list[str]:
    return [
        "transfer", "--task", "voc-c4", "--checkpoint", "random", "--backbone", "resnet18",
        "--data.root", str(devkit), "--out", str(out), "--batch-size", "2",
        "--iterations", "8", "--train-sizes", "64", "80", "--max-size", "120",
        "--roi-batch", "16", "--test-proposals", "20", "--precise-bn-iterations", "2",
        "--device", "cpu", "--precision", "32-true", "--workers", "0", "--no-progress", *extra,
    ]  # fmt: skip


def voc_test_images(devkit: Path) -> list:
    return read_voc(devkit, TEST_SPLITS)


@pytest.mark.slow
def test_a_run_killed_mid_way_resumes_exactly_and_writes_its_result(devkit, tmp_path, capsys):
    """8 images in global batches of 2 (4 iterations an epoch), 8 iterations: killed after its
    first checkpoint (epoch 1's end), resumed, it ends in the uninterrupted run's state with its
    result."""
    straight = tmp_path / "straight"
    main(transfer_command(devkit, straight, "--seed", "1"))
    assert "voc-c4: AP50" in capsys.readouterr().out
    killed = tmp_path / "killed"
    args = transfer_command(devkit, killed, "--seed", "1")
    step = int(kill_at_first_checkpoint(args, killed, tmp_path / "killed.log")["global_step"])
    assert step == 4  # epoch 0's end, half-way
    with pytest.raises(SystemExit, match="add --resume"):
        main(transfer_command(devkit, killed, "--seed", "1"))
    with pytest.raises(SystemExit, match=r"lr.*drop them"):
        main(transfer_command(devkit, killed, "--seed", "1", "--lr", "0.01", "--resume"))
    main(transfer_command(devkit, killed, "--seed", "1", "--resume"))

    ends = [run / "checkpoints" / "last.ckpt" for run in (straight, killed)]
    assert_same_state(*ends, rng_keys=("torch_rng",))
    results = [json.loads(Path(f"{run}.json").read_text()) for run in (straight, killed)]
    for key in ("AP", "AP50", "AP75", "AP50_per_class"):
        assert results[0][key] == results[1][key], key
    result = results[0]
    assert result["iterations"] == 8 and result["global_batch"] == 2
    assert result["train_images"] == 8 and result["test_images"] == 4
    assert result["precise_bn_batches"] == 2 and result["solver"]["steps"] == [6, 7]
    assert result["settings"]["train_sizes"] == [64, 80] and "82.4" in result["reproduces"]
    assert [e["image"] for e in result["examples"]] == [
        str(i.path) for i in voc_test_images(devkit)
    ]
    tested = torch.load(straight / "detector.pth", weights_only=True)  # after precise BN
    trained = load_checkpoint_file(ends[0])["state_dict"]
    assert tested.keys() == {k.removeprefix("detector.") for k in trained}
    moved = [k for k in tested if not torch.equal(tested[k], trained[f"detector.{k}"])]
    assert moved and all(
        k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in moved
    )
    rows = (straight / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 8 and "train/loss_objectness" in rows[0]


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_train_one_detector_and_score_every_test_image(devkit, tmp_path):
    """``--devices 2`` on the CPU (gloo): global batches of 2 split one image per process, the
    test shared between the processes and gathered into one result over all four test images,
    equal to VOC AP of the saved detector's outputs computed here in one process. (Eight
    iterations leave a detector too weak for AP to tell which image a detection came from:
    the order of the gathered detections is pinned by the test above.)"""
    import subprocess
    import sys

    import torchvision

    out = tmp_path / "two"
    command = [
        sys.executable,
        "-m",
        "contrastlab",
        *transfer_command(devkit, out, "--devices", "2"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("voc-c4: AP50") == 1  # said once, by the first process
    result = json.loads(Path(f"{out}.json").read_text())
    assert (result["processes"], result["global_batch"], result["iterations"]) == (2, 2, 8)
    assert result["test_images"] == 4 and len(result["examples"]) == 4

    small = configure(VOC_C4, train_sizes=(64, 80), max_size=120, roi_batch=16, test_proposals=20)
    detector = faster_rcnn_c4(torchvision.models.resnet18(), 20, small.settings)
    detector.load_state_dict(torch.load(out / "detector.pth", weights_only=True))
    detector.eval()
    test = voc_test_images(devkit)
    images = training.DetectionImages(test, flip_prob=0.0)
    with torch.no_grad():
        found = [detector([images[i][0]])[0] for i in range(len(test))]
    expected = voc_detection_ap(test, [{**f, "labels": f["labels"] - 1} for f in found])
    for key in ("AP", "AP50", "AP75", "AP50_per_class"):
        assert result[key] == expected[key], key


def test_a_resume_of_another_kind_of_run_is_refused(tmp_path):
    from contrastlab.app.transfer import check_resumable

    with pytest.raises(CheckpointError, match="not a transfer run"):
        check_resumable(tmp_path / "last.ckpt", {"contrastlab": {}}, {"task": "voc-c4"})


def test_a_report_shows_the_ap_and_the_detections_on_test_photos(devkit, tmp_path):
    from contrastlab.app.report import write_report
    from contrastlab.transfer.training import detection_examples

    test = read_voc(devkit, TEST_SPLITS)
    found = [
        {
            "boxes": torch.cat([image.boxes(), torch.tensor([[1.0, 1.0, 9.0, 9.0]])]),
            "labels": torch.cat([image.labels(), torch.tensor([0])]),
            "scores": torch.cat([torch.full((len(image.objects),), 0.9), torch.tensor([0.4])]),
        }
        for image in test
    ]
    examples = detection_examples(test, found, VOC_CLASSES)
    assert len(examples) == 4 and examples[0]["image"] == str(test[0].path)
    assert examples[0]["boxes"] == examples[0]["truth"]  # the 0.4 detection is left out
    assert examples[0]["labels"] == examples[0]["truth_labels"]
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    (run / "metrics.csv").write_text("epoch,step,train/loss_step\n0,0,1.5\n0,1,1.2\n")
    result = {"task": "voc-c4", "AP": 57.0, "AP50": 82.4, "AP75": 63.6, "iterations": 24000}
    result |= {"global_batch": 16, "examples": examples}
    (run / "eval" / "transfer_voc-c4.json").write_text(json.dumps(result))
    write_report([run], pictures=False, figures=tmp_path / "figures")
    table = (tmp_path / "figures" / "results.md").read_text()
    assert "AP50 / AP / AP75 82.40 / 57.00 / 63.60 (voc-c4, 24,000 iterations of 16)" in table
    picture = run / "report" / "transfer_voc-c4_run.png"
    assert picture.is_file() and "transfer_voc-c4_run.png" in (run / "report.html").read_text()
