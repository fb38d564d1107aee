"""LARS, as SimCLR's and BYOL's references run it for large batches.

You et al. (2017) scale each layer's step by a trust ratio ``eta * ||w|| / ||d||``, where
``d = g + wd * w`` is the gradient with its weight decay, so every layer moves by about the same
fraction of its weights whatever the batch. The SimCLR (TensorFlow) and BYOL (optax) references
both leave biases and BatchNorm parameters out of the adaptation and the weight decay. They
differ in where the learning rate enters: SimCLR's ``LARSOptimizer`` (classic momentum) scales
the step before the momentum, ``v <- m v + lr * ratio * d; w <- w - v``; BYOL's optax chain
after it, ``v <- m v + ratio * d; w <- w - lr * v`` (the same while the lr is constant; not
during warm-up and decay). timm's ``Lars`` divides by ``||g|| + wd ||w||`` instead (NVIDIA's
LARC), another optimiser; this one follows the references.
"""

from __future__ import annotations

import torch

TRUST_COEFFICIENT = 0.001  # eta, SimCLR's and BYOL's value


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling.

    For each parameter ``w`` with gradient ``g`` of a group with ``adapt=True``:
    ``d = g + weight_decay * w``, ``ratio = trust * ||w|| / ||d||`` (1 when either norm is 0),
    then ``v <- momentum * v + lr * ratio * d``, ``w <- w - v`` (``lr_in_momentum``, SimCLR's)
    or ``v <- momentum * v + ratio * d``, ``w <- w - lr * v`` (BYOL's). A group with
    ``adapt=False`` (biases and BatchNorm: :func:`lars_groups`) takes ``d = g`` and
    ``ratio = 1``: SGD with momentum, no weight decay.
    """

    def __init__(
        self,
        params,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust: float = TRUST_COEFFICIENT,
        lr_in_momentum: bool = True,
    ) -> None:
        if lr < 0 or momentum < 0 or weight_decay < 0 or trust <= 0:
            raise ValueError(
                f"LARS needs lr, momentum, weight_decay >= 0 and trust > 0, got {lr}, "
                f"{momentum}, {weight_decay}, {trust}"
            )
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "trust": trust,
            "adapt": True,
            "lr_in_momentum": lr_in_momentum,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for weight in group["params"]:
                if weight.grad is not None:
                    self._update(weight, group)
        return loss

    def _update(self, weight: torch.Tensor, group: dict) -> None:
        step = weight.grad
        scale = group["lr"]
        if group["adapt"]:
            step = step.add(weight, alpha=group["weight_decay"])
            weight_norm, step_norm = weight.norm(), step.norm()
            ratio = torch.where(
                (weight_norm > 0) & (step_norm > 0),
                group["trust"] * weight_norm / step_norm,
                torch.ones_like(weight_norm),
            )
            step = step * ratio
        state = self.state[weight]
        if "velocity" not in state:
            state["velocity"] = torch.zeros_like(weight)
        velocity = state["velocity"]
        if group["lr_in_momentum"]:
            velocity.mul_(group["momentum"]).add_(step, alpha=scale)
            weight.sub_(velocity)
        else:
            velocity.mul_(group["momentum"]).add_(step)
            weight.sub_(velocity, alpha=scale)


def lars_groups(groups: list[dict]) -> list[dict]:
    """Each parameter group split in two: weights that LARS adapts and decays, and biases and
    normalisation parameters (every parameter of one dimension or less) that it does neither
    to, with ``weight_decay=0`` and ``adapt=False``; other keys of a group are kept on both."""
    split = []
    for group in groups:
        params = list(group["params"])
        rest = {key: value for key, value in group.items() if key != "params"}
        adapted = [p for p in params if p.ndim > 1]
        plain = [p for p in params if p.ndim <= 1]
        if adapted:
            split.append({**rest, "params": adapted})
        if plain:
            split.append({**rest, "params": plain, "weight_decay": 0.0, "adapt": False})
    return split
