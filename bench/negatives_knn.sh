#!/usr/bin/env bash
# MoCo v2 vs SynCo vs MoCHi on real CIFAR-10, same seed and schedule (the quick preset, with
# synthetics from the first step because the schedule is short): kNN top-1 side by side.
#   usage: bash bench/negatives_knn.sh [extra fit overrides]
set -euo pipefail
cd "$(dirname "$0")/.."
root=${CONTRASTLAB_DATA:-../shared/data}
synco='{"class_path": "contrastlab.negatives.SyntheticNegatives", "init_args": {}}'
mochi='{"class_path": "contrastlab.negatives.SyntheticNegatives", "init_args": {"n_hard": 1024, "interpolated": 256, "extrapolated": 0, "mixup": 512, "noise": 0, "perturbed": 0, "adversarial": 0}}'
for name in mocov2 synco mochi; do
  extra=()
  [ "$name" = synco ] && extra=(--model.synthetic "$synco" --model.synthetic_warmup_epochs 0)
  [ "$name" = mochi ] && extra=(--model.synthetic "$mochi" --model.synthetic_warmup_epochs 0)
  rm -rf "bench/out/negatives_$name"  # each measurement starts over
  .venv/bin/contrastlab fit --config cifar10/mocov2_quick --data.root "$root" \
    --trainer.enable_progress_bar false --trainer.default_root_dir "bench/out/negatives_$name" \
    "${extra[@]}" "$@" 2>&1 | grep "contrastlab summary" | sed "s/^/$name: /"
done
