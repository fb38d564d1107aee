"""How many of SynCo's hard negatives share the query's class on CIFAR-10 (false negatives).

SynCo draws its synthetics from the N hardest keys of each query's queue. The authors take
N = 1,024 of 65,536 keys (1.6%) on ImageNet's 1,000 classes; the CIFAR presets keep N = 1,024
with K = 4,096 keys (25%) over 10 classes. For each N in --n-hard this trains MoCo v2 + SynCo
with that pool on real CIFAR-10 (synthetics from the second epoch) and, after every epoch,
measures on augmented training views how much of the top-1,024 / 256 / 64 pool shares the
query's class, against the share of the whole queue (what a random pool would hold).

    python bench/pool_false_negatives.py --data ../shared/data [--n-hard 1024 256 64]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

POOLS = (1024, 256, 64)
RESULTS: list[dict] = []


class PoolShares(pl.Callback):
    """After each epoch: the same-class share of each query's top-N queue keys (N in
    :data:`POOLS`, the query's own image's keys left out) and of the whole queue, on the
    augmented views of 1,024 training images through the current encoder (eval mode)."""

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module) -> None:
        data = trainer.datamodule
        rows = torch.arange(min(1024, len(data.train_set)))
        batch = data.train_set.__getitems__(rows.tolist())
        images, indices, labels = (t.to(pl_module.device) for t in batch[:3])
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            view = pl_module.views(images, indices)[0]
            queries = pl_module.query(view)
        pl_module.train(was_training)
        queue = pl_module.queue
        known = queue.labels >= 0
        scores = (queries @ queue.keys.T).masked_fill(~known[None], float("-inf"))
        scores = scores.masked_fill(indices[:, None] == queue.indices[None, :], float("-inf"))
        same = queue.labels[None, :] == labels[:, None]
        shares = {
            f"top{n}": same.gather(1, scores.topk(n, dim=1).indices).float().mean().item()
            for n in POOLS
        }
        shares["queue"] = (same & known[None]).sum().item() / (known.sum().item() * len(rows))
        RESULTS.append({"epoch": trainer.current_epoch, **shares})


def run(n_hard: int, data: Path, out: Path, epochs: int, subset: int) -> list[dict]:
    import pool_false_negatives as loaded  # the module the trainer's callback comes from

    from contrastlab.app.cli import main

    loaded.RESULTS.clear()
    main(
        [
            "fit",
            "--config",
            "cifar10/mocov2_synco",
            "--data.root",
            str(data),
            "--trainer.default_root_dir",
            str(out / f"n{n_hard}"),
            "--data.train_subset",
            str(subset),
            "--data.eval_subset",
            "1000",
            "--data.batch_size",
            "128",
            "--model.bn_splits",
            "4",
            "--model.lr",
            "0.03",
            "--model.synthetic_warmup_epochs",
            "1",
            "--model.synthetic.init_args.n_hard",
            str(n_hard),
            "--trainer.max_epochs",
            str(epochs),
            "--trainer.check_val_every_n_epoch",
            str(epochs),
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.callbacks+=pool_false_negatives.PoolShares",
        ]
    )
    return list(loaded.RESULTS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="CIFAR-10 root")
    parser.add_argument("--n-hard", type=int, nargs="+", default=list(POOLS))
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--subset", type=int, default=8192, help="training images")
    parser.add_argument("--out", type=Path, default=Path("bench/out/pool_false_negatives"))
    args = parser.parse_args()
    table = {}
    for n_hard in args.n_hard:
        start = time.perf_counter()
        table[n_hard] = run(n_hard, args.data, args.out, args.epochs, args.subset)
        print(f"n_hard {n_hard}: {time.perf_counter() - start:.0f} s", flush=True)
    (args.out / "shares.json").write_text(json.dumps(table, indent=2))
    print("\n| trained with n_hard | epoch | top-1024 | top-256 | top-64 | whole queue |")
    print("| --- | --- | --- | --- | --- | --- |")
    for n_hard, rows in table.items():
        for row in rows:
            shares = " | ".join(f"{100 * row[k]:.1f}%" for k in ("top1024", "top256", "top64"))
            print(f"| {n_hard} | {row['epoch']} | {shares} | {100 * row['queue']:.1f}% |")


if __name__ == "__main__":
    main()
