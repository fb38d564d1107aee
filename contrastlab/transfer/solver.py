"""The detection fine-tune's optimiser, schedule and precise BatchNorm, as detectron2's solver.

MoCo's VOC protocol (``pascal_voc_R_50_C4_24k.yaml`` over ``Base-RCNN-C4-BN.yaml`` and
detectron2's ``config/defaults.py``): SGD, momentum 0.9, lr 0.02 for 16 images per iteration,
weight decay 1e-4 on every parameter but the normalisation layers' (``WEIGHT_DECAY_NORM 0``),
24,000 iterations with the lr x0.1 at 18,000 and 22,000, a linear warm-up over the first 100
from 1/1000 of it (``WarmupMultiStepLR``); before testing, the BatchNorm statistics are
recomputed as the plain average over 200 training batches (``TEST.PRECISE_BN``).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class DetectionSolver:
    """detectron2's solver settings; ``lr`` is for ``batch`` images per iteration."""

    lr: float = 0.02
    batch: int = 16
    iterations: int = 24000
    steps: tuple[int, ...] = (18000, 22000)
    gamma: float = 0.1
    warmup_iterations: int = 100
    warmup_factor: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 1e-4
    weight_decay_norm: float = 0.0
    precise_bn_iterations: int = 200

    def __post_init__(self) -> None:
        if list(self.steps) != sorted(self.steps) or any(
            not 0 < s < self.iterations for s in self.steps
        ):
            raise ValueError(
                f"steps {self.steps} must increase and lie inside the {self.iterations} iterations"
            )
        if self.warmup_iterations > self.iterations:
            raise ValueError(
                f"{self.warmup_iterations} warm-up iterations exceed all {self.iterations}"
            )


def lr_factor(iteration: int, solver: DetectionSolver) -> float:
    """The lr multiplier at ``iteration`` (0-based): ``gamma ** (steps passed)``, times
    ``f (1 - a) + a`` with ``a = iteration / warmup_iterations`` while warming up (``f`` the
    warm-up factor), as detectron2's ``WarmupParamScheduler(MultiStepParamScheduler)``."""
    factor = solver.gamma ** bisect.bisect_right(solver.steps, iteration)
    if iteration < solver.warmup_iterations:
        alpha = iteration / solver.warmup_iterations
        factor *= solver.warmup_factor * (1 - alpha) + alpha
    return factor


NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def parameter_groups(model: nn.Module, solver: DetectionSolver) -> list[dict]:
    """Two groups: the parameters of normalisation layers (``weight_decay_norm``) and all
    others, biases included (``weight_decay``), as detectron2's ``get_default_optimizer_params``."""
    norm, other, seen = [], [], set()
    for module in model.modules():
        for parameter in module.parameters(recurse=False):
            if not parameter.requires_grad or id(parameter) in seen:
                continue
            seen.add(id(parameter))
            (norm if isinstance(module, NORMS) else other).append(parameter)
    return [
        {"params": other, "weight_decay": solver.weight_decay},
        {"params": norm, "weight_decay": solver.weight_decay_norm},
    ]


def sgd(model: nn.Module, solver: DetectionSolver, global_batch: int) -> torch.optim.SGD:
    """SGD over :func:`parameter_groups` at the lr scaled linearly to ``global_batch`` (the
    papers' 0.02 is for 16 images: ``lr * global_batch / batch``)."""
    lr = solver.lr * global_batch / solver.batch
    return torch.optim.SGD(parameter_groups(model, solver), lr=lr, momentum=solver.momentum)


@torch.no_grad()
def precise_bn(model: nn.Module, forward: Callable[[object], object], batches: Iterable) -> int:
    """Recompute every BatchNorm's running statistics as the plain average of its batch
    statistics over ``batches`` (``forward(batch)`` runs the model in training mode, whose
    losses are ignored): ``mean = (1/n) sum_i mean_i``, ``var = (1/n) sum_i var_i`` with each
    ``var_i`` unbiased, as detectron2's precise BN. Parameters are untouched; the model's mode
    and momenta are restored. Returns the number of batches used."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    training = model.training
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # PyTorch's cumulative average: each batch weighs 1/n
    model.train()
    count = 0
    try:
        for batch in batches:
            forward(batch)
            count += 1
    finally:
        for norm, momentum in zip(norms, momenta, strict=True):
            norm.momentum = momentum
        model.train(training)
    if count == 0:
        raise ValueError("precise BatchNorm needs at least one batch")
    return count
