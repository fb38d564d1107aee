"""Backbone weights for the tools people fine-tune with: torchvision, timm and detectron2.

Every format holds the pretrained ResNet without its classifier. torchvision and timm files are
plain state dicts (``torch.load(f, weights_only=True)``) with torchvision's parameter names,
which timm's ResNets share; the detectron2 file is a pickle in detectron2's naming, as the MoCo
detection protocol converts it (``stem.conv1``, ``res2.0.conv1.norm``, ``res2.0.shortcut``).
A ``.json`` beside the file records the architecture and whether it has the CIFAR stem.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from contrastlab.methods.base import ContrastiveMethod

Format = Literal["torchvision", "timm", "detectron2"]
FORMATS: tuple[str, ...] = ("torchvision", "timm", "detectron2")


def backbone_state_dict(model: ContrastiveMethod) -> dict[str, torch.Tensor]:
    """The online backbone's weights under torchvision's names (no ``fc``), on the CPU."""
    state = model.backbone.net.state_dict()
    return {k: v.detach().cpu().contiguous() for k, v in state.items() if not k.startswith("fc.")}


def _cifar_stem(net: nn.Module) -> nn.Module:
    net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return net


def torchvision_resnet(arch: str, cifar_stem: bool = False) -> nn.Module:
    """The torchvision ResNet an export loads into with ``strict=True``: ``fc`` is Identity,
    and with ``cifar_stem`` the stem is the 3x3/1 convolution without max-pool."""
    import torchvision

    net = getattr(torchvision.models, arch)(weights=None)
    net.fc = nn.Identity()
    return _cifar_stem(net) if cifar_stem else net


def timm_resnet(arch: str, cifar_stem: bool = False) -> nn.Module:
    """The timm ResNet an export loads into with ``strict=True`` (``num_classes=0``)."""
    import timm

    net = timm.create_model(arch, pretrained=False, num_classes=0)
    return _cifar_stem(net) if cifar_stem else net


def detectron2_name(name: str) -> str:
    """torchvision ResNet name -> detectron2's: ``conv1``/``bn1`` of the stem go under
    ``stem.``, ``layerN`` becomes ``res(N+1)``, ``bnK`` the ``convK.norm``, and ``downsample.0``
    / ``.1`` the ``shortcut`` / ``shortcut.norm``."""
    if not name.startswith("layer"):
        name = "stem." + name
    name = re.sub(r"layer(\d)", lambda m: f"res{int(m.group(1)) + 1}", name)
    name = re.sub(r"bn(\d)", r"conv\1.norm", name)
    return name.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")


def detectron2_weights(state: dict[str, torch.Tensor]) -> dict:
    """A detectron2 checkpoint dict: numpy arrays under detectron2 names, BN counters dropped,
    ``matching_heuristics`` on (as the MoCo conversion script writes it)."""
    weights = {
        detectron2_name(k): v.numpy() for k, v in state.items() if "num_batches_tracked" not in k
    }
    return {"model": weights, "__author__": "contrastlab", "matching_heuristics": True}


def export_backbone(model: ContrastiveMethod, format: Format, out: str | Path) -> Path:
    """Write ``model``'s backbone in ``format`` to ``out`` (and ``out`` + ``.json``)."""
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; expected one of {FORMATS}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    state = backbone_state_dict(model)
    if format == "detectron2":
        with out.open("wb") as f:
            pickle.dump(detectron2_weights(state), f)
    else:
        torch.save(state, out)
    meta = {
        "format": format,
        "arch": model.hparams.backbone,
        "cifar_stem": bool(model.hparams.cifar_stem),
        "framework": type(model).__name__,
        "load": _how_to_load(format, model.hparams.backbone, bool(model.hparams.cifar_stem)),
    }
    Path(f"{out}.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


def _how_to_load(format: str, arch: str, cifar_stem: bool) -> str:
    if format == "detectron2":
        return (
            "MODEL.WEIGHTS=<file> with a ResNet backbone of the same depth (MoCo's R50-C4 recipe)"
        )
    builder = "torchvision_resnet" if format == "torchvision" else "timm_resnet"
    return (
        f"contrastlab.export.{builder}({arch!r}, cifar_stem={cifar_stem})"
        ".load_state_dict(torch.load(file, weights_only=True), strict=True)"
    )
