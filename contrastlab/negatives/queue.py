"""The MoCo key queue: an explicit ring buffer of past keys and their dataset indices."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from contrastlab.distributed import gather_cat


class KeyQueue(nn.Module):
    """A ring buffer of ``size`` unit keys of dimension ``dim`` with their dataset indices.

    State (all buffers, so checkpoints carry it): ``keys (size, dim)``, ``indices (size,)`` and
    ``labels (size,)`` (``-1`` for the random initial entries or unlabelled data) and ``pointer``
    (next slot to write). The initial
    keys are random unit vectors, each row normalised (the authors' code normalised columns).
    :meth:`push` gathers the keys of every process first, so all replicas stay identical, and
    writes them in rank order with wrap-around; ``size`` need not be a multiple of the batch.
    """

    keys: torch.Tensor
    indices: torch.Tensor
    labels: torch.Tensor
    pointer: torch.Tensor

    def __init__(self, size: int, dim: int, seed: int = 0) -> None:
        super().__init__()
        if size < 1 or dim < 1:
            raise ValueError(f"queue size and dim must be >= 1, got {size}, {dim}")
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer(
            "keys", F.normalize(torch.randn(size, dim, generator=generator), dim=1)
        )
        self.register_buffer("indices", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("labels", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        return self.keys.shape[0]

    @torch.no_grad()
    def push(
        self, keys: torch.Tensor, indices: torch.Tensor, labels: torch.Tensor | None = None
    ) -> None:
        """Enqueue this step's keys, dataset indices and labels (``-1``: unknown), gathered
        across processes, over the oldest entries."""
        if labels is None:
            labels = torch.full_like(indices, -1)
        keys, indices, labels = (gather_cat(t.detach()) for t in (keys, indices, labels))
        if len(keys) > self.size:  # more keys than slots: only the newest survive
            self.pointer += len(keys) - self.size
            keys, indices, labels = (t[-self.size :] for t in (keys, indices, labels))
        slots = (self.pointer + torch.arange(len(keys), device=keys.device)) % self.size
        self.keys[slots] = keys.to(self.keys.dtype)
        self.indices[slots] = indices.to(self.indices.device)
        self.labels[slots] = labels.to(self.labels.device)
        self.pointer.copy_((self.pointer + len(keys)) % self.size)
