"""SplitBatchNorm: batch statistics over ``num_splits`` sub-batches, as on that many GPUs."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class SplitBatchNorm(nn.BatchNorm2d):
    """BatchNorm whose training statistics are computed per contiguous sub-batch.

    In training, ``(N, C, H, W)`` is viewed as ``num_splits`` groups of ``N / num_splits``
    images; each group is normalised by its own mean and variance (what per-GPU BN does on
    ``num_splits`` GPUs), and the running statistics are the average of the groups' updates.
    In evaluation it is a plain BatchNorm. MoCo relies on this on one device so that the
    key/query BN statistics do not leak information between samples of a whole batch.
    """

    def __init__(self, num_features: int, num_splits: int, **kwargs) -> None:
        super().__init__(num_features, **kwargs)
        self.num_splits = num_splits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        if not self.training or self.num_splits == 1:
            return super().forward(x)
        if n % self.num_splits:
            raise ValueError(
                f"SplitBatchNorm: batch {n} is not divisible by {self.num_splits} splits"
            )
        s = self.num_splits
        mean_split = self.running_mean.repeat(s)
        var_split = self.running_var.repeat(s)
        grouped = x.reshape(s, n // s, c, h, w).transpose(0, 1).reshape(n // s, s * c, h, w)
        out = F.batch_norm(
            grouped,
            mean_split,
            var_split,
            self.weight.repeat(s),
            self.bias.repeat(s),
            True,
            self.momentum,
            self.eps,
        )
        self.running_mean.copy_(mean_split.view(s, c).mean(0))
        self.running_var.copy_(var_split.view(s, c).mean(0))
        if self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
        return out.reshape(n // s, s, c, h, w).transpose(0, 1).reshape(n, c, h, w)
