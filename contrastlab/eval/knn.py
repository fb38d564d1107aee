"""Weighted kNN classification on normalised features (the InstDisc / MoCo monitor)."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def knn_predict(
    features: torch.Tensor,
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk: int = 1024,
) -> torch.Tensor:
    """Class scores ``(N, num_classes)`` of weighted kNN.

    With unit ``features`` and ``bank``, the ``k`` most similar bank entries of each query vote
    for their label with weight ``exp(sim / temperature)``; the score of class ``c`` is the sum
    of the weights of neighbours labelled ``c``. Queries are processed in chunks of ``chunk``.
    """
    if len(bank) == 0:
        raise ValueError("kNN needs a non-empty feature bank")
    k = min(k, len(bank))
    scores = []
    for start in range(0, len(features), chunk):
        sims = features[start : start + chunk] @ bank.T
        top_sims, top_idx = sims.topk(k, dim=1)
        weights = (top_sims / temperature).exp()
        votes = F.one_hot(bank_labels[top_idx], num_classes).to(weights.dtype)
        scores.append((votes * weights.unsqueeze(-1)).sum(dim=1))
    return torch.cat(scores)


def knn_accuracy(
    features: torch.Tensor,
    labels: torch.Tensor,
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    num_classes: int | None = None,
    k: int = 200,
    temperature: float = 0.1,
) -> float:
    """Top-1 accuracy (percent) of :func:`knn_predict`; features are L2-normalised here.
    ``num_classes`` defaults to one more than the largest label of either split."""
    if num_classes is None:
        num_classes = int(torch.cat([bank_labels, labels]).max()) + 1
    features, bank = F.normalize(features.float(), dim=1), F.normalize(bank.float(), dim=1)
    scores = knn_predict(features, bank, bank_labels, num_classes, k, temperature)
    return 100.0 * (scores.argmax(dim=1) == labels).float().mean().item()
