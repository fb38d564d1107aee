"""GlobalBatchNorm: batch statistics over every process's images, on any backend.

SimCLR, BYOL and SimSiam normalise over the global batch (SyncBatchNorm in the ContrastiveCrop
authors' DDP scripts and in the BYOL and SimSiam papers); with per-process BatchNorm, W
processes would each normalise over ``batch / W`` images and train a different model. torch's
``SyncBatchNorm`` refuses CPU tensors, so this layer combines the statistics itself with a
differentiable all-reduce (as detectron2's ``NaiveSyncBatchNorm``): gradients flow back
through the other processes' share of the mean and variance, so W processes step exactly as
one process with the whole batch.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from contrastlab.distributed import all_reduce_with_grad, world


class GlobalBatchNorm(_BatchNorm):
    """BatchNorm over ``(N, C, ...)`` whose training statistics span all processes.

    With ``n`` values per channel over all processes, ``mean = sum(x) / n`` and ``var =
    sum(x^2) / n - mean^2`` (both sums all-reduced in one differentiable call, in fp32);
    ``y = (x - mean) / sqrt(var + eps) * weight + bias``. The running statistics move by
    ``momentum`` towards ``mean`` and the unbiased ``var * n / (n - 1)``, as BatchNorm's do.
    In one process, or in evaluation, it is plain BatchNorm.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"GlobalBatchNorm expects (N, C, ...) input, got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or world()[1] == 1:
            return super().forward(x)
        self._check_input_dim(x)
        channels = x.shape[1]
        dims = [0, *range(2, x.dim())]
        values = x.float()
        count = values.new_tensor([values.numel() / channels])
        sums = all_reduce_with_grad(
            torch.cat([values.sum(dims), (values * values).sum(dims), count])
        )
        total = sums[-1]
        mean = sums[:channels] / total
        var = (sums[channels : 2 * channels] / total - mean * mean).clamp(min=0)
        self._update_running_statistics(mean.detach(), var.detach(), total.detach())
        shape = [1, channels] + [1] * (x.dim() - 2)
        y = (values - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.weight is not None:
            y = y * self.weight.view(shape)
        if self.bias is not None:  # absent where a head's last BatchNorm has no shift
            y = y + self.bias.view(shape)
        return y.to(x.dtype)

    @torch.no_grad()
    def _update_running_statistics(
        self, mean: torch.Tensor, var: torch.Tensor, total: torch.Tensor
    ) -> None:
        if not self.track_running_stats:
            return
        self.num_batches_tracked.add_(1)
        momentum = self.momentum
        if momentum is None:  # a cumulative average, as BatchNorm's momentum=None
            momentum = 1.0 / float(self.num_batches_tracked)
        unbiased = var * total / (total - 1).clamp(min=1)
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
        self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)


def globalise_batchnorm(module: nn.Module) -> nn.Module:
    """``module`` with every plain BatchNorm (1d, 2d, 3d) replaced by a
    :class:`GlobalBatchNorm` holding the same parameters and buffers (the optimiser's
    parameters stay the same objects; checkpoints keep their keys). SplitBatchNorm and other
    subclasses are left alone."""
    plain = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    if type(module) in plain:
        converted = GlobalBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine,
            module.track_running_stats, device=None, dtype=None,
        )  # fmt: skip
        if module.affine:
            converted.weight, converted.bias = module.weight, module.bias
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            setattr(converted, name, getattr(module, name))
        converted.train(module.training)
        return converted
    for name, child in module.named_children():
        replaced = globalise_batchnorm(child)
        if replaced is not child:
            setattr(module, name, replaced)
    return module
