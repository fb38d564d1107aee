#!/usr/bin/env bash
# Set everything up, pretrain MoCo v2 for about 5 minutes on CIFAR-10 (2 CPU cores), and show
# that it learned: kNN of the untrained encoder -> kNN after training, RankMe (label-free)
# before -> after, and an HTML report.
# Uses ../shared/data when present; otherwise $CONTRASTLAB_DATA / the cache (downloading if it can).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
args=()
if [ -d ../shared/data/cifar-10-batches-py ]; then args+=(--data.root ../shared/data); fi
run=runs/cifar10_mocov2_demo
# The demo starts over each time (fit refuses to overwrite a run directory that holds a run).
rm -rf "$run"
echo "contrastlab demo: MoCo v2, ResNet-18 (CIFAR stem) on 2,048 CIFAR-10 images for 10 epochs;"
echo "about 5 minutes on 2 CPU cores (the progress bar's 'run ETA' shows the time left)."
.venv/bin/contrastlab fit --config cifar10/mocov2_demo "${args[@]}" "$@"
.venv/bin/contrastlab report "$run"
.venv/bin/python - "$run" <<'PY'
import sys
from pathlib import Path

from contrastlab.runs.records import read_rows

run = Path(sys.argv[1])
_, rows = read_rows(run / "metrics.csv")
knn = [(int(r["epoch"]), float(r["knn/top1"])) for r in rows if r.get("knn/top1")]
(_, before), (epoch, after) = knn[0], knn[-1]
sizes = next(r for r in rows if r.get("knn/bank_images"))
bank, queries = int(float(sizes["knn/bank_images"])), int(float(sizes["knn/query_images"]))
print(f"\nkNN top-1 (k=200, t=0.1, bank {bank:,}, queries {queries:,}): untrained {before:.2f}% -> "
      f"{after:.2f}% after {epoch + 1} epochs ({after - before:+.2f} points)")
rank = [float(r["rankme/value"]) for r in rows if r.get("rankme/value")]
images = next(int(float(r["rankme/images"])) for r in rows if r.get("rankme/images"))
print(f"RankMe (label-free, backbone features of {images:,} training images): untrained "
      f"{rank[0]:.1f} -> {rank[-1]:.1f}")
print(f"report: {(run / 'report.html').resolve()}")
PY
