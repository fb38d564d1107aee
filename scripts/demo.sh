#!/usr/bin/env bash
# Set everything up, pretrain MoCo v2 briefly on CIFAR-10, and print its kNN accuracy.
# Uses ../shared/data when present; otherwise $CONTRASTLAB_DATA / the cache (downloading if it can).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
args=()
if [ -d ../shared/data/cifar-10-batches-py ]; then args+=(--data.root ../shared/data); fi
# The demo starts over each time (fit refuses to overwrite a run directory that holds a run).
rm -rf runs/cifar10_mocov2_quick
.venv/bin/contrastlab fit --config cifar10/mocov2_quick "${args[@]}" "$@"
.venv/bin/contrastlab knn --checkpoint runs/cifar10_mocov2_quick/checkpoints/last.ckpt "${args[@]}"
