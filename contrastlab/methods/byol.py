"""BYOL: online network with a predictor regresses an EMA target (Grill et al. 2020)."""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from contrastlab.methods.base import ContrastiveMethod, full_precision
from contrastlab.models.heads import mlp_head
from contrastlab.models.momentum import frozen_copy, momentum_update


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``mean_i (2 - 2 cos(p_i, sg(z_i)))``, the normalised squared error of BYOL."""
    return (2 - 2 * F.cosine_similarity(p.float(), z.detach().float(), dim=1)).mean()


def cosine_momentum(base: float, step: int, total: int) -> float:
    """BYOL's target schedule ``1 - (1 - m_base) (cos(pi step / total) + 1) / 2``."""
    return 1 - (1 - base) * (math.cos(math.pi * min(step, total) / max(total, 1)) + 1) / 2


class BYOL(ContrastiveMethod):
    """BYOL.

    Online: ``p = q(g(f(x)))``; target: ``z' = g'(f'(x))``, an EMA of the online encoder and
    projector. Loss ``(2 - 2 cos(p1, sg(z2'))) + (2 - 2 cos(p2, sg(z1')))`` (the sum of both
    view orders, as in the paper), averaged over the batch.

    Args:
        proj_hidden, proj_dim: projector ``Linear -> BN -> ReLU -> Linear`` (512 -> 128 on CIFAR).
        pred_hidden: predictor ``proj_dim -> pred_hidden -> proj_dim`` with BN.
        out_bias: the projector's and predictor's last Linear have a bias (the ContrastiveCrop
            authors' and lightly's) or not (``False``: BYOL's reference, networks.MLP).
        momentum: EMA ``m`` of the target (0.996).
        loss_scale: multiplies the loss (with SGD, scale ``c`` at ``(lr, wd)`` trains as
            ``(c lr, wd / c)``): 1 is the paper's sum; lightly's CIFAR-10 benchmark minimises
            ``-(cos(p1, z2') + cos(p2, z1')) / 2``, a quarter of its gradient: 0.25.
        momentum_schedule: raise ``m`` to 1 along a cosine over training (BYOL's ImageNet
            schedule); constant ``m`` when false (the CIFAR recipe).
        bn_splits, lr, weight_decay: the CIFAR recipe's defaults (batch 512, lr 0.5, wd 1e-4).
        global_bn: BatchNorm over the global batch under several processes (its reference's
            SyncBatchNorm).
        **kwargs: see :class:`~contrastlab.methods.base.ContrastiveMethod`.
    """

    def __init__(
        self,
        proj_hidden: int = 512,
        proj_dim: int = 128,
        pred_hidden: int = 512,
        out_bias: bool = True,
        momentum: float = 0.996,
        momentum_schedule: bool = False,
        loss_scale: float = 1.0,
        bn_splits: int = 1,
        global_bn: bool = True,
        lr: float = 0.5,
        weight_decay: float = 1e-4,
        **kwargs,
    ) -> None:
        super().__init__(
            bn_splits=bn_splits, global_bn=global_bn, lr=lr, weight_decay=weight_decay, **kwargs
        )
        width = self.backbone.feature_dim
        self.head = mlp_head(width, proj_hidden, proj_dim, batch_norm=True, out_bias=out_bias)
        self.predictor = mlp_head(proj_dim, pred_hidden, proj_dim, True, out_bias)
        self.target_backbone = frozen_copy(self.backbone)
        self.target_head = frozen_copy(self.head)

    def current_momentum(self) -> float:
        base = self.hparams.momentum
        if not self.hparams.momentum_schedule or self._trainer is None:
            return base
        total = int(self.trainer.estimated_stepping_batches)
        return cosine_momentum(base, self.trainer.global_step, total)

    def momentum_update(self) -> None:
        m = self.current_momentum()
        momentum_update(self.backbone, self.target_backbone, m)
        momentum_update(self.head, self.target_head, m)

    def contrastive_loss(
        self, views: list[torch.Tensor], indices: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        x1, x2 = views
        p1, p2 = (self.predictor(self.head(self.backbone(x))) for x in (x1, x2))
        with torch.no_grad():
            z1, z2 = (self.target_head(self.target_backbone(x)) for x in (x1, x2))
        with full_precision(self.device):
            return self.hparams.loss_scale * (byol_loss(p1, z2) + byol_loss(p2, z1))
