"""MoCo v2: momentum key encoder, key queue, InfoNCE (He et al. 2020; Chen et al. 2020)."""

from __future__ import annotations

import torch

from contrastlab.distributed import broadcast, gather_cat, world
from contrastlab.methods.base import ContrastiveMethod, full_precision, normalized
from contrastlab.models.heads import mlp_head
from contrastlab.models.momentum import frozen_copy, momentum_update
from contrastlab.negatives.diagnostics import hardness_statistics
from contrastlab.negatives.losses import infonce_logits, infonce_loss
from contrastlab.negatives.queue import KeyQueue
from contrastlab.negatives.synthesis import SyntheticNegatives
from contrastlab.options import OptionError


class MoCoV2(ContrastiveMethod):
    """MoCo v2.

    ``q = norm(g(f(x1)))`` from the online encoder, ``k = norm(g_k(f_k(x2)))`` from its momentum
    copy; loss ``InfoNCE([q.k, q.queue] / T)`` with the positive at index 0. The keys of the
    step are enqueued once, after every loss term (with ``symmetric`` the loss is the mean of
    both view orders, and both key sets are enqueued).

    Args:
        proj_hidden, proj_dim: MLP head ``feature_dim -> proj_hidden -> proj_dim``; with
            ``proj_hidden=None`` a linear head ``feature_dim -> proj_dim`` (MoCo v1, MoCo's
            CIFAR-10 demo).
        queue_size: number of negative keys ``K`` (any size; not tied to the batch).
        momentum: key encoder EMA ``m``.
        temperature: ``T``.
        symmetric: symmetrised loss over both view orders.
        shuffle_bn: permute the key batch across the global batch before the key encoder so
            that BN statistics cannot leak the positive (MoCo's shuffle-BN; with one process
            it shuffles across SplitBatchNorm groups).
        synthetic: synthetic hard negatives drawn from the queue (SynCo, MoCHi); their logits
            join the denominator, they never enter the queue.
        synthetic_warmup_epochs: epochs of plain MoCo v2 before synthetics start (10 in SynCo).
        mask_same_image: keep queue keys of the query's own image out of the hard pool (they
            occur when the queue is longer than an epoch; a no-op otherwise).
        **kwargs: see :class:`~contrastlab.methods.base.ContrastiveMethod`.
    """

    def __init__(
        self,
        proj_hidden: int | None = 512,
        proj_dim: int = 128,
        queue_size: int = 4096,
        momentum: float = 0.99,
        temperature: float = 0.1,
        symmetric: bool = False,
        shuffle_bn: bool = True,
        synthetic: SyntheticNegatives | None = None,
        synthetic_warmup_epochs: float = 10.0,
        mask_same_image: bool = True,
        **kwargs,
    ) -> None:
        if kwargs.get("global_bn"):
            raise OptionError(
                "model.global_bn: MoCo normalises each process's keys on their own, with "
                "shuffle-BN (or SplitBatchNorm on one device), so that BatchNorm statistics "
                "cannot leak which key is the query's positive; global statistics would undo "
                "that. Leave it false"
            )
        super().__init__(**kwargs)
        if isinstance(synthetic, dict):  # from a checkpoint's hyperparameters
            synthetic = SyntheticNegatives(**synthetic)
        self.synthetic = synthetic
        self.hparams["synthetic"] = synthetic.config() if synthetic is not None else None
        self.head = mlp_head(self.backbone.feature_dim, proj_hidden, proj_dim)
        self.key_backbone = frozen_copy(self.backbone)
        self.key_head = frozen_copy(self.head)
        self.queue = KeyQueue(queue_size, proj_dim, seed=self.hparams.seed)

    def momentum_update(self) -> None:
        m = self.hparams.momentum
        momentum_update(self.backbone, self.key_backbone, m)
        momentum_update(self.head, self.key_head, m)

    def query(self, x: torch.Tensor) -> torch.Tensor:
        return normalized(self.head(self.backbone(x)))

    @torch.no_grad()
    def key(self, x: torch.Tensor) -> torch.Tensor:
        """Keys of ``x``; with ``shuffle_bn`` the global batch is permuted across processes
        (and SplitBatchNorm groups), encoded, and restored to its order."""
        if not self.hparams.shuffle_bn:
            return normalized(self.key_head(self.key_backbone(x)))
        rank, size = world()
        everything = gather_cat(x)
        order = broadcast(torch.randperm(len(everything), device=x.device))
        mine = everything[order].chunk(size)[rank]
        keys = gather_cat(normalized(self.key_head(self.key_backbone(mine))))
        return keys[torch.argsort(order)].chunk(size)[rank]

    def contrastive_loss(
        self, views: list[torch.Tensor], indices: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        x1, x2 = views
        pairs = [(self.query(x1), self.key(x2))]
        if self.hparams.symmetric:
            pairs.append((self.query(x2), self.key(x1)))
        negatives = self.queue.keys.clone()
        with full_precision(self.device):
            losses = [
                self._infonce(q, k, negatives, indices, labels, first=i == 0)
                for i, (q, k) in enumerate(pairs)
            ]
        loss = torch.stack(losses).mean()
        keys = torch.cat([k for _, k in pairs])
        self.queue.push(keys, indices.repeat(len(pairs)), labels.repeat(len(pairs)))
        return loss

    @property
    def synthesis_active(self) -> bool:
        warm = self.current_epoch >= self.hparams.synthetic_warmup_epochs
        return self.synthetic is not None and self.synthetic.total > 0 and warm

    def _infonce(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        negatives: torch.Tensor,
        indices: torch.Tensor,
        labels: torch.Tensor,
        first: bool,
    ) -> torch.Tensor:
        negative_logits = q @ negatives.T
        synthetic_logits, exclude = None, None
        if self.synthesis_active:
            if self.hparams.mask_same_image:
                exclude = indices[:, None] == self.queue.indices[None, :]
            synthetic_logits = self.synthetic(q, negatives, negative_logits, exclude)
        logits = infonce_logits(
            q, k, negative_logits=negative_logits, extra_negative_logits=synthetic_logits
        )
        if first:
            self._log_hardness(logits[:, 0], negative_logits, synthetic_logits, exclude, labels)
        return infonce_loss(logits, self.hparams.temperature)

    def _log_hardness(self, positive, negative_logits, synthetic_logits, exclude, labels) -> None:
        """Hardness statistics on logging steps only (they need their own top-N)."""
        self.log("train/positive_logit", positive.mean(), on_step=True)
        trainer = self._trainer
        if trainer is None or trainer.global_step % max(1, trainer.log_every_n_steps):
            return
        n_hard = self.synthetic.n_hard if self.synthetic is not None else 1024
        scores = negative_logits.detach()
        if exclude is not None:
            scores = scores.masked_fill(exclude, float("-inf"))
        top = scores.topk(min(n_hard, scores.shape[1]), dim=1)
        kinds = self.synthetic.kinds_of_columns() if synthetic_logits is not None else None
        stats = hardness_statistics(
            positive, top.values, synthetic_logits, kinds, self.queue.labels[top.indices], labels
        )
        self.log_dict(stats, on_step=True)
