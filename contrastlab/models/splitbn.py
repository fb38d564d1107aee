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

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_splits={self.num_splits}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.num_splits == 1:
            return super().forward(x)
        group = len(x) // self.num_splits
        if len(x) % self.num_splits or group * x[0, 0].numel() < 2:
            raise ValueError(
                f"SplitBatchNorm: a batch of {len(x)} cannot form {self.num_splits} groups of "
                f"more than one value per channel ({tuple(x.shape[2:])} maps); use a batch "
                f"divisible by model.bn_splits with at least 2 images per group"
            )
        # One fused batch_norm per group: a batch slice is a view in any memory format
        # (channels-last included), so only the concatenation copies.
        means = [self.running_mean.clone() for _ in range(self.num_splits)]
        variances = [self.running_var.clone() for _ in range(self.num_splits)]
        groups = x.chunk(self.num_splits)
        out = torch.cat(
            [
                F.batch_norm(
                    group, mean, var, self.weight, self.bias, True, self.momentum, self.eps
                )
                for group, mean, var in zip(groups, means, variances, strict=True)
            ]
        )
        with torch.no_grad():
            self.running_mean.copy_(torch.stack(means).mean(0))
            self.running_var.copy_(torch.stack(variances).mean(0))
            if self.num_batches_tracked is not None:
                self.num_batches_tracked.add_(1)
        return out
