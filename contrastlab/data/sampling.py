"""Epoch-seeded sampling of global batches, split across processes."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class GlobalBatchSampler(Sampler[int]):
    """Yields this process's share of every global batch, one epoch at a time.

    The order is a permutation drawn from ``(seed, epoch)``; global batch ``b`` is
    ``order[b * G : (b + 1) * G]`` with ``G = batch_size * world_size``, and process ``r``
    receives its ``r``-th contiguous slice of ``batch_size`` indices. One process with batch
    ``G`` therefore sees exactly the samples that ``world_size`` processes see together, which
    is what makes multi-process runs comparable to single-process ones. Wrap it in a
    ``BatchSampler(sampler, batch_size, drop_last=True)``; with ``drop_last`` only whole global
    batches are produced, otherwise the last global batch is split as evenly as possible.
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
    ) -> None:
        if batch_size < 1 or size < 1:
            raise ValueError(f"need size >= 1 and batch_size >= 1, got {size}, {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of size {world_size}")
        self.size, self.batch_size, self.shuffle, self.seed = size, batch_size, shuffle, seed
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.size)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.size, generator=generator)

    def __iter__(self) -> Iterator[int]:
        order, step = self._order(), self.batch_size * self.world_size
        stop = (self.size // step) * step if self.drop_last else self.size
        for start in range(0, stop, step):
            chunk = order[start : start + step]
            yield from chunk.tensor_split(self.world_size)[self.rank].tolist()

    def __len__(self) -> int:
        step = self.batch_size * self.world_size
        full = self.size // step
        if self.drop_last:
            return full * self.batch_size
        tail = self.size - full * step
        return full * self.batch_size + len(
            torch.arange(tail).tensor_split(self.world_size)[self.rank]
        )
