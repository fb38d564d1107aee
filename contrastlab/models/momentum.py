"""Momentum targets: frozen copies of a network and their exponential moving average."""

from __future__ import annotations

import copy

import torch
from torch import nn


@torch.no_grad()
def momentum_update(online: nn.Module, target: nn.Module, momentum: float) -> None:
    """``theta_target <- m theta_target + (1 - m) theta_online`` for every parameter pair."""
    target_params = list(target.parameters())
    online_params = [p.detach() for p in online.parameters()]
    torch._foreach_mul_(target_params, momentum)
    torch._foreach_add_(target_params, online_params, alpha=1.0 - momentum)


def frozen_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` that no optimiser updates (momentum targets)."""
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad = False
    return target
