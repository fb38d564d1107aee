"""Learning-rate schedules as plain factors of the base rate: pretraining, probes and
fine-tuning share them (no Lightning, no model)."""

from __future__ import annotations

import math


def cosine_with_warmup(step: int, total: int, warmup: int, floor: float = 0.0) -> float:
    """Learning-rate factor: linear from ~0 to 1 over ``warmup`` steps, then
    ``floor + (1 - floor) 0.5 (1 + cos(pi * t))`` with ``t`` the fraction of the remaining steps
    done (``floor`` 0.1 is the ContrastiveCrop recipes' ``decay_rate``: the cosine ends at 10%)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def schedule_factor(
    step: int, steps_per_epoch: int, epochs: int, warmup_epochs: float, floor: float, interval: str
) -> float:
    """The learning-rate factor at optimiser step ``step``: :func:`cosine_with_warmup` over
    steps (``interval="step"``), or once per epoch, constant within it: epoch ``e`` (from 0)
    at ``floor + (1 - floor) 0.5 (1 + cos(pi (e + o) / epochs))`` with ``o = 0`` for
    ``"epoch"`` (the value at the epoch's start: the ContrastiveCrop authors'
    ``adjust_learning_rate``, whose last epoch stays above the floor) and ``o = 1`` for
    ``"epoch_end"`` (MoCo's CIFAR-10 demo, whose last epoch trains at the floor)."""
    if interval in ("epoch", "epoch_end"):
        epoch = step // max(1, steps_per_epoch) + (interval == "epoch_end")
        return cosine_with_warmup(epoch, epochs, int(warmup_epochs), floor)
    if interval != "step":
        raise ValueError(f"model.lr_interval = {interval!r}: expected step, epoch or epoch_end")
    total = steps_per_epoch * epochs
    return cosine_with_warmup(step, total, int(warmup_epochs * steps_per_epoch), floor)


def batch_scaled_lr(lr: float, written_for: int | None, global_batch: int, rule: str) -> float:
    """The learning rate for ``global_batch`` of a recipe whose ``lr`` was written for a global
    batch of ``written_for``: ``lr * b / b0`` (``linear``, Goyal et al. 2017: SGD recipes),
    ``lr * sqrt(b / b0)`` (``sqrt``, where a source says so, as SimCLR with LARS), or ``lr``
    (``keep``, or no ``written_for``)."""
    if written_for is None or rule == "keep" or global_batch == written_for:
        return lr
    if written_for < 1 or global_batch < 1:
        raise ValueError(f"batch sizes must be >= 1, got {written_for} and {global_batch}")
    if rule == "linear":
        return lr * global_batch / written_for
    if rule == "sqrt":
        return lr * math.sqrt(global_batch / written_for)
    raise ValueError(f"lr_scaling must be linear, sqrt or keep, got {rule!r}")
