"""Contrastive losses as pure functions."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def infonce_logits(
    q: torch.Tensor,
    k: torch.Tensor,
    negatives: torch.Tensor | None = None,
    extra_negative_logits: torch.Tensor | None = None,
    negative_logits: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[q.k, q.n_1, ..., q.n_K, extra...]`` per query: ``(B, 1 + K [+ S])`` raw similarities.

    ``q``, ``k`` are ``(B, d)`` unit vectors; ``negatives`` ``(K, d)`` unit vectors (the queue),
    or ``negative_logits`` ``(B, K)`` = ``q @ negatives.T`` when the caller has them already;
    ``extra_negative_logits`` ``(B, S)`` similarities of further negatives (synthetic ones).
    """
    if negative_logits is None:
        if negatives is None:
            raise ValueError("infonce_logits needs negatives or negative_logits")
        negative_logits = q @ negatives.T
    positive = (q * k).sum(dim=1, keepdim=True)
    parts = [positive, negative_logits]
    if extra_negative_logits is not None:
        parts.append(extra_negative_logits)
    return torch.cat(parts, dim=1)


def infonce_loss(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE with the positive in column 0:
    ``-mean_i log( exp(l_i0 / T) / sum_j exp(l_ij / T) )``."""
    targets = torch.zeros(len(logits), dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits.float() / temperature, targets)
