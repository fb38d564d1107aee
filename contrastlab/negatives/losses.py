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


def ntxent_logits(
    z: torch.Tensor, candidates: torch.Tensor | None = None, offset: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """SimCLR's similarities: ``z`` ``(2n, d)`` unit vectors, rows ``[view 1 of n images; view 2
    of the same n]``, against every embedding of the global batch ``candidates`` ``(M, d)``
    (``z`` itself on one process; ``z`` sits at rows ``offset .. offset + 2n - 1``).

    Returns ``(logits, positives)``: ``(2n, M)`` raw similarities with each row's own column set
    to ``-inf``, and ``(2n,)`` the column of each row's other view.
    """
    candidates = z if candidates is None else candidates
    pairs = len(z) // 2
    if len(z) != 2 * pairs:
        raise ValueError(f"NT-Xent needs two views of each image, got {len(z)} rows")
    rows = torch.arange(len(z), device=z.device)
    logits = z @ candidates.T
    own = torch.zeros_like(logits, dtype=torch.bool)
    own[rows, offset + rows] = True
    positives = offset + (rows + pairs) % len(z)
    return logits.masked_fill(own, float("-inf")), positives


def ntxent_loss(
    logits: torch.Tensor,
    positives: torch.Tensor,
    temperature: float,
    extra_negative_logits: torch.Tensor | None = None,
) -> torch.Tensor:
    """NT-Xent: ``-mean_i log( exp(s_i,p(i) / T) / sum_{j != i} exp(s_ij / T) )`` over the 2n
    views, ``p(i)`` the other view of ``i``'s image; ``extra_negative_logits`` ``(2n, S)`` join
    the denominator (synthetic negatives)."""
    if extra_negative_logits is not None:
        logits = torch.cat([logits, extra_negative_logits], dim=1)
    return F.cross_entropy(logits.float() / temperature, positives)
