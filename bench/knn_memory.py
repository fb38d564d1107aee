"""Peak memory per process of the kNN monitor's figure: the whole bank gathered on every
process (contrastlab before the sharded monitor) against the bank left in shards.

    python bench/knn_memory.py --bank 200000 --dim 512 --queries 10000 --processes 2

Each method runs in its own ``torchrun`` (gloo, CPU) so that each process's peak resident memory
(``ru_maxrss``) is that method's alone; the table gives the peak above what the process held
once its shard of the bank and its queries were built, per process, beside the bank's size.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

MIB = 2**20


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MIB  # Linux: KiB


def worker(args: argparse.Namespace) -> None:
    import torch.distributed as dist

    from contrastlab.distributed import gather_cat
    from contrastlab.eval.knn import knn_accuracy, sharded_knn_accuracy

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    g = torch.Generator().manual_seed(rank)
    bank = torch.randn(args.bank // world, args.dim, generator=g)
    bank_labels = torch.randint(0, 1000, (len(bank),), generator=g)
    queries = torch.randn(args.queries // world, args.dim, generator=g)
    labels = torch.randint(0, 1000, (len(queries),), generator=g)
    dist.barrier()
    before = peak_mib()
    if args.method == "gathered":
        all_bank, all_labels = gather_cat(bank), gather_cat(bank_labels)
        all_queries, all_query_labels = gather_cat(queries), gather_cat(labels)
        top1 = knn_accuracy(all_queries, all_query_labels, all_bank, all_labels, k=200)
    else:
        top1, _, _ = sharded_knn_accuracy(queries, labels, bank, bank_labels, k=200)
    rise = torch.tensor([peak_mib() - before])
    rises = [torch.zeros(1) for _ in range(world)]
    dist.all_gather(rises, rise)
    if rank == 0:
        Path(args.out).write_text(json.dumps({"top1": top1, "rise": [float(r) for r in rises]}))
    dist.destroy_process_group()


def launch(args: argparse.Namespace, method: str) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "result.json"
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={args.processes}", __file__, "--worker", "--method", method,
            "--out", str(out), "--bank", str(args.bank), "--dim", str(args.dim),
            "--queries", str(args.queries),
        ]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        subprocess.run(command, check=True, env=env, capture_output=True)
        return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bank", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", default="sharded", help=argparse.SUPPRESS)
    parser.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    bank_mib = args.bank * args.dim * 4 / MIB
    print(
        f"bank {args.bank:,} x {args.dim} fp32 = {bank_mib:.0f} MiB, {args.queries:,} queries, "
        f"{args.processes} processes\n\n| method | peak rise per process (MiB) | kNN top-1 |\n"
        "|---|---|---|"
    )
    for method in ("gathered", "sharded"):
        result = launch(args, method)
        rises = ", ".join(f"{r:.0f}" for r in result["rise"])
        print(f"| {method} | {rises} | {result['top1']:.2f} |")


if __name__ == "__main__":
    main()
