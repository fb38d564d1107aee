#!/usr/bin/env bash
# Every framework with RandomResizedCrop and with ContrastiveCrop on real CIFAR-10, the same
# short schedule as cifar10/mocov2_quick (torchvision-stem ResNet-18, 10,240 training images,
# batch 256, 3 epochs, kNN k=200 t=0.1 on 2,000 test images). ContrastiveCrop's schedule is
# scaled to it: RandomResizedCrop in epoch 0, boxes localised before epochs 1 and 2.
#   usage: bash bench/frameworks_ccrop.sh [frameworks...]   (default: all four)
set -euo pipefail
cd "$(dirname "$0")/.."
root=${CONTRASTLAB_DATA:-../shared/data}
quick=(--trainer.max_epochs 3 --trainer.check_val_every_n_epoch 1 --trainer.log_every_n_steps 10
  --model.cifar_stem false --data.batch_size 256 --data.train_subset 10240 --data.eval_subset 2000
  --trainer.enable_progress_bar false)
ccrop=(--model.crop.init_args.warmup_epochs 1 --model.crop.init_args.interval 1)
frameworks=("${@:-mocov2 simclr byol simsiam}")
echo "| framework | crops | kNN top-1 (%) | images/s | wall (s) |"
echo "| --- | --- | --- | --- | --- |"
for framework in ${frameworks[*]}; do
  for crops in rcrop ccrop; do
    config="cifar10/$framework"
    extra=()
    if [ "$framework" = mocov2 ]; then extra+=(--model.bn_splits 4); fi
    if [ "$crops" = ccrop ]; then config="${config}_ccrop"; extra+=("${ccrop[@]}"); fi
    run="bench/out/frameworks_${framework}_${crops}"
    rm -rf "$run"  # each measurement starts over (fit refuses to overwrite a run)
    start=$(date +%s)
    summary=$(.venv/bin/contrastlab fit --config "$config" --data.root "$root" "${quick[@]}" \
      --trainer.default_root_dir "$run" "${extra[@]}" 2>&1 | grep "contrastlab summary")
    wall=$(( $(date +%s) - start ))
    knn=$(sed -E 's/.*kNN top-1 .*-> ([0-9.]+)%.*/\1/' <<<"$summary")
    rate=$(sed -E 's/.*images\/s ([0-9.]+).*/\1/' <<<"$summary")
    echo "| $framework | $crops | $knn | $rate | $wall |"
  done
done
