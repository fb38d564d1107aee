"""Crash-proof runs, tested the way they fail: SIGKILL at random moments, signals, full disks,
unwritable folders, diverging losses, bad values, crafted checkpoints."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import write_cifar
from kill_harness import (
    fit_arguments,
    fit_command,
    kill_campaign,
    metric_rows,
    start,
    steps_done,
    wait_until,
)

from contrastlab.app.cli import main
from contrastlab.data.sampling import GlobalBatchSampler, ResumableLoader
from contrastlab.options import OptionError, Range, check_value
from contrastlab.runs.records import ContinuousCSVWriter, read_rows
from contrastlab.runs.resume import (
    CheckpointError,
    load_checkpoint_file,
    method_class,
    resume_changes,
    schedule_note,
)


def fit(run_dir: Path, data_root: Path, *extra: str) -> None:
    main(fit_arguments(run_dir, data_root, *extra))


def assert_same_state(
    a_path: Path, b_path: Path, rng_keys: tuple[str, ...] = ("view_rng", "torch_rng")
) -> None:
    """Weights, buffers (queue, BN, boxes), optimiser, schedule, loop and every RNG equal."""
    a, b = load_checkpoint_file(a_path), load_checkpoint_file(b_path)
    assert a["global_step"] == b["global_step"] and a["epoch"] == b["epoch"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    for i, state in a["optimizer_states"][0]["state"].items():  # SGD's momentum, LARS's velocity
        other = b["optimizer_states"][0]["state"][i]
        assert state.keys() == other.keys()
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(other[name])), (i, name)
    assert a["lr_schedulers"] == b["lr_schedulers"]
    for key in rng_keys:
        assert torch.equal(a["contrastlab"][key], b["contrastlab"][key]), key


WALL_CLOCK = ("train/images_per_sec", "train/data_wait")
"""Metrics measured with a clock, which no two runs share."""


def same_rows(a: Path, b: Path) -> None:
    """The two runs' metrics.csv agree row for row (wall-clock measurements aside)."""

    def rows(run_dir: Path) -> list[dict[str, str]]:
        return [{k: v for k, v in r.items() if k not in WALL_CLOCK} for r in metric_rows(run_dir)]

    assert rows(a) == rows(b)


# ----------------------------------------------------------------------------- real processes


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> tuple[Path, Path]:
    """Tiny data and one uninterrupted subprocess run of :func:`kill_harness.fit_command`."""
    root = tmp_path_factory.mktemp("crash")
    write_cifar(root / "data", structured=True)
    run_dir = root / "straight"
    done = subprocess.run(fit_command(run_dir, root / "data"), capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (root / "console.txt").write_text(done.stdout + done.stderr)  # test_console reads it
    return root / "data", run_dir


def test_console_of_a_run_holds_contrastlabs_lines_only(straight):
    """What a person sees of a whole run: the data found, the run's settings, the summary;
    none of Lightning's banners or advertisements (``--verbose`` brings those back:
    tests/test_console.py)."""
    data, _ = straight
    console = (data.parent / "console.txt").read_text()
    found = f"contrastlab: data: cifar10 at {data}: 100 train images, 20 test images, 10 classes"
    assert found in console
    assert "contrastlab: run: MoCoV2 on resnet18 (CIFAR stem), 3 epochs, batch 16" in console
    assert "contrastlab summary: epochs 3, steps 18" in console
    for banner in ("GPU available", "TPU available", "litlogger", "Tip:", "Seed set", "| Name"):
        assert banner not in console, banner
    assert "Warning" not in console


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_nothing(straight, tmp_path):
    data, reference = straight
    run_dir = tmp_path / "killed"
    campaign = kill_campaign(run_dir, data, kills=6, seed=3)
    assert campaign.finished
    assert len(campaign.kills) >= 4, "the run ended before most kills: the harness is too slow"
    assert {k.kind for k in campaign.kills} >= {"mid-write", "epoch-boundary"}
    assert not any(k.corrupt for k in campaign.kills)
    # at most the work since the last save: the step cadence (2)
    assert all(k.steps_lost <= 2 for k in campaign.kills), campaign.kills
    assert campaign.stale_temporaries_after_resume == 0
    assert_same_state(
        reference / "checkpoints" / "last.ckpt", run_dir / "checkpoints" / "last.ckpt"
    )
    same_rows(reference, run_dir)  # every step and epoch once, none lost or repeated
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["last.ckpt"]


@pytest.mark.slow
def test_sigterm_saves_at_a_step_boundary_exits_143_and_resumes_exactly(straight, tmp_path):
    data, reference = straight
    run_dir = tmp_path / "term"
    command = fit_command(run_dir, data, "--checkpoint.every_n_steps", "1000")
    process = start(command, tmp_path / "term.log")
    assert wait_until(process, lambda: steps_done(run_dir) >= 8)  # inside epoch 1
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 128 + signal.SIGTERM
    log = (tmp_path / "term.log").read_text()
    assert "contrastlab fit: stopped by SIGTERM at epoch 1, step" in log
    saved = load_checkpoint_file(run_dir / "checkpoints" / "last.ckpt")
    assert saved["global_step"] % 6 != 0  # mid-epoch: only the signal saves there
    assert saved["global_step"] == steps_done(run_dir)  # nothing done after the save
    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same_state(
        reference / "checkpoints" / "last.ckpt", run_dir / "checkpoints" / "last.ckpt"
    )
    same_rows(reference, run_dir)


@pytest.mark.slow
def test_sigint_and_slurm_preemption(straight, tmp_path):
    data, _ = straight
    scontrol = tmp_path / "bin" / "scontrol"
    scontrol.parent.mkdir()
    scontrol.write_text(f'#!/bin/sh\necho "$@" > {tmp_path / "scontrol.args"}\n')
    scontrol.chmod(0o755)
    for signum, env in (
        (signal.SIGINT, {}),
        (signal.SIGUSR1, {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "pretrain"}),
    ):
        run_dir, log = tmp_path / signum.name, tmp_path / f"{signum.name}.log"
        environment = {**os.environ, **env, "PATH": f"{scontrol.parent}:{os.environ['PATH']}"}
        with log.open("w") as out:
            process = subprocess.Popen(
                fit_command(run_dir, data), env=environment, stdout=out, stderr=out
            )
        assert wait_until(process, lambda d=run_dir: steps_done(d) >= 3)
        process.send_signal(signum)
        assert process.wait(timeout=120) == 128 + signum, log.read_text()[-2000:]
        assert f"stopped by {signum.name}" in log.read_text()
        assert load_checkpoint_file(run_dir / "checkpoints" / "last.ckpt")["global_step"] >= 3
    assert (tmp_path / "scontrol.args").read_text().split() == ["requeue", "4242"]


# ----------------------------------------------------------------------------- in-process runs


BAD_VALUES = [
    (
        ["--model.temperature", "0"],
        "model.temperature = 0.0 is not allowed: it must be a number > 0",
    ),
    (["--model.temperature", "-0.1"], "model.temperature = -0.1"),
    (
        ["--model.momentum", "2.0"],
        "model.momentum = 2.0 is not allowed: it must be a number in [0, 1)",
    ),
    (["--model.momentum", "1.0"], "model.momentum = 1.0"),
    (["--model.bn_splits", "0"], "model.bn_splits = 0 is not allowed: it must be an integer >= 1"),
    (["--model.bn_splits", "3"], "model.bn_splits = 3 must divide data.batch_size = 16"),
    (["--model.lr", "-0.03"], "model.lr = -0.03 is not allowed: it must be a number > 0"),
    (["--model.weight_decay", "-1"], "model.weight_decay = -1.0"),
    (["--data.batch_size", "0"], "data.batch_size = 0 is not allowed: it must be an integer >= 1"),
    (
        ["--model.queue_size", "0"],
        "model.queue_size = 0 is not allowed: it must be an integer >= 1",
    ),
    (
        ["--data.train_subset", "5000"],
        "data.train_subset (the train split): 5000 is more than its 100",
    ),
    (["--trainer.max_epochs", "0"], "trainer.max_epochs = 0 is not allowed"),
    (["--checkpoint.every_minutes", "0"], "checkpoint.every_minutes = 0.0 is not allowed"),
    (["--model.augment.blur_prob", "1.5"], "model.augment.blur_prob must lie in [0, 1], got 1.5"),
]


@pytest.mark.parametrize(
    ("option", "message"), BAD_VALUES, ids=[" ".join(o) for o, _ in BAD_VALUES]
)
def test_bad_value_is_one_line_and_writes_nothing(tmp_path, tiny_cifar, option, message):
    run_dir = tmp_path / "bad"
    with pytest.raises(SystemExit) as error:
        fit(run_dir, tiny_cifar, *option)
    text = str(error.value.code)
    assert message in text and "\n" not in text, text
    assert not run_dir.exists()


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, tiny_cifar):
    run_dir = tmp_path / "nan"
    # the loss, or first the weights or BatchNorm statistics its update overflowed
    stopped = r"(the loss|a weight or a statistic) became NaN or infinite by step \d+"
    with pytest.raises(SystemExit, match=stopped) as error:
        fit(run_dir, tiny_cifar, "--model.lr", "1e12", "--checkpoint.every_n_steps", "1")
    assert "is kept" in str(error.value.code)
    saved = load_checkpoint_file(run_dir / "checkpoints" / "last.ckpt")
    assert all(torch.isfinite(t.float()).all() for t in saved["state_dict"].values())


def test_full_disk_mid_run_keeps_the_previous_checkpoint(tmp_path, tiny_cifar, monkeypatch):
    writes = []
    real_save = torch.save

    def save_until_disk_full(obj, f, *args, **kwargs):
        writes.append(1)
        if len(writes) > 1:  # torch reports ENOSPC deep inside its own error
            try:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            except OSError as cause:
                raise RuntimeError(
                    "[enforce fail at inline_container.cc:672] . unexpected pos"
                ) from cause
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_until_disk_full)
    run_dir = tmp_path / "full"
    with pytest.raises(SystemExit) as error:
        fit(run_dir, tiny_cifar, "--checkpoint.every_n_steps", "2", "--trainer.max_epochs", "1")
    text = str(error.value.code)
    assert "could not write a checkpoint" in text and "No space left on device" in text
    assert "is intact" in text and "\n" not in text
    assert load_checkpoint_file(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 2
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["last.ckpt"]


def test_no_room_or_no_folder_stops_before_anything_is_written(tmp_path, tiny_cifar, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(SystemExit, match="a_file/run/checkpoints is not writable: Not a directory"):
        fit(blocker / "run", tiny_cifar)
    monkeypatch.setattr("contrastlab.app.fit.free_bytes", lambda folder: 50_000_000)
    with pytest.raises(
        SystemExit, match=r"not enough space for checkpoints: .* needed .* 50.0 MB free"
    ):
        fit(tmp_path / "small", tiny_cifar)
    assert not (tmp_path / "small").exists()


def test_resume_refuses_changes_and_crafted_checkpoints(tmp_path, tiny_cifar, capsys):
    run_dir = tmp_path / "run"
    fit(run_dir, tiny_cifar, "--trainer.max_epochs", "1")
    with pytest.raises(SystemExit, match="already holds a run"):
        fit(run_dir, tiny_cifar, "--trainer.max_epochs", "1")
    with pytest.raises(SystemExit, match=r"model.lr: 0.06 in the checkpoint, 0.1 now"):
        fit(run_dir, tiny_cifar, "--trainer.max_epochs", "1", "--resume", "--model.lr", "0.1")
    # an explicit path is held to the same rule (Lightning would silently take its options)
    path = str(run_dir / "checkpoints" / "last.ckpt")
    with pytest.raises(SystemExit, match="model.temperature: 0.1 in the checkpoint, 0.2 now"):
        fit(run_dir, tiny_cifar, "--resume", path, "--model.temperature", "0.2")
    # max_epochs may change, and says what that does to the schedule
    fit(run_dir, tiny_cifar, "--trainer.max_epochs", "2", "--resume")
    assert (
        "trainer.max_epochs 1 -> 2: the cosine schedule now spans 2 epochs"
        in capsys.readouterr().err
    )
    assert load_checkpoint_file(path)["epoch"] == 1
    crafted = load_checkpoint_file(path)
    crafted["hyper_parameters"]["_class_path"] = "this.Anything"
    torch.save(crafted, tmp_path / "crafted.ckpt")
    with pytest.raises(SystemExit, match="names the class 'this.Anything'; only contrastlab's"):
        fit(tmp_path / "other", tiny_cifar, "--resume", str(tmp_path / "crafted.ckpt"))
    (tmp_path / "cut.ckpt").write_bytes(Path(path).read_bytes()[:100_000])
    with pytest.raises(SystemExit, match="cut.ckpt is not a readable contrastlab checkpoint"):
        fit(tmp_path / "other", tiny_cifar, "--resume", str(tmp_path / "cut.ckpt"))
    assert not (tmp_path / "other").exists()


def test_resume_writes_last_ckpt_of_its_own_run_directory(tmp_path, tiny_cifar):
    fit(tmp_path / "a", tiny_cifar, "--trainer.max_epochs", "1")
    copy = tmp_path / "copy"
    (copy / "checkpoints").mkdir(parents=True)
    (copy / "checkpoints" / "last.ckpt").write_bytes(
        (tmp_path / "a/checkpoints/last.ckpt").read_bytes()
    )
    (copy / "checkpoints" / ".last.ckpt.stale.tmp").write_bytes(b"left by a kill")
    fit(copy, tiny_cifar, "--trainer.max_epochs", "2", "--resume")
    assert sorted(p.name for p in (copy / "checkpoints").iterdir()) == ["last.ckpt"]
    assert load_checkpoint_file(copy / "checkpoints" / "last.ckpt")["epoch"] == 1


def test_resume_without_a_checkpoint_starts_fresh_and_says_so(tmp_path, tiny_cifar, capsys):
    fit(tmp_path / "new", tiny_cifar, "--trainer.max_epochs", "1", "--resume")
    assert "no checkpoint at" in capsys.readouterr().err
    assert load_checkpoint_file(tmp_path / "new/checkpoints/last.ckpt")["epoch"] == 0


def test_knn_refuses_a_crafted_class_path(tmp_path):
    torch.save(
        {"hyper_parameters": {"_class_path": "os.system"}, "state_dict": {}}, tmp_path / "x.ckpt"
    )
    with pytest.raises(SystemExit, match="names the class 'os.system'"):
        main(["knn", "--checkpoint", str(tmp_path / "x.ckpt")])


# ----------------------------------------------------------------------------- pieces


def test_allow_list_names_only_contrastlab_methods():
    from contrastlab.methods import BYOL, MoCoV2

    assert method_class({"hyper_parameters": {"_class_path": "contrastlab.methods.BYOL"}}) is BYOL
    assert (
        method_class({"hyper_parameters": {"_class_path": "contrastlab.methods.mocov2.MoCoV2"}})
        is MoCoV2
    )
    assert method_class({}) is MoCoV2  # checkpoints from before the name was saved
    for bad in ("evil.MoCoV2", "contrastlab.methods.base.ContrastiveMethod", "builtins.exec", 3):
        with pytest.raises(CheckpointError):
            method_class({"hyper_parameters": {"_class_path": bad}})


def test_resume_changes_ignore_what_does_not_change_training():
    saved = {"lr": 0.06, "knn_k": 200, "augment": {"size": 32}, "_instantiator": "x"}
    now = {"lr": 0.06, "knn_k": 20, "augment": {"size": 16}}
    assert resume_changes("model", saved, now) == [
        "model.augment: {'size': 32} in the checkpoint, {'size': 16} now"
    ]
    assert (
        resume_changes("data", {"root": "a", "batch_size": 8}, {"root": "b", "batch_size": 8}) == []
    )


def test_an_option_added_after_the_checkpoint_counts_as_its_default():
    """A checkpoint written before data.skip_bad_images existed resumes with its default, and
    is refused with another value."""
    from contrastlab.data.module import ContrastDataModule
    from contrastlab.runs.resume import option_defaults

    defaults = option_defaults(ContrastDataModule)
    assert defaults["skip_bad_images"] is False and defaults["batch_size"] == 512
    old = {"batch_size": 8}
    assert resume_changes("data", old, {"batch_size": 8, "skip_bad_images": False}, defaults) == []
    assert resume_changes("data", old, {"batch_size": 8, "skip_bad_images": True}, defaults) == [
        "data.skip_bad_images: False in the checkpoint, True now"
    ]


def test_schedule_note_gives_the_learning_rate_jump():
    # 10 steps an epoch, no warm-up: at step 100 of 100 the factor is 0; of 200 it is 0.5
    note = schedule_note(10, 20, step=100, steps_per_epoch=10, warmup_epochs=0)
    assert "from 0.000 to 0.500 x model.lr" in note


def test_ranges_accept_and_refuse_exactly_their_bounds():
    open_unit = Range(0, 1, high_open=True)
    assert open_unit.accepts(0) and open_unit.accepts(0.999) and not open_unit.accepts(1.0)
    assert not Range(0, low_open=True).accepts(0.0) and Range(0).accepts(0.0)
    integer = Range(1, integer=True)
    assert integer.accepts(3) and not integer.accepts(2.5) and not integer.accepts(0)
    for value in (float("nan"), float("inf"), True, "3"):
        assert not Range().accepts(value)
    check_value("model.unknown_option", -5)  # no rule: passes
    check_value("model.lr", None)  # not set: passes
    with pytest.raises(
        OptionError, match=r"^model.lr = 0 is not allowed: it must be a number > 0$"
    ):
        check_value("model.lr", 0)


def test_loader_skips_consumed_batches_of_the_saved_epoch_only():
    sampler = GlobalBatchSampler(40, batch_size=4, seed=1)
    loader = ResumableLoader(
        range(40),
        batch_sampler=torch.utils.data.BatchSampler(sampler, 4, drop_last=True),
        collate_fn=list,
    )
    sampler.set_epoch(2)
    whole = list(loader)
    assert loader.state_dict() == {"epoch": 2, "batches": 10}
    iterator = iter(loader)
    first = [next(iterator) for _ in range(3)]
    assert loader.state_dict() == {"epoch": 2, "batches": 3} and first == whole[:3]
    resumed = ResumableLoader(
        range(40),
        batch_sampler=torch.utils.data.BatchSampler(
            GlobalBatchSampler(40, batch_size=4, seed=1), 4, drop_last=True
        ),
        collate_fn=list,
    )
    resumed.load_state_dict({"epoch": 2, "batches": 3})
    resumed.global_sampler.set_epoch(2)
    assert list(resumed) == whole[3:]
    assert resumed.state_dict() == {"epoch": 2, "batches": 10}
    resumed.global_sampler.set_epoch(3)  # the skip applied once: the next epoch is whole
    assert len(list(resumed)) == 10
    other = GlobalBatchSampler(40, batch_size=4, seed=1)
    other.skip_batches(5, 3)  # a skip for another epoch does nothing
    other.set_epoch(2)
    assert len(list(other)) == 40


def test_csv_record_keeps_rows_before_the_resume_step(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,step,train/loss_step\n0,0,5.0\n0,1,4.0\n0,2,3.0\n1,3,2.0\n1,4,1.")
    writer = ContinuousCSVWriter(str(tmp_path), keep_before_step=2)
    assert read_rows(path)[1][-1]["step"] == "3"  # nothing changes before the first new row
    writer.log_metrics({"train/loss_step": 3.5, "epoch": 0}, step=2)
    writer.log_metrics({"knn/top1": 40.0, "epoch": 0}, step=2)  # a new column: header grows
    header, rows = read_rows(path)
    assert header == ["epoch", "knn/top1", "step", "train/loss_step"]
    assert [(r["step"], r["train/loss_step"], r["knn/top1"]) for r in rows] == [
        ("0", "5.0", ""),
        ("1", "4.0", ""),
        ("2", "3.5", ""),
        ("2", "", "40.0"),
    ]


def test_cut_last_line_is_dropped_when_reading(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,step,x\n0,0,1.0\n0,1,2.")
    assert read_rows(path) == (["epoch", "step", "x"], [{"epoch": "0", "step": "0", "x": "1.0"}])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))


@pytest.mark.parametrize(
    ("cadence", "expected"),
    [
        ([], [6, 12]),  # epoch ends only
        (["--checkpoint.every_n_steps", "4"], [4, 6, 8, 12]),
        (["--checkpoint.every_minutes", "1e-9"], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]),
        (["--checkpoint.every_minutes", "60"], [6, 12]),
    ],
)
def test_save_cadence(tmp_path, tiny_cifar, monkeypatch, cadence, expected):
    from contrastlab.runs.checkpoints import RunCheckpoint

    staged = []
    stage = RunCheckpoint._stage

    def record(self, trainer, pl_module):
        staged.append(trainer.global_step)
        stage(self, trainer, pl_module)

    monkeypatch.setattr(RunCheckpoint, "_stage", record)
    args = ["--checkpoint.every_n_steps", "null", "--trainer.max_epochs", "2", *cadence]
    fit(tmp_path / "run", tiny_cifar, *args)
    assert staged == expected


@pytest.mark.parametrize(
    ("requeue", "signum", "calls"),
    [(True, "SIGUSR1", 1), (False, "SIGUSR1", 0), (True, "SIGTERM", 0)],
)
def test_slurm_requeue_only_on_sigusr1_when_asked(monkeypatch, capsys, requeue, signum, calls):
    import contrastlab.app.fit
    import contrastlab.runs.signals
    from contrastlab.runs.checkpoints import RunCheckpoint

    class Stopped:
        def __init__(self, args, given=None):
            stop = RunCheckpoint(requeue=requeue)._stopped(signal.Signals[signum], Trainer(), 3)
            raise stop

    class Trainer:
        default_root_dir, global_step = "runs/x", 40

    requeued = []
    monkeypatch.setattr(contrastlab.app.fit, "ContrastCLI", Stopped)
    monkeypatch.setattr(
        contrastlab.runs.signals,
        "requeue_slurm_job",
        lambda job: requeued.append(job) or "requeued",
    )
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_JOB_NAME", "pretrain")
    with pytest.raises(SystemExit) as error:
        main(["fit"])
    assert error.value.code == 128 + signal.Signals[signum]
    assert len(requeued) == calls
    assert f"stopped by {signum} at epoch 3, step 40" in capsys.readouterr().err
