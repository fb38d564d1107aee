"""Run a function in two spawned gloo processes and collect what each returns."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

Result = dict[str, torch.Tensor]


def _worker(rank: int, world: int, store: str, target: Callable[[int, int], Result], queue) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        result = target(rank, world)
        # NumPy copies: a tensor's shared memory would vanish with this process
        queue.put((rank, {name: tensor.numpy() for name, tensor in result.items()}))
    finally:
        dist.destroy_process_group()


def in_two_processes(tmp_path: Path, target: Callable[[int, int], Result]) -> list[Result]:
    """``target(rank, 2)`` in two processes joined by a gloo group; results in rank order.
    ``target`` must be a module-level function (the spawned processes import it)."""
    context = mp.get_context("spawn")
    queue = context.Queue()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    store = str(tmp_path / "store")
    processes = [
        context.Process(target=_worker, args=(rank, 2, store, target, queue)) for rank in range(2)
    ]
    for process in processes:
        process.start()
    results: dict[int, dict[str, np.ndarray]] = dict(queue.get(timeout=120) for _ in processes)
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    return [{k: torch.from_numpy(v) for k, v in results[r].items()} for r in range(2)]
