"""What the command line prints: a user's mistake in one line, Lightning's banners only with
``--verbose`` (a whole run's console: tests/test_crashproof.py)."""

import subprocess
import sys

import pytest

from contrastlab.app.cli import main
from contrastlab.app.console import VERBOSE_ENV
from contrastlab.options import brief_parser_message


@pytest.fixture
def not_verbose(monkeypatch):
    monkeypatch.setenv(VERBOSE_ENV, "")  # restored after the test, whatever main sets


def fit_error(*options: str) -> str:
    with pytest.raises(SystemExit) as stop:
        main(["fit", "--config", "cifar10/mocov2_demo", *options])
    return str(stop.value)


def test_a_mistyped_key_is_one_line_with_the_closest_keys(not_verbose):
    message = fit_error("--model.temprature", "0.2")
    assert message.startswith("contrastlab fit: 'model.temprature' is not a valid key; valid")
    assert "model.temperature" in message
    assert "\n" not in message


def test_a_value_of_the_wrong_type_is_one_line(not_verbose):
    assert fit_error("--model.temperature", "abc") == (
        "contrastlab fit: model.temperature: expected float, got 'abc'"
    )
    assert fit_error("--trainer.max_epochs", "x") == (
        "contrastlab fit: trainer.max_epochs: expected int, got 'x'"
    )


def test_an_option_of_another_framework_names_the_framework(not_verbose):
    with pytest.raises(SystemExit) as stop:
        main(["fit", "--config", "cifar10/simclr", "--model.queue_size", "40"])
    assert str(stop.value) == "contrastlab fit: model.queue_size is not an option of SimCLR"


def test_verbose_keeps_the_parsers_whole_message(not_verbose):
    message = fit_error("--verbose", "--model.temperature", "abc")
    assert "Given value" in message and "Subtypes" in message


def test_brief_message_of_other_parser_errors_is_their_first_line():
    assert brief_parser_message("unrecognized arguments: --foo\nmore") == (
        "unrecognized arguments: --foo"
    )


def run_without_data(tmp_path, *flags: str) -> str:
    """A ``fit`` that builds its trainer, then stops at the missing dataset."""
    command = [sys.executable, "-m", "contrastlab", "fit", "--config", "cifar10/mocov2_demo"]
    command += ["--data.root", str(tmp_path / "none"), "--trainer.precision", "32-true"]
    command += ["--trainer.default_root_dir", str(tmp_path / "run"), *flags]
    done = subprocess.run(command, capture_output=True, text=True, env=None)
    assert done.returncode == 1, done.stderr[-2000:]
    return done.stdout + done.stderr


def test_lightning_banners_only_with_verbose(tmp_path, monkeypatch):
    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    quiet, loud = run_without_data(tmp_path), run_without_data(tmp_path, "--verbose")
    assert "contrastlab: data error" in quiet and "contrastlab: data error" in loud
    assert "GPU available" not in quiet and "GPU available" in loud
    assert "litlogger" not in quiet


def test_fit_help_lists_what_the_readme_says(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["fit", "--help"])
    assert stop.value.code in (0, None)
    shown = capsys.readouterr().out
    for option in ("--data.batch_size", "--checkpoint.every_n_steps", "--rankme.images"):
        assert option in shown, option
    for own in ("--resume [PATH]", "--verbose", "--model.help MoCoV2"):
        assert own in shown.split("contrastlab's own options of fit")[1], own


def test_a_cluster_preset_adapts_to_a_small_machine(monkeypatch, capsys):
    import os

    from contrastlab.app.fit import adapt_to_machine

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    config = {"data": {"num_workers": 8}, "trainer": {"strategy": "ddp", "accelerator": "cpu"}}
    adapt_to_machine(config)
    assert config == {
        "data": {"num_workers": 2},
        "trainer": {"strategy": "auto", "accelerator": "cpu"},
    }
    said = capsys.readouterr().err
    assert "data.num_workers 8 -> 2" in said and "trainer.strategy ddp -> auto" in said
    several = {"data": {"num_workers": 2}, "trainer": {"strategy": "ddp", "devices": 2}}
    several["trainer"]["accelerator"] = "cpu"
    adapt_to_machine(several)  # two processes: DDP stays, two workers fit two cores
    assert several["trainer"]["strategy"] == "ddp" and several["data"]["num_workers"] == 2
