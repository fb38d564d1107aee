"""End-to-end: the CLI, config errors, exact resume and atomic checkpoints (tiny data)."""

from pathlib import Path

import pytest
import torch
from conftest import CCROP_ONCE, QUIET_BATCHES_OF_16, TINY_MOCO, KeepUntrainedState, tiny_moco_fit

from contrastlab.app.cli import main, rewrite_fit_args
from contrastlab.app.evaluate import knn_of_model
from contrastlab.app.report import read_run
from contrastlab.runs.checkpoints import StagedCheckpointIO
from contrastlab.runs.records import read_rows
from contrastlab.runs.resume import (
    data_from_checkpoint,
    load_checkpoint_file,
    method_from_checkpoint,
)

TINY = [*TINY_MOCO, *QUIET_BATCHES_OF_16]


def fit(
    tmp_path: Path, data_root: Path, run: str, *extra: str, config: str = "cifar10/mocov2"
) -> Path:
    run_dir = tmp_path / run
    main(
        [
            "fit",
            "--config",
            config,
            "--data.root",
            str(data_root),
            "--trainer.default_root_dir",
            str(run_dir),
            *TINY,
            *extra,
        ]
    )
    return run_dir


def test_fit_writes_run_directory_and_knn_runs(tmp_path, tiny_cifar, capsys):
    run_dir = fit(
        tmp_path,
        tiny_cifar,
        "run",
        "--trainer.max_epochs",
        "1",
        "--trainer.check_val_every_n_epoch",
        "1",
    )
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "config.yaml").is_file() and (run_dir / "metrics.csv").is_file()
    assert list(run_dir.glob("events.out.tfevents.*"))
    metrics = (run_dir / "metrics.csv").read_text()
    assert "knn/top1" in metrics and "train/loss_step" in metrics
    checkpoint = load_checkpoint_file(run_dir / "checkpoints" / "last.ckpt")
    assert {"queue.keys", "queue.indices", "queue.pointer"} <= set(checkpoint["state_dict"])
    main(["knn", "--checkpoint", str(run_dir / "checkpoints" / "last.ckpt"), "--k", "5"])
    assert "kNN top-1" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("config", "extra"),
    [
        ("cifar10/mocov2", ["--trainer.precision", "32-true"]),
        ("cifar10/mocov2", ["--trainer.precision", "bf16-mixed"]),
        ("cifar10/mocov2_ccrop", CCROP_ONCE),
    ],
)
def test_resume_is_bit_identical(tmp_path, tiny_cifar, config, extra):
    straight = fit(
        tmp_path, tiny_cifar, "straight", "--trainer.max_epochs", "2", *extra, config=config
    )
    first = fit(
        tmp_path,
        tiny_cifar,
        "resumed",
        "--trainer.max_epochs",
        "2",
        "--trainer.callbacks+=conftest.StopAfterFirstEpoch",
        *extra,
        config=config,
    )
    saved = load_checkpoint_file(first / "checkpoints" / "last.ckpt")
    assert saved["global_step"] == 6
    if config.endswith("ccrop"):
        boxes = saved["state_dict"]["views.box_sampler.boxes"]
        assert (boxes != torch.tensor([0.0, 0.0, 1.0, 1.0])).any()
    fit(
        tmp_path,
        tiny_cifar,
        "resumed",
        "--trainer.max_epochs",
        "2",
        "--resume",
        *extra,
        config=config,
    )
    a = load_checkpoint_file(straight / "checkpoints" / "last.ckpt")
    b = load_checkpoint_file(first / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == 12
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    momentum = a["optimizer_states"][0]["state"]
    for i, state in momentum.items():
        assert torch.equal(
            state["momentum_buffer"], b["optimizer_states"][0]["state"][i]["momentum_buffer"]
        )
    assert a["lr_schedulers"] == b["lr_schedulers"]
    assert torch.equal(a["contrastlab"]["view_rng"], b["contrastlab"]["view_rng"])


def test_crash_during_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    io = StagedCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": torch.tensor(1)}, path)
    assert not path.exists()  # staged only: nothing replaces the target before commit()
    io.commit()

    def crash(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": torch.tensor(2)}, path)
    assert io.load_checkpoint(path)["step"].item() == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary left over


def test_unknown_key_fails_before_training_with_alternatives(tmp_path, tiny_cifar, capsys):
    with pytest.raises(SystemExit) as error:
        fit(tmp_path, tiny_cifar, "bad", "--model.queue_sise", "8")
    assert "model.queue_size" in str(error.value)
    with pytest.raises(SystemExit) as error:
        fit(tmp_path, tiny_cifar, "bad", "--trainer.max_epoch", "1")
    assert "trainer.max_epochs" in str(error.value)
    assert not (tmp_path / "bad").exists()


def test_unknown_preset_and_command():
    with pytest.raises(SystemExit, match="cifar10/mocov2"):
        main(["fit", "--config", "cifar10/mocov"])
    with pytest.raises(SystemExit, match="did you mean fit"):
        main(["fitt"])


def test_resume_flag_rewrites_to_ckpt_path():
    assert rewrite_fit_args(["--resume"]) == ["--ckpt_path", "last"]
    assert rewrite_fit_args(["--resume", "a.ckpt", "--x", "1"]) == [
        "--ckpt_path",
        "a.ckpt",
        "--x",
        "1",
    ]


def test_missing_data_says_where_to_put_it(tmp_path):
    with pytest.raises(SystemExit, match="put the extracted cifar-10-python.tar.gz at"):
        main(
            [
                "fit",
                "--config",
                "cifar10/mocov2",
                "--data.root",
                str(tmp_path / "none"),
                "--data.download",
                "false",
                *TINY,
            ]
        )


def test_synco_preset_trains_logs_hardness_and_reloads(tmp_path, tiny_cifar, capsys):
    run_dir = fit(
        tmp_path,
        tiny_cifar,
        "synco",
        "--model.synthetic.init_args.n_hard",
        "16",
        "--model.synthetic_warmup_epochs",
        "0",
        "--trainer.max_epochs",
        "1",
        "--trainer.check_val_every_n_epoch",
        "1",
        config="cifar10/mocov2_synco",
    )
    header = (run_dir / "metrics.csv").read_text().splitlines()[0]
    for column in (
        "hardness/positive",
        "hardness/pool/q99",
        "hardness/mixup/mean",
        "hardness/adversarial/q50",
        "hardness/synthetic_above_positive",
        "hardness/pool_false_negative_share",
    ):
        assert column in header
    checkpoint = load_checkpoint_file(run_dir / "checkpoints" / "last.ckpt")
    assert checkpoint["hyper_parameters"]["synthetic"]["n_hard"] == 16
    main(["knn", "--checkpoint", str(run_dir / "checkpoints" / "last.ckpt"), "--k", "5"])
    assert "kNN top-1" in capsys.readouterr().out


def test_resume_with_another_training_set_size_is_refused(tmp_path, tiny_cifar):
    common = ["--trainer.max_epochs", "2", *CCROP_ONCE]
    fit(
        tmp_path,
        tiny_cifar,
        "run",
        *common,
        "--trainer.callbacks+=conftest.StopAfterFirstEpoch",
        config="cifar10/mocov2_ccrop",
    )
    with pytest.raises(SystemExit, match=r"data.train_subset: None in the checkpoint, 48 now"):
        fit(
            tmp_path,
            tiny_cifar,
            "run",
            *common,
            "--data.train_subset",
            "48",
            "--resume",
            config="cifar10/mocov2_ccrop",
        )


def knn_rows(run_dir: Path) -> list[dict[str, str]]:
    _, rows = read_rows(run_dir / "metrics.csv")
    return [r for r in rows if r.get("knn/top1")]


def test_the_untrained_encoder_is_the_first_knn_point(tmp_path, tiny_cifar, capsys):
    KeepUntrainedState.states.clear()
    options = ["--trainer.max_epochs", "2", "--trainer.check_val_every_n_epoch", "1"]
    keep = "--trainer.callbacks+=conftest.KeepUntrainedState"
    run_dir = fit(tmp_path, tiny_cifar, "run", *options, keep)
    rows = knn_rows(run_dir)
    assert [(r["epoch"], r["step"]) for r in rows] == [("-1", "0"), ("0", "5"), ("1", "11")]
    # the logged value is the kNN of the weights before the first step, computed independently
    checkpoint = load_checkpoint_file(run_dir / "checkpoints" / "last.ckpt")
    untrained = method_from_checkpoint(checkpoint)
    untrained.load_state_dict(KeepUntrainedState.states[0])
    data = data_from_checkpoint(checkpoint)
    expected = knn_of_model(untrained, data, k=200, t=0.1)
    assert float(rows[0]["knn/top1"]) == pytest.approx(expected, abs=1e-4)
    assert checkpoint["contrastlab"]["knn_untrained"] == pytest.approx(expected, abs=1e-4)
    trained = float(rows[-1]["knn/top1"])
    out = capsys.readouterr()
    bank, queries = len(data.bank_set), len(data.eval_set)
    sizes = f"bank {bank:,}, queries {queries:,}, training set {len(data.train_set):,}"
    assert f"kNN top-1 of the untrained encoder {expected:.2f}% (k=200, t=0.1; {sizes})" in out.out
    assert (rows[0]["knn/bank_images"], rows[0]["knn/query_images"]) == (str(bank), str(queries))
    assert sizes in out.err  # the summary line says it too
    summary = f"kNN top-1 {expected:.2f}% untrained -> {trained:.2f}% after 2 epochs"
    assert "contrastlab summary: epochs 2, steps 12, loss " in out.err and summary in out.err
    # the report's kNN curve starts there, at epoch 0
    assert read_run(run_dir).series["knn/top1"][0] == (0.0, float(rows[0]["knn/top1"]))


def test_a_resume_does_not_recompute_the_untrained_knn(tmp_path, tiny_cifar, capsys):
    options = ["--trainer.max_epochs", "2", "--trainer.check_val_every_n_epoch", "1"]
    stop = "--trainer.callbacks+=conftest.StopAfterFirstEpoch"
    run_dir = fit(tmp_path, tiny_cifar, "run", *options, stop)
    first = knn_rows(run_dir)[0]["knn/top1"]
    capsys.readouterr()
    fit(tmp_path, tiny_cifar, "run", *options, "--ckpt_path", "last")
    out = capsys.readouterr()
    assert "untrained encoder" not in out.out
    assert f"kNN top-1 {float(first):.2f}% untrained -> " in out.err
    assert [r["epoch"] for r in knn_rows(run_dir)] == ["-1", "0", "1"]
    assert knn_rows(run_dir)[0]["knn/top1"] == first


def test_no_untrained_knn_without_the_monitor(tmp_path, tiny_cifar):
    one_epoch = ["--trainer.max_epochs", "1", "--trainer.check_val_every_n_epoch", "1"]
    run_dir = fit(tmp_path, tiny_cifar, "off", *one_epoch, "--trainer.limit_val_batches", "0")
    assert knn_rows(run_dir) == []
    assert (
        load_checkpoint_file(run_dir / "checkpoints" / "last.ckpt")["contrastlab"]["knn_untrained"]
        is None
    )


def test_model_and_data_seeds_may_differ(tmp_path, tiny_cifar):
    run_dir = fit(tmp_path, tiny_cifar, "seeds", "--trainer.max_epochs", "1", "--model.seed", "1")
    checkpoint = load_checkpoint_file(run_dir / "checkpoints" / "last.ckpt")
    assert checkpoint["hyper_parameters"]["seed"] == 1
    assert checkpoint["datamodule_hyper_parameters"]["seed"] == 0


def test_the_progress_bar_shows_the_time_left_for_the_run(tmp_path, tiny_cifar, capfd):
    from contrastlab.app.fit import format_duration

    assert [format_duration(s) for s in (5, 62, 3723)] == ["0:05", "1:02", "1:02:03"]
    fit(
        tmp_path,
        tiny_cifar,
        "bar",
        "--trainer.max_epochs",
        "2",
        "--trainer.enable_progress_bar",
        "true",
    )
    shown = "".join(capfd.readouterr())
    assert "run ETA=" in shown


# ------------------------------------------------------------------------ waiting for data


def test_data_wait_clock_splits_wait_and_step_time(monkeypatch):
    from contrastlab.runs import statistics

    times = iter([0.0, 3.0, 4.0, 4.0, 8.0])  # restart, arrive, done, arrive, done
    monkeypatch.setattr(statistics.time, "perf_counter", lambda: next(times))
    clock = statistics.DataWaitClock()
    assert clock.share() is None
    clock.batch_arrived()
    clock.step_done()
    clock.batch_arrived()
    clock.step_done()
    assert (clock.wait, clock.busy) == (3.0, 5.0)
    assert clock.share() == pytest.approx(3 / 8)


def test_a_slow_loader_shows_as_data_wait(tmp_path, tiny_cifar, capsys, monkeypatch):
    """Every batch takes 1 s to arrive (a step of these tiny runs, a few hundredths): the
    summary and metrics.csv say the run waits for data most of the time."""
    import time

    import contrastlab.data.module as module

    fast = module.pass_batch

    def slow(batch):
        time.sleep(1.0)
        return fast(batch)

    monkeypatch.setattr(module, "pass_batch", slow)
    run_dir = tmp_path / "run"
    main(tiny_moco_fit(run_dir, tiny_cifar, 1, "--trainer.limit_train_batches", "3"))
    assert "of step time (input-bound" in capsys.readouterr().err
    _, rows = read_rows(run_dir / "metrics.csv")
    wait = [float(r["train/data_wait"]) for r in rows if r.get("train/data_wait")]
    assert len(wait) == 1 and wait[0] > 0.5
