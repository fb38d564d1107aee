"""The kNN monitor with its bank sharded across processes: the same figure as one process
holding the whole bank, and RankMe's sample gathered without gathering the bank."""

from __future__ import annotations

import pytest
import torch
from spawn import in_two_processes

from contrastlab.eval.knn import knn_accuracy, sharded_knn_accuracy
from contrastlab.eval.monitors import gather_sample, sample_rows

# uneven shards and query shares, so the rounds and the padding of a short shard are exercised
BANK_SHARES, QUERY_SHARES, CLASSES, DIM = (37, 50), (13, 29), 6, 16


def data() -> dict[str, torch.Tensor]:
    """Clustered features (a kNN above chance) with labels, the whole bank and query set."""
    g = torch.Generator().manual_seed(3)
    centres = torch.randn(CLASSES, DIM, generator=g)
    bank_y = torch.randint(0, CLASSES, (sum(BANK_SHARES),), generator=g)
    query_y = torch.randint(0, CLASSES, (sum(QUERY_SHARES),), generator=g)
    noise = 1.5
    return {
        "bank_x": centres[bank_y] + noise * torch.randn(len(bank_y), DIM, generator=g),
        "bank_y": bank_y,
        "query_x": centres[query_y] + noise * torch.randn(len(query_y), DIM, generator=g),
        "query_y": query_y,
    }


def share(tensor: torch.Tensor, shares: tuple[int, int], rank: int) -> torch.Tensor:
    start = sum(shares[:rank])
    return tensor[start : start + shares[rank]]


def _sharded(rank: int, world: int) -> dict[str, torch.Tensor]:
    d = data()
    bank_x, bank_y = share(d["bank_x"], BANK_SHARES, rank), share(d["bank_y"], BANK_SHARES, rank)
    query_x = share(d["query_x"], QUERY_SHARES, rank)
    query_y = share(d["query_y"], QUERY_SHARES, rank)
    results = {}
    for k in (5, 45):  # 45: more than the first shard holds
        top1, bank, queries = sharded_knn_accuracy(
            query_x, query_y, bank_x, bank_y, k=k, temperature=0.1, chunk=8
        )
        results[f"k{k}"] = torch.tensor([top1, bank, queries], dtype=torch.float64)
    results["sample"] = gather_sample(bank_x, 20)
    return results


@pytest.mark.multiprocess
def test_two_shards_give_the_whole_banks_knn_and_rankme_sample(tmp_path):
    ranks = in_two_processes(tmp_path, _sharded)
    d = data()
    for k in (5, 45):
        expected = knn_accuracy(d["query_x"], d["query_y"], d["bank_x"], d["bank_y"], k=k)
        for rank in ranks:
            top1, bank, queries = rank[f"k{k}"].tolist()
            assert top1 == pytest.approx(expected, abs=1e-4), (k, top1, expected)  # fp32 mean
            assert (bank, queries) == (sum(BANK_SHARES), sum(QUERY_SHARES))
    whole = d["bank_x"][sample_rows(sum(BANK_SHARES), 20)]
    for rank in ranks:  # the same rows as picking from the gathered bank (in bank order)
        assert torch.equal(sorted_rows(rank["sample"]), sorted_rows(whole))


def sorted_rows(rows: torch.Tensor) -> torch.Tensor:
    return rows[torch.argsort(rows[:, 0])]


@pytest.mark.parametrize("k", [1, 7, 200])
def test_one_process_is_the_plain_knn(k):
    d = data()
    expected = knn_accuracy(d["query_x"], d["query_y"], d["bank_x"], d["bank_y"], k=k)
    top1, bank, queries = sharded_knn_accuracy(
        d["query_x"], d["query_y"], d["bank_x"], d["bank_y"], k=k, chunk=5
    )
    assert top1 == pytest.approx(expected, abs=1e-4) and (bank, queries) == (87, 42)
    assert 100 / CLASSES + 10 < expected < 100  # the data is neither chance nor trivial
