"""SimSiam: a predictor and a stop-gradient, no negatives, no momentum (Chen & He 2021)."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from contrastlab.methods.base import ContrastiveMethod, full_precision
from contrastlab.models.heads import mlp_head, simsiam_projector


def simsiam_loss(
    p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor
) -> torch.Tensor:
    """``-cos(p1, sg(z2)) / 2 - cos(p2, sg(z1)) / 2``, averaged over the batch."""
    first = F.cosine_similarity(p1.float(), z2.detach().float(), dim=1)
    second = F.cosine_similarity(p2.float(), z1.detach().float(), dim=1)
    return -(first.mean() + second.mean()) / 2


class SimSiam(ContrastiveMethod):
    """SimSiam.

    ``z = h(f(x))`` (projector ending in BN without affine), ``p = q(z)``; the loss compares each
    view's prediction with the other view's projection under stop-gradient. The predictor
    keeps a fixed learning rate (``fixed_predictor_lr``), as in the paper.

    Args:
        proj_hidden, proj_dim: projector ``feature_dim -> proj_hidden -> proj_dim`` (512-512).
        proj_layers: 2, or 3 for ``feature_dim -> proj_hidden -> proj_hidden -> proj_dim``
            (the SimSiam paper's and the ContrastiveCrop authors' projector).
        proj_out_affine: the projector's output BatchNorm learns a scale and shift (lightly's
            CIFAR-10 benchmark); without, as the SimSiam paper's code.
        pred_hidden: predictor bottleneck ``proj_dim -> pred_hidden -> proj_dim`` (128).
        fixed_predictor_lr: the predictor's learning rate stays ``lr`` (no cosine decay).
        bn_splits, lr, weight_decay: the CIFAR recipe's defaults (batch 512, lr 0.5, wd 1e-4).
        global_bn: BatchNorm over the global batch under several processes (its reference's
            SyncBatchNorm).
        **kwargs: see :class:`~contrastlab.methods.base.ContrastiveMethod`.
    """

    def __init__(
        self,
        proj_hidden: int = 512,
        proj_dim: int = 512,
        proj_layers: int = 2,
        proj_out_affine: bool = False,
        pred_hidden: int = 128,
        fixed_predictor_lr: bool = True,
        bn_splits: int = 1,
        global_bn: bool = True,
        lr: float = 0.5,
        weight_decay: float = 1e-4,
        **kwargs,
    ) -> None:
        super().__init__(
            bn_splits=bn_splits, global_bn=global_bn, lr=lr, weight_decay=weight_decay, **kwargs
        )
        self.head = simsiam_projector(
            self.backbone.feature_dim, proj_hidden, proj_dim, proj_layers, proj_out_affine
        )
        self.predictor = mlp_head(proj_dim, pred_hidden, proj_dim, batch_norm=True)

    def parameter_groups(self) -> list[dict]:
        encoder = [*self.backbone.parameters(), *self.head.parameters()]
        predictor = list(self.predictor.parameters())
        return [
            {"params": encoder},
            {"params": predictor, "fixed_lr": self.hparams.fixed_predictor_lr},
        ]

    def contrastive_loss(
        self, views: list[torch.Tensor], indices: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        x1, x2 = views
        z1, z2 = (self.head(self.backbone(x)) for x in (x1, x2))
        p1, p2 = self.predictor(z1), self.predictor(z2)
        with full_precision(self.device):
            return simsiam_loss(p1, p2, z1, z2)
