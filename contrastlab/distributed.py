"""Small torch.distributed helpers that degrade to no-ops in a single process."""

from __future__ import annotations

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@torch.no_grad()
def gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from every process along dim 0, in rank order (no gradient).

    Processes may hold different numbers of rows: sizes are exchanged first and rows padded.
    """
    _, size = world()
    if size == 1:
        return tensor
    count = torch.tensor([tensor.shape[0]], device=tensor.device)
    counts = [torch.zeros_like(count) for _ in range(size)]
    dist.all_gather(counts, count)
    longest = int(max(c.item() for c in counts))
    padded = tensor.new_zeros((longest, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[: int(c.item())] for p, c in zip(parts, counts, strict=True)])


@torch.no_grad()
def broadcast(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    if world()[1] > 1:
        dist.broadcast(tensor, src)
    return tensor


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate equal-sized ``tensor`` from every process in rank order, gradients flowing
    back to each process's own rows (SimCLR's global negatives)."""
    if world()[1] == 1:
        return tensor
    return _AllGather.apply(tensor.contiguous())


class _AllGather(torch.autograd.Function):
    """Every process's equal-sized rows, concatenated in rank order; the gradient of a
    process's rows is the sum over processes of the gradients their copies received."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        rank, size = world()
        ctx.rank, ctx.rows = rank, tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(size)]
        dist.all_gather(parts, tensor)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.contiguous().clone()
        dist.all_reduce(total)
        return total[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


class _AllReduceSum(torch.autograd.Function):
    """``sum_p x_p`` on every process; the gradient of ``x_q`` is ``sum_p`` of the gradients
    every process's output received (the sum feeds every process's loss)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total


def all_reduce_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over processes, differentiable (GlobalBatchNorm's statistics)."""
    if world()[1] == 1:
        return tensor
    return _AllReduceSum.apply(tensor.contiguous())


@torch.no_grad()
def reduce_in_place(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """``tensor`` summed (``op="sum"``) or maximised (``"max"``) over processes, in place."""
    if world()[1] > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return tensor


def leave_process_group() -> None:
    """Tear the default process group down before the interpreter exits. Left to the exit,
    gloo's background threads can abort a process whose run has already finished ("terminate
    called without an active exception", seen once in a 2-process CPU test)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
