"""GlobalBatchNorm against torch's BatchNorm over the whole batch: two gloo processes holding
half a batch each give the outputs, gradients and running statistics of one BatchNorm."""

from __future__ import annotations

import pytest
import torch
from spawn import in_two_processes
from torch import nn

from contrastlab.methods.base import check_batchnorm
from contrastlab.models.globalbn import GlobalBatchNorm, globalise_batchnorm
from contrastlab.models.heads import batch_norm_1d
from contrastlab.models.splitbn import SplitBatchNorm
from contrastlab.options import OptionError

SHAPES = {"2d": (12, 5, 3, 4), "1d": (12, 5), "1d_scale": (12, 5)}
"""Images, head features, and head features through a BatchNorm without a shift (SimCLR's
reference head)."""


def plain_norm(kind: str) -> nn.Module:
    if kind == "2d":
        return nn.BatchNorm2d(SHAPES[kind][1])
    return batch_norm_1d(SHAPES[kind][1], shift=kind != "1d_scale")


def set_parameters(norm: nn.Module, channels: int) -> None:
    norm.weight.data = torch.linspace(0.5, 1.5, channels)
    if norm.bias is not None:
        norm.bias.data = torch.linspace(-1, 1, channels)


def gradients(norm: nn.Module) -> dict[str, torch.Tensor]:
    grads = {"weight_grad": norm.weight.grad}
    if norm.bias is not None:
        grads["bias_grad"] = norm.bias.grad
    return grads


def inputs(shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch with a large offset (a naive E[x^2] - E[x]^2 in low precision would show it)
    and the upstream gradient of an arbitrary loss ``sum(y * r)``."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(shape, generator=g) * 3 + 5, torch.randn(shape, generator=g)


def reference(kind: str) -> dict[str, torch.Tensor]:
    """One process, plain BatchNorm (momentum 0.1) over the whole batch."""
    shape = SHAPES[kind]
    x, r = inputs(shape)
    norm = plain_norm(kind)
    set_parameters(norm, shape[1])
    x.requires_grad_(True)
    y = norm(x)
    (y * r).sum().backward()
    return {
        "y": y.detach(),
        "x_grad": x.grad,
        **gradients(norm),
        "running_mean": norm.running_mean,
        "running_var": norm.running_var,
    }


def _halves(rank: int, world: int) -> dict[str, torch.Tensor]:
    return {
        f"{kind}/{name}": value
        for kind in SHAPES
        for name, value in _half(rank, world, kind).items()
    }


def _half(rank: int, world: int, kind: str) -> dict[str, torch.Tensor]:
    shape = SHAPES[kind]
    x, r = inputs(shape)
    part = slice(rank * len(x) // world, (rank + 1) * len(x) // world)
    norm = globalise_batchnorm(nn.Sequential(plain_norm(kind)))[0]
    assert isinstance(norm, GlobalBatchNorm)
    assert (norm.bias is None) == (kind == "1d_scale")
    set_parameters(norm, shape[1])
    mine = x[part].clone().requires_grad_(True)
    y = norm(mine)
    (y * r[part]).sum().backward()
    return {
        "y": y.detach(),
        "x_grad": mine.grad,
        **gradients(norm),
        "running_mean": norm.running_mean.clone(),
        "running_var": norm.running_var.clone(),
    }


@pytest.mark.multiprocess
def test_two_processes_normalise_as_one_batchnorm_over_the_whole_batch(tmp_path):
    """Images (2d) and head features (1d). Outputs and input gradients: each process's half of
    one BatchNorm's; parameter gradients: their sum is one BatchNorm's (DDP then averages, as it
    does for any loss that is a mean over processes); running statistics: equal on both, and to
    the one's."""
    both = in_two_processes(tmp_path, _halves)
    for kind in SHAPES:
        halves = [
            {k.split("/")[1]: v for k, v in r.items() if k.split("/")[0] == kind} for r in both
        ]
        check_halves(halves, reference(kind))


def check_halves(ranks: list[dict[str, torch.Tensor]], one: dict[str, torch.Tensor]) -> None:
    for key in ("y", "x_grad"):
        torch.testing.assert_close(torch.cat([r[key] for r in ranks]), one[key], msg=key)
    assert ranks[0].keys() == one.keys()
    for key in ("weight_grad", "bias_grad"):
        if key in one:
            torch.testing.assert_close(ranks[0][key] + ranks[1][key], one[key], msg=key)
    for key in ("running_mean", "running_var"):
        for rank in ranks:
            torch.testing.assert_close(rank[key], one[key], msg=key)


def test_one_process_is_plain_batchnorm_and_conversion_keeps_parameters():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), SplitBatchNorm(4, 2))
    weight = model[1].weight
    before = model[1].running_mean
    globalise_batchnorm(model)
    assert isinstance(model[1], GlobalBatchNorm) and type(model[2]) is SplitBatchNorm
    assert model[1].weight is weight and model[1].running_mean is before
    x = torch.randn(6, 3, 5, 5)
    expected = nn.BatchNorm2d(4)
    expected.load_state_dict(model[1].state_dict())
    torch.testing.assert_close(model[1](model[0](x)), expected(model[0](x)))


def test_global_statistics_and_split_groups_are_refused_together_under_processes():
    check_batchnorm(1, True, 2)
    check_batchnorm(8, False, 2)
    check_batchnorm(8, True, 1)  # one process: SplitBatchNorm simulates GPUs, nothing global
    with pytest.raises(OptionError, match="bn_splits"):
        check_batchnorm(8, True, 2)


def test_moco_refuses_global_statistics_and_trainer_sync_batchnorm():
    """MoCo keeps per-process key statistics (shuffle-BN): global BatchNorm and Lightning's
    sync_batchnorm, which would also replace SplitBatchNorm, are refused with the reason; the
    other frameworks have global statistics by default and accept torch's layer on GPUs."""
    from contrastlab.app.fit import check_sync_batchnorm
    from contrastlab.methods import SimCLR
    from contrastlab.methods.mocov2 import MoCoV2

    with pytest.raises(OptionError, match="shuffle-BN"):
        MoCoV2(backbone="resnet18", global_bn=True)
    moco = MoCoV2(backbone="resnet18", queue_size=16)
    with pytest.raises(OptionError, match="shuffle-BN"):
        check_sync_batchnorm({"sync_batchnorm": True}, moco)
    check_sync_batchnorm({"sync_batchnorm": False}, moco)
    simclr = SimCLR(backbone="resnet18")
    assert simclr.hparams.global_bn
    check_sync_batchnorm({"sync_batchnorm": True}, simclr)
