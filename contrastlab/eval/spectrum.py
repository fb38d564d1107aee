"""Label-free measures of an embedding matrix: how many directions it uses, and whether it
is collapsing."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def rankme(embeddings: torch.Tensor, eps: float = 1e-7) -> float:
    """RankMe (Garrido et al., ICML 2023), the effective rank of ``embeddings`` ``(N, d)``:
    ``exp(-sum_k p_k log p_k)`` with ``p_k = s_k / sum_j s_j + eps`` over its singular values
    ``s_k``. It lies between about 1 (every row the same direction) and ``min(N, d)`` (equal
    singular values); computed in float64."""
    if embeddings.ndim != 2 or min(embeddings.shape) == 0:
        raise ValueError(f"rankme needs a non-empty (N, d) matrix, got {tuple(embeddings.shape)}")
    singular = torch.linalg.svdvals(embeddings.double())
    p = singular / singular.sum() + eps
    return float(torch.exp(-(p * p.log()).sum()))


def normalized_std(embeddings: torch.Tensor) -> float:
    """The mean over dimensions of the standard deviation of the L2-normalised rows (SimSiam's
    collapse check): about ``1 / sqrt(d)`` for embeddings spread over the sphere, 0 when every
    row points the same way."""
    return float(F.normalize(embeddings.double(), dim=1).std(dim=0).mean())
