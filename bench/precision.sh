#!/usr/bin/env bash
# kNN accuracy and throughput of the quick CIFAR-10 MoCo v2 run in fp32 and bf16 autocast,
# same seed and schedule.   usage: [TAG=name] bash bench/precision.sh [extra fit overrides]
set -euo pipefail
cd "$(dirname "$0")/.."
root=${CONTRASTLAB_DATA:-../shared/data}
for precision in 32-true bf16-mixed; do
  run=bench/out/precision${TAG:+_$TAG}_${precision}
  rm -rf "$run"  # each measurement starts over
  .venv/bin/contrastlab fit --config cifar10/mocov2_quick --data.root "$root" \
    --trainer.precision "$precision" --trainer.enable_progress_bar false \
    --trainer.default_root_dir "$run" "$@" 2>&1 | grep "contrastlab summary" \
    | sed "s/^/$precision: /"
done
