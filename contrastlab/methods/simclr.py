"""SimCLR: NT-Xent over the 2B views of the global batch (Chen et al. 2020)."""

from __future__ import annotations

from typing import Literal

import torch

from contrastlab.distributed import gather_with_grad, world
from contrastlab.methods.base import ContrastiveMethod, full_precision, normalized
from contrastlab.models.heads import mlp_head
from contrastlab.negatives.losses import ntxent_logits, ntxent_loss
from contrastlab.negatives.synthesis import SyntheticNegatives


class SimCLR(ContrastiveMethod):
    """SimCLR.

    Both views go through one encoder and head, ``z = norm(g(f(x)))``; each view's positive is
    the other view of its image and its negatives are the other ``2B - 2`` views of the global
    batch (gathered across processes with gradients): NT-Xent at temperature ``T``.

    Args:
        proj_hidden, proj_dim: MLP head ``feature_dim -> proj_hidden -> proj_dim``.
        proj_batch_norm: BatchNorm in the head's hidden layer.
        proj_out_bn: BatchNorm after the head's last Linear, which then has no bias: ``full``
            (scale and shift, lightly's ``SimCLRProjectionHead`` since 1.4.3), ``scale`` (no
            shift, SimCLR's reference head), ``none``.
        temperature: ``T`` (0.5 on CIFAR).
        base_temperature: when set, the loss is multiplied by ``T / base_temperature``, as
            the ContrastiveCrop authors' ``NT_Xent_dist`` does (0.5 / 0.07 = 7.14 in their
            recipes). With SGD a loss scale ``c`` at ``(lr, wd)`` equals ``(c lr, wd / c)``
            unscaled, so this is part of their learning rate; ``None``: no scale.
        loss_scale: a further factor on the loss: 2 is SimCLR's reference, which adds the mean
            over each view's ``B`` rows, ``loss_a + loss_b``, where NT-Xent above takes the mean
            over all ``2B``.
        synthetic: synthetic hard negatives made from each view's hardest in-batch negatives
            (its own column and its positive excluded); their logits join the denominator.
        synthetic_warmup_epochs: epochs of plain SimCLR before synthetics start.
        bn_splits, lr, weight_decay: the CIFAR recipe's defaults (batch 512, lr 0.5, wd 1e-4).
        global_bn: BatchNorm over the global batch under several processes (its reference's
            SyncBatchNorm).
        **kwargs: see :class:`~contrastlab.methods.base.ContrastiveMethod`.
    """

    def __init__(
        self,
        proj_hidden: int = 512,
        proj_dim: int = 128,
        proj_batch_norm: bool = False,
        proj_out_bn: Literal["none", "full", "scale"] = "none",
        temperature: float = 0.5,
        base_temperature: float | None = None,
        loss_scale: float = 1.0,
        synthetic: SyntheticNegatives | None = None,
        synthetic_warmup_epochs: float = 10.0,
        bn_splits: int = 1,
        global_bn: bool = True,
        lr: float = 0.5,
        weight_decay: float = 1e-4,
        **kwargs,
    ) -> None:
        super().__init__(
            bn_splits=bn_splits, global_bn=global_bn, lr=lr, weight_decay=weight_decay, **kwargs
        )
        if isinstance(synthetic, dict):  # from a checkpoint's hyperparameters
            synthetic = SyntheticNegatives(**synthetic)
        self.synthetic = synthetic
        self.hparams["synthetic"] = synthetic.config() if synthetic is not None else None
        self.head = mlp_head(
            self.backbone.feature_dim,
            proj_hidden,
            proj_dim,
            proj_batch_norm,
            out_batch_norm=proj_out_bn,
        )

    @property
    def synthesis_active(self) -> bool:
        warm = self.current_epoch >= self.hparams.synthetic_warmup_epochs
        return self.synthetic is not None and self.synthetic.total > 0 and warm

    def contrastive_loss(
        self, views: list[torch.Tensor], indices: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        x1, x2 = views
        z = normalized(self.head(self.backbone(torch.cat([x1, x2]))))
        rank, _ = world()
        with full_precision(self.device):
            candidates = gather_with_grad(z)
            logits, positives = ntxent_logits(z, candidates, offset=rank * len(z))
            self.log("train/positive_logit", logits.gather(1, positives[:, None]).mean())
            synthetic_logits = None
            if self.synthesis_active:
                bank = candidates.detach()
                excluded = torch.isinf(logits)
                excluded[torch.arange(len(z), device=z.device), positives] = True
                synthetic_logits = self.synthetic(z, bank, z @ bank.T, excluded)
            loss = ntxent_loss(logits, positives, self.hparams.temperature, synthetic_logits)
            return loss * self.loss_factor

    @property
    def loss_factor(self) -> float:
        """``loss_scale * T / base_temperature`` (``loss_scale`` without a base temperature)."""
        base = self.hparams.get("base_temperature")
        scale = self.hparams.get("loss_scale", 1.0)  # absent from older checkpoints
        return scale if base is None else scale * self.hparams.temperature / base
