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
        scores.append(class_votes(weights, bank_labels[top_idx], num_classes))
    return torch.cat(scores)


def class_votes(weights: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(Q, num_classes)`` sums of each query's neighbour ``weights`` ``(Q, k)`` by their
    ``labels``: a scatter-add, so nothing of size ``Q x k x num_classes`` is made (a one-hot
    of ImageNet's 1,000 classes would be 1.6 GB per chunk of 1,024 queries at k = 200)."""
    scores = weights.new_zeros(len(weights), num_classes)
    return scores.scatter_add_(1, labels, weights)


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


@torch.no_grad()
def sharded_knn_accuracy(
    features: torch.Tensor,
    labels: torch.Tensor,
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    k: int = 200,
    temperature: float = 0.1,
    chunk: int = 1024,
) -> tuple[float, int, int]:
    """:func:`knn_accuracy` over every process's queries against every process's bank, with
    the bank left where it is: ``(top-1 percent, bank size, query count)`` over all processes.

    Each process holds its shard of the bank. Queries go round in chunks of ``chunk`` (each
    process contributing its share): each process scores the chunk against its own shard and keeps
    its ``k`` best (similarity, label) pairs; the pairs of all processes are gathered and the
    ``k`` best of those are the chunk's neighbours, the same as over the whole bank (a global
    top-``k`` entry is in its own shard's top ``k``). Memory per process: its shard, one chunk of
    every process's queries, and their similarities to the shard. In one process it is
    :func:`knn_accuracy`. ``num_classes`` is one more than the largest label anywhere.
    """
    from contrastlab.distributed import gather_cat, reduce_in_place, world

    _, size = world()
    device = bank.device
    largest = [int(t.max()) if len(t) else -1 for t in (bank_labels, labels)]
    totals = torch.tensor([len(bank), len(features), *largest], device=device)
    reduce_in_place(totals[:2])
    reduce_in_place(totals[2:], "max")
    bank_size, query_count = int(totals[0]), int(totals[1])
    if bank_size == 0:
        raise ValueError("kNN needs a non-empty feature bank")
    num_classes = int(totals[2:].max()) + 1
    k = min(k, bank_size)
    bank = F.normalize(bank.float(), dim=1)
    features = F.normalize(features.float(), dim=1)
    share = -(-chunk // size)  # each process's rows per round: ``chunk`` queries in all
    rounds = torch.tensor([-(-len(features) // share)], device=device)
    reduce_in_place(rounds, "max")
    correct = 0
    for start in range(0, int(rounds) * share, share):
        queries = gather_cat(features[start : start + share])
        truth = gather_cat(labels[start : start + share])
        top_sims, top_labels = _shard_top_k(queries, bank, bank_labels, k)
        if size > 1:
            top_sims, top_labels = gather_cat(top_sims.T).T, gather_cat(top_labels.T).T
            top_sims, best = top_sims.topk(k, dim=1)
            top_labels = top_labels.gather(1, best)
        weights = (top_sims / temperature).exp()  # exp(-inf) = 0: a shard's padding
        scores = class_votes(weights, top_labels, num_classes)
        correct += int((scores.argmax(dim=1) == truth).sum())
    return 100.0 * correct / max(query_count, 1), bank_size, query_count


def _shard_top_k(
    queries: torch.Tensor, bank: torch.Tensor, bank_labels: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` most similar entries of this shard per query, ``(Q, k)`` similarities and
    labels, padded with ``-inf`` / label 0 where the shard holds fewer than ``k``."""
    sims = queries @ bank.T
    kept = min(k, len(bank))
    top_sims, index = sims.topk(kept, dim=1)
    top_labels = bank_labels[index]
    if kept < k:
        pad = (0, k - kept)
        top_sims = F.pad(top_sims, pad, value=float("-inf"))
        top_labels = F.pad(top_labels, pad, value=0)
    return top_sims, top_labels
