"""Host synchronisations inside the training step, counted on a GPU: every framework (and
SynCo, ContrastiveCrop) trains a few steps on real CIFAR-10 kept on the device, and steps after
the first run under ``torch.cuda.set_sync_debug_mode("warn")``; each warning is a place where
the step waits for the GPU. Needs CUDA (the device runs of issue 12).

    python bench/sync_check.py --data ../shared/data
"""

from __future__ import annotations

import argparse
import warnings
from collections import Counter

import torch

PRESETS = [
    "cifar10/mocov2",
    "cifar10/mocov2_synco",
    "cifar10/simclr_ccrop",
    "cifar10/byol",
    "cifar10/simsiam",
]


def sync_warnings(preset: str, data_root: str, steps: int, batch: int) -> Counter:
    import lightning.pytorch as pl
    import yaml

    from contrastlab import negatives, views
    from contrastlab.data.module import ContrastDataModule
    from contrastlab.methods import BYOL, MoCoV2, SimCLR, SimSiam
    from contrastlab.presets import preset_path

    config = yaml.safe_load(preset_path(preset).read_text())["model"]
    classes = {"MoCoV2": MoCoV2, "SimCLR": SimCLR, "BYOL": BYOL, "SimSiam": SimSiam}
    model_class = classes[config["class_path"].rsplit(".", 1)[1]]
    arguments = dict(config["init_args"])
    for plugin in ("synthetic", "crop"):  # class_path + init_args, as the CLI builds them
        if isinstance(arguments.get(plugin), dict):
            spec = arguments[plugin]
            owner = negatives if plugin == "synthetic" else views
            arguments[plugin] = getattr(owner, spec["class_path"].rsplit(".", 1)[1])(
                **spec.get("init_args", {})
            )
    model = model_class(**arguments)
    found: Counter = Counter()

    class Watch(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, index) -> None:
            if index >= 1:
                torch.cuda.set_sync_debug_mode("warn")

        def on_train_batch_end(self, trainer, module, outputs, batch, index) -> None:
            torch.cuda.set_sync_debug_mode("default")

    data = ContrastDataModule("cifar10", root=data_root, batch_size=batch, train_subset=4096)
    trainer = pl.Trainer(
        accelerator="gpu",
        devices=1,
        max_steps=steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Watch()],
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, data)
    for w in caught:
        if "synchroniz" in str(w.message):
            found[f"{w.filename}:{w.lineno}"] += 1
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench/sync_check.py needs a CUDA device")
    for preset in PRESETS:
        found = sync_warnings(preset, args.data, args.steps, args.batch)
        total = sum(found.values())
        print(f"{preset}: {total} synchronisations in {args.steps - 1} steps")
        for place, count in found.most_common():
            print(f"    {count:4d}  {place}")


if __name__ == "__main__":
    main()
