"""LARS as SimCLR's and BYOL's references: trust ratio on the decayed gradient, the learning
rate inside the momentum, biases and BatchNorm neither adapted nor decayed."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import QUIET_BATCHES_OF_16
from torch import nn

from contrastlab.app.cli import main
from contrastlab.optim import LARS, lars_groups
from contrastlab.runs.resume import load_checkpoint_file


def test_one_step_by_hand():
    """w = diag(3, 4) (norm 5), g = e11, wd 0.5: d = g + wd w = diag(2.5, 2), |d| = sqrt(10.25),
    ratio = 0.001 * 5 / |d|; with lr 2 the first step is w - 2 * ratio * d."""
    weight = nn.Parameter(torch.tensor([[3.0, 0.0], [0.0, 4.0]], dtype=torch.float64))
    weight.grad = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    optimizer = LARS([weight], lr=2.0, momentum=0.9, weight_decay=0.5)
    optimizer.step()
    ratio = 0.001 * 5 / math.sqrt(2.5**2 + 2**2)
    expected = torch.tensor(
        [[3 - 2 * ratio * 2.5, 0.0], [0.0, 4 - 2 * ratio * 2.0]], dtype=torch.float64
    )
    torch.testing.assert_close(weight.detach(), expected, rtol=0, atol=1e-12)
    # second step at lr 1 (a schedule moved it), same gradient: v = 0.9 v + lr * ratio' * d'.
    # The lr sits inside the momentum, as the references: lr * (0.9 v / 2 + ratio' d') would
    # differ once the lr changes
    first_velocity = 2 * ratio * torch.tensor([[2.5, 0.0], [0.0, 2.0]], dtype=torch.float64)
    moved = weight.detach().clone()
    step = weight.grad + 0.5 * moved
    second_ratio = 0.001 * moved.norm() / step.norm()
    optimizer.param_groups[0]["lr"] = 1.0
    optimizer.step()
    torch.testing.assert_close(
        weight.detach(),
        moved - (0.9 * first_velocity + second_ratio * step),
        atol=1e-12,
        rtol=0,
    )


def test_pure_decay_shrinks_by_lr_times_trust_whatever_the_decay():
    """With no gradient, d = wd w and ratio = 0.001 / wd: the step is lr * 0.001 * w for any wd
    (the trust ratio makes LARS's decay scale-free)."""
    for decay in (1e-6, 1e-3, 0.5):
        weight = nn.Parameter(torch.randn(4, 3, dtype=torch.float64))
        before = weight.detach().clone()
        weight.grad = torch.zeros_like(weight)
        LARS([weight], lr=0.3, weight_decay=decay).step()
        torch.testing.assert_close(weight.detach(), before * (1 - 0.3 * 0.001), rtol=1e-12, atol=0)


def test_biases_and_batchnorm_are_plain_sgd_without_decay():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    groups = lars_groups([{"params": list(model.parameters()), "fixed_lr": True}])
    assert [len(g["params"]) for g in groups] == [1, 3]  # the weight; bias, BN weight and bias
    assert groups[1]["weight_decay"] == 0.0 and groups[1]["adapt"] is False
    assert all(g["fixed_lr"] for g in groups)
    optimizer = LARS(groups, lr=0.5, momentum=0.9, weight_decay=0.1)
    bias, norm_weight = model[0].bias, model[1].weight
    before_bias, before_norm = bias.detach().clone(), norm_weight.detach().clone()
    for parameter in model.parameters():
        parameter.grad = torch.full_like(parameter, 0.2)
    optimizer.step()
    torch.testing.assert_close(bias.detach(), before_bias - 0.5 * 0.2)  # no ratio, no decay
    torch.testing.assert_close(norm_weight.detach(), before_norm - 0.5 * 0.2)


def test_simclr_trains_with_lars_and_saves_its_state(tmp_path, tiny_cifar):
    options = ["--model.optimizer", "lars", "--model.augment.size", "8", "--model.lr", "0.3"]
    main(
        [
            "fit",
            "--config",
            "cifar10/simclr",
            "--data.root",
            str(tiny_cifar),
            "--trainer.default_root_dir",
            str(tmp_path / "run"),
            "--trainer.max_epochs",
            "1",
            *QUIET_BATCHES_OF_16,
            *options,
        ]
    )
    checkpoint = load_checkpoint_file(tmp_path / "run" / "checkpoints" / "last.ckpt")
    groups = checkpoint["optimizer_states"][0]["param_groups"]
    assert [g["adapt"] for g in groups] == [True, False]
    assert groups[1]["weight_decay"] == 0.0 and groups[0]["weight_decay"] == 1e-4
    velocities = checkpoint["optimizer_states"][0]["state"]
    assert velocities and all(torch.isfinite(s["velocity"]).all() for s in velocities.values())
    with pytest.raises(ValueError, match="trust"):
        LARS([nn.Parameter(torch.zeros(2, 2))], lr=0.1, trust=0)


def test_byols_form_applies_the_lr_after_the_momentum():
    """BYOL's optax chain: v = m v + ratio * d, w = w - lr * v. Same first step as SimCLR's
    form; at a changed lr the second step is lr' * (0.9 v1 / lr + ratio' d')."""
    weight = nn.Parameter(torch.tensor([[3.0, 0.0], [0.0, 4.0]], dtype=torch.float64))
    weight.grad = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    optimizer = LARS([weight], lr=2.0, momentum=0.9, weight_decay=0.5, lr_in_momentum=False)
    optimizer.step()
    ratio = 0.001 * 5 / math.sqrt(2.5**2 + 2**2)
    velocity = ratio * torch.tensor([[2.5, 0.0], [0.0, 2.0]], dtype=torch.float64)
    moved = weight.detach().clone()
    torch.testing.assert_close(moved, torch.diag(torch.tensor([3.0, 4.0]).double()) - 2 * velocity)
    step = weight.grad + 0.5 * moved
    second_ratio = 0.001 * moved.norm() / step.norm()
    optimizer.param_groups[0]["lr"] = 1.0
    optimizer.step()
    expected = moved - 1.0 * (0.9 * velocity + second_ratio * step)
    torch.testing.assert_close(weight.detach(), expected, atol=1e-12, rtol=0)
