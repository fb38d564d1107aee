"""Contrastive losses as pure functions."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def infonce_logits(
    q: torch.Tensor,
    k: torch.Tensor,
    negatives: torch.Tensor,
    extra_negative_logits: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[q.k, q.n_1, ..., q.n_K, extra...]`` per query: ``(B, 1 + K [+ S])`` raw similarities.

    ``q``, ``k`` are ``(B, d)`` unit vectors, ``negatives`` ``(K, d)`` unit vectors (the queue),
    ``extra_negative_logits`` ``(B, S)`` similarities of further negatives (synthetic ones).
    """
    positive = (q * k).sum(dim=1, keepdim=True)
    parts = [positive, q @ negatives.T]
    if extra_negative_logits is not None:
        parts.append(extra_negative_logits)
    return torch.cat(parts, dim=1)


def infonce_loss(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE with the positive in column 0:
    ``-mean_i log( exp(l_i0 / T) / sum_j exp(l_ij / T) )``."""
    targets = torch.zeros(len(logits), dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits.float() / temperature, targets)
