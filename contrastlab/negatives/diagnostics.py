"""Hardness statistics of real and synthetic negatives (what the logs and report show)."""

from __future__ import annotations

import torch

QUANTILES = (0.5, 0.9, 0.99)


def _summary(prefix: str, logits: torch.Tensor) -> dict[str, float]:
    flat = logits.detach().float().flatten()
    stats = {f"{prefix}/mean": flat.mean().item()}
    if flat.numel() > 1:
        sample = flat if flat.numel() <= 1 << 20 else flat[:: flat.numel() // (1 << 20) + 1]
        values = torch.quantile(sample, torch.tensor(QUANTILES, device=sample.device))
        stats.update(
            {f"{prefix}/q{int(q * 100)}": v.item() for q, v in zip(QUANTILES, values, strict=True)}
        )
    return stats


def hardness_statistics(
    positive: torch.Tensor,
    pool_logits: torch.Tensor,
    synthetic_logits: torch.Tensor | None = None,
    kinds: list[str] | None = None,
    pool_labels: torch.Tensor | None = None,
    query_labels: torch.Tensor | None = None,
) -> dict[str, float]:
    """Per-step statistics of how hard the negatives are (all logits are cosine similarities).

    ``positive`` (B,): ``q . k``; ``pool_logits`` (B, N): the top-N real negatives;
    ``synthetic_logits`` (B, S) with ``kinds`` naming each column. Returns the positive's mean,
    the mean and 50/90/99% quantiles of the real pool and of each synthetic kind, the share of
    synthetic logits above the positive, and, with labels (``-1`` = unknown), the share of the
    pool that shares the query's class (false negatives).
    """
    stats = {"hardness/positive": positive.detach().float().mean().item()}
    stats |= _summary("hardness/pool", pool_logits)
    if synthetic_logits is not None and synthetic_logits.shape[1] > 0:
        above = (synthetic_logits.detach() > positive.detach()[:, None]).float().mean()
        stats["hardness/synthetic_above_positive"] = above.item()
        names = kinds or ["synthetic"] * synthetic_logits.shape[1]
        for kind in dict.fromkeys(names):
            columns = torch.tensor([n == kind for n in names], device=synthetic_logits.device)
            stats |= _summary(f"hardness/{kind}", synthetic_logits[:, columns])
    if pool_labels is not None and query_labels is not None:
        known = (pool_labels >= 0) & (query_labels[:, None] >= 0)
        if known.any():
            same = (pool_labels == query_labels[:, None]) & known
            stats["hardness/pool_false_negative_share"] = (same.sum() / known.sum()).item()
    return stats
