"""Epoch-seeded sampling of global batches, split across processes, resumable mid-epoch."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Sampler


class GlobalBatchSampler(Sampler[int]):
    """Yields this process's share of every global batch, one epoch at a time.

    The order is a permutation drawn from ``(seed, epoch)``; global batch ``b`` is
    ``order[b * G : (b + 1) * G]`` with ``G = batch_size * world_size``, and process ``r``
    receives its ``r``-th contiguous slice of ``batch_size`` indices. One process with batch
    ``G`` therefore sees exactly the samples that ``world_size`` processes see together, which
    is what makes multi-process runs comparable to single-process ones. Wrap it in a
    ``BatchSampler(sampler, batch_size, drop_last=True)``; with ``drop_last`` only whole global
    batches are produced, otherwise the last global batch is split as evenly as possible.
    With ``indices`` the sampler runs over those dataset indices only (``size`` of them).

    With ``groups`` (a group id per dataset index, e.g. landscape or portrait) every global
    batch is of one group (:func:`grouped_order`): the permutation fills one bucket per group
    and each bucket that reaches ``G`` becomes the next global batch; what the buckets hold at
    the epoch's end is left out (``drop_last`` only).
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
        indices: torch.Tensor | None = None,
        groups: torch.Tensor | None = None,
    ) -> None:
        if indices is not None and len(indices) != size:
            raise ValueError(f"{len(indices)} indices for a sampler of size {size}")
        if groups is not None and not drop_last:
            raise ValueError("batches grouped by kind need drop_last: the remainders are mixed")
        if batch_size < 1 or size < 1:
            raise ValueError(f"need size >= 1 and batch_size >= 1, got {size}, {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of size {world_size}")
        self.size, self.batch_size, self.shuffle, self.seed = size, batch_size, shuffle, seed
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.indices, self.groups = indices, groups
        self.epoch = 0
        self._skip: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip_batches(self, epoch: int, count: int) -> None:
        """Start epoch ``epoch`` at its global batch ``count`` (a mid-epoch resume); the order
        of the remaining batches is unchanged, since it depends only on ``(seed, epoch)``."""
        self._skip = (epoch, count)

    def pending_skip(self) -> int:
        """Global batches the next iteration of the current epoch will skip."""
        return self._skip[1] if self._skip is not None and self._skip[0] == self.epoch else 0

    def _order(self) -> torch.Tensor:
        if not self.shuffle:
            order = torch.arange(self.size)
        else:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.size, generator=generator)
        order = order if self.indices is None else self.indices[order]
        if self.groups is not None:
            return grouped_order(order, self.groups, self.batch_size * self.world_size)
        return order

    def global_batches(self) -> int:
        """Whole global batches in an epoch (the same in every epoch)."""
        step = self.batch_size * self.world_size
        if self.groups is None:
            return self.size // step
        domain = torch.arange(self.size) if self.indices is None else self.indices
        _, counts = self.groups[domain].unique(return_counts=True)
        return int((counts // step).sum())

    def __iter__(self) -> Iterator[int]:
        order, step = self._order(), self.batch_size * self.world_size
        stop = self.global_batches() * step if self.drop_last else self.size
        first = self.pending_skip() * step
        self._skip = None
        for start in range(first, stop, step):
            chunk = order[start : start + step]
            yield from chunk.tensor_split(self.world_size)[self.rank].tolist()

    def __len__(self) -> int:
        step = self.batch_size * self.world_size
        full = self.global_batches()
        if self.drop_last:
            return full * self.batch_size
        tail = self.size - full * step
        return full * self.batch_size + len(
            torch.arange(tail).tensor_split(self.world_size)[self.rank]
        )


def grouped_order(order: torch.Tensor, groups: torch.Tensor, step: int) -> torch.Tensor:
    """``order`` (dataset indices) as runs of ``step`` indices of one group each, the way a
    stream fills buckets (detectron2's ``AspectRatioGroupedDataset``): each index joins its
    group's bucket (``groups[index]``), and a bucket that reaches ``step`` is the next run.
    Within a group the indices keep their order; the runs come in the order they fill; the
    last ``count % step`` of each group, left in its bucket, are not in the result."""
    buckets: dict[int, list[int]] = {}
    runs: list[int] = []
    for index, group in zip(order.tolist(), groups[order].tolist(), strict=True):
        bucket = buckets.setdefault(group, [])
        bucket.append(index)
        if len(bucket) == step:
            runs.extend(bucket)
            bucket.clear()
    return torch.tensor(runs, dtype=torch.long)


class ResumableLoader(DataLoader):
    """A data loader over a :class:`GlobalBatchSampler` (in a ``BatchSampler``) that knows how
    many batches of the current epoch it has handed out.

    ``state_dict()`` is ``{"epoch", "batches"}``; Lightning saves it in every checkpoint and
    gives it back through ``load_state_dict`` on resume, after which the epoch starts at its
    next unconsumed batch: a checkpoint taken mid-epoch resumes exactly.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._epoch, self._position = 0, 0

    @property
    def global_sampler(self) -> GlobalBatchSampler:
        return self.batch_sampler.sampler

    def __iter__(self) -> Iterator[Any]:
        # A generator: the epoch is read when the first batch is asked for, after
        # Lightning's set_epoch, even for an iterator created before it.
        sampler = self.global_sampler
        self._epoch, self._position = sampler.epoch, sampler.pending_skip()
        for batch in super().__iter__():
            self._position += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._epoch, "batches": self._position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.global_sampler.skip_batches(int(state["epoch"]), int(state["batches"]))


BoxDrawer = Callable[[torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]
"""``(dataset indices (n,), image sizes (n, 2), generator) -> (V, n, 4)`` int crop boxes."""


def batch_generator(*key: int) -> torch.Generator:
    """A generator seeded by ``key`` alone (``(seed, epoch, batch, rank)``): the boxes of a
    batch do not depend on what was drawn before, so a resumed run and any number of loader
    workers draw the same ones."""
    state = np.random.SeedSequence([int(k) for k in key]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)


def whole_images(
    indices: torch.Tensor, sizes: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    """One box per image covering all of it (the localisation pass): ``(1, n, 4)``."""
    return torch.cat([torch.zeros_like(sizes), sizes], dim=1).unsqueeze(0)


class ViewRequestSampler(BatchSampler):
    """A ``BatchSampler`` over a :class:`GlobalBatchSampler` whose batches are view requests
    ``(index, boxes, out_size)``: the boxes are drawn here, in the training process, before the
    images are decoded, by ``draw`` (the model's box sampler, which reads ContrastiveCrop's
    current store), from :func:`batch_generator` of ``(seed, epoch, batch number, rank)``.

    The batches of an epoch are asked for only once its iteration starts, after
    ``on_train_epoch_start`` has localised, so no request carries a stale box.
    """

    def __init__(
        self,
        sampler: GlobalBatchSampler,
        batch_size: int,
        drop_last: bool,
        sizes: torch.Tensor,
        draw: BoxDrawer,
        out_size: int,
        seed: int = 0,
    ) -> None:
        super().__init__(sampler, batch_size, drop_last)
        self.sizes, self.draw, self.out_size, self.seed = sizes, draw, out_size, seed

    def __iter__(self) -> Iterator[list[tuple[int, torch.Tensor, int]]]:
        sampler = self.sampler
        epoch, number = sampler.epoch, sampler.pending_skip()
        for batch in super().__iter__():
            indices = torch.tensor(batch)
            generator = batch_generator(self.seed, epoch, number, sampler.rank)
            boxes = self.draw(indices, self.sizes[indices], generator)
            number += 1
            yield [(i, boxes[:, j], self.out_size) for j, i in enumerate(batch)]
