"""Batch-aware learning rates: every preset names the global batch its lr was written for, and a
run at another global batch starts from the lr its rule gives, and says so."""

from __future__ import annotations

import pytest
from conftest import tiny_moco_fit

from contrastlab.app.cli import main
from contrastlab.presets import list_presets, resolved_settings
from contrastlab.runs.resume import load_checkpoint_file
from contrastlab.schedules import batch_scaled_lr


def test_the_rules_by_hand():
    assert batch_scaled_lr(0.06, 512, 2048, "linear") == pytest.approx(0.24)
    assert batch_scaled_lr(0.03, 256, 32, "linear") == pytest.approx(0.00375)
    assert batch_scaled_lr(0.3, 256, 4096, "sqrt") == pytest.approx(1.2)  # 0.3 x sqrt(16)
    assert batch_scaled_lr(0.06, 512, 2048, "keep") == 0.06
    assert batch_scaled_lr(0.06, None, 2048, "linear") == 0.06
    assert batch_scaled_lr(0.06, 512, 512, "sqrt") == 0.06
    with pytest.raises(ValueError, match="lr_scaling"):
        batch_scaled_lr(0.06, 512, 256, "cubic")


def test_every_preset_names_the_batch_its_lr_was_written_for():
    for name in list_presets():
        settings = resolved_settings(name)
        written_for = settings.get("model.lr_batch")
        assert isinstance(written_for, int), name
        expected = 256 if name.startswith("imagenet/") else settings["data.batch_size"]
        assert written_for == expected, name


def base_lr(run_dir) -> float:
    checkpoint = load_checkpoint_file(run_dir / "checkpoints" / "last.ckpt")
    (lr,) = set(checkpoint["lr_schedulers"][0]["base_lrs"])
    return lr


def test_a_smaller_batch_scales_the_lr_and_says_so(tmp_path, tiny_cifar, capsys):
    """cifar10/mocov2 writes lr 0.06 for a global batch of 512; a run of 16 starts from
    0.06 x 16 / 512. ``keep`` trains at 0.06 and warns; one process with one BatchNorm group
    warns that shuffle-BN does nothing."""
    main(tiny_moco_fit(tmp_path / "scaled", tiny_cifar, 1))
    assert base_lr(tmp_path / "scaled") == pytest.approx(0.06 * 16 / 512)
    err = capsys.readouterr().err
    assert "lr 0.001875: model.lr 0.06 was written for a global batch of 512" in err
    assert "shuffle-BN" not in err  # two BatchNorm groups (model.bn_splits 2)
    keep = ["--model.lr_scaling", "keep", "--model.bn_splits", "1"]
    main(tiny_moco_fit(tmp_path / "kept", tiny_cifar, 1, *keep))
    assert base_lr(tmp_path / "kept") == 0.06
    err = capsys.readouterr().err
    assert "warning: model.lr 0.06 was written for a global batch of 512; this run's is 16" in err
    assert "shuffle-BN with one BatchNorm group" in err
