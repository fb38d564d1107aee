"""Evaluating checkpoints outside training: kNN from a checkpoint file."""

from __future__ import annotations

from pathlib import Path

import torch

from contrastlab.data.module import ContrastDataModule
from contrastlab.eval.knn import knn_accuracy
from contrastlab.methods.base import ContrastiveMethod
from contrastlab.training import load_checkpoint_file


def method_from_checkpoint(checkpoint: dict) -> ContrastiveMethod:
    """Rebuild the framework a checkpoint was trained with and load its weights."""
    from contrastlab import methods

    hparams = dict(checkpoint.get("hyper_parameters") or {})
    class_path = hparams.pop("_class_path", "contrastlab.methods.MoCoV2")
    hparams.pop("_instantiator", None)
    cls = getattr(methods, class_path.rsplit(".", 1)[-1], None)
    if cls is None or not issubclass(cls, ContrastiveMethod):
        raise ValueError(f"checkpoint names an unknown method {class_path!r}")
    model = cls(**hparams)
    model.load_state_dict(checkpoint["state_dict"])
    return model


@torch.no_grad()
def extract(model: ContrastiveMethod, loader, device: torch.device) -> tuple[torch.Tensor, ...]:
    features, labels = [], []
    for images, _, batch_labels in loader:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            features.append(model.features(images.to(device)).cpu())
        labels.append(batch_labels.cpu())
    return torch.cat(features), torch.cat(labels)


def knn_of_model(
    model: ContrastiveMethod,
    data: ContrastDataModule,
    k: int = 200,
    t: float = 0.1,
    device: str = "cpu",
) -> float:
    """kNN top-1 (percent) of ``model``'s backbone: bank = labelled training split, queries =
    evaluation split of ``data``."""
    data.setup("validate")
    loaders = data.knn_dataloaders()
    if not loaders:
        raise ValueError(f"{data.dataset}: kNN needs labelled bank and evaluation splits")
    dev = torch.device(device)
    model = model.to(dev).eval()
    bank_x, bank_y = extract(model, loaders[0], dev)
    eval_x, eval_y = extract(model, loaders[1], dev)
    return knn_accuracy(eval_x, eval_y, bank_x, bank_y, k=k, temperature=t)


def knn_from_checkpoint(
    path: str | Path, k: int = 200, t: float = 0.1, root: str | None = None, device: str = "cpu"
) -> float:
    """kNN top-1 (percent) of a checkpoint on the data it was trained with (or ``root``)."""
    checkpoint = load_checkpoint_file(path)
    model = method_from_checkpoint(checkpoint)
    return knn_of_model(model, data_from_checkpoint(checkpoint, root), k, t, device)


def data_from_checkpoint(checkpoint: dict, root: str | None = None) -> ContrastDataModule:
    """The data module a checkpoint was trained with (optionally read from another ``root``)."""
    saved = checkpoint.get("datamodule_hyper_parameters") or {}
    data_args = {k: v for k, v in saved.items() if not k.startswith("_")}
    if root is not None:
        data_args["root"] = root
    return ContrastDataModule(**data_args)
