"""One probe run of a ``tests/learning.py`` recipe with other overrides or another length: how
the learning-regression recipes were searched for (bench/RESULTS.md). Prints the run's kNN
curve, untrained encoder first (epoch -1).

    python bench/learning_probe.py simsiam --stop 4 --schedule 10 --every 2 -- --model.lr 0.02
    python bench/learning_probe.py byol --stop 8 --every 4 -- --model.momentum 0.99
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import learning
from learning import COMMON, RECIPES

from contrastlab.app.cli import main as contrastlab
from contrastlab.runs.records import read_rows


def with_value(options: list[str], key: str, value: str) -> list[str]:
    options = list(options)
    options[options.index(key) + 1] = value
    return options


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", choices=list(RECIPES))
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--stop", type=int, default=learning.EPOCHS, help="epochs trained")
    parser.add_argument("--schedule", type=int, default=learning.SCHEDULE_EPOCHS)
    parser.add_argument("--every", type=int, default=learning.EPOCHS, help="kNN every N epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench/out/probe"))
    parser.epilog = "Options after -- go to `contrastlab fit` (after the recipe's own)."
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    args.overrides = argv[split + 1 :]
    learning.EPOCHS = args.stop  # read by learning.StopAfterEpochs
    common = with_value(COMMON, "--trainer.max_epochs", str(args.schedule))
    common = with_value(common, "--trainer.check_val_every_n_epoch", str(args.every))
    run_dir = args.out / f"{args.recipe}_{time.strftime('%Y%m%d_%H%M%S')}"
    recipe = RECIPES[args.recipe]
    start = time.perf_counter()
    contrastlab(
        [
            "fit",
            "--config",
            recipe.preset,
            "--data.root",
            str(args.data),
            "--trainer.default_root_dir",
            str(run_dir),
            f"--seed_everything={args.seed}",
            f"--model.seed={args.seed}",
            *common,
            *recipe.overrides,
            *args.overrides,
        ]
    )
    _, rows = read_rows(run_dir / "metrics.csv")
    curve = [(int(r["epoch"]), round(float(r["knn/top1"]), 2)) for r in rows if r.get("knn/top1")]
    print(f"{args.recipe} {args.overrides} seed {args.seed}: kNN by epoch {curve}")
    print(f"gain {curve[-1][1] - curve[0][1]:+.2f} in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
