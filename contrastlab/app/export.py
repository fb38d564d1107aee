"""Backbone weights for the tools people fine-tune with: safetensors, torchvision, timm and
detectron2.

Every format holds the pretrained backbone without its classifier. ``safetensors`` (any
backbone; the format people share weights in, and it cannot carry code) and ``timm``/
``torchvision`` (plain state dicts, ``torch.load(f, weights_only=True)``) keep the network's own
parameter names: torchvision's for the ResNets (which timm's ResNets share), timm's for
``timm/<name>`` backbones. The detectron2 file (ResNets only) is a pickle in detectron2's
naming, as the MoCo detection protocol converts it (``stem.conv1``, ``res2.0.conv1.norm``,
``res2.0.shortcut``). A ``.json`` beside the file records what rebuilds the network (backbone
name, timm kwargs, CIFAR stem), its feature width, the input normalisation and the Python
lines that load it without contrastlab (``load``, :func:`load_snippet`).
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path
from typing import Literal

import torch

from contrastlab.io import atomic_write
from contrastlab.methods.base import ContrastiveMethod
from contrastlab.models.backbones import TIMM_PREFIX

Format = Literal["safetensors", "torchvision", "timm", "detectron2"]
FORMATS: tuple[str, ...] = ("safetensors", "torchvision", "timm", "detectron2")
RESNET_ONLY = ("torchvision", "detectron2")


def backbone_state_dict(model: ContrastiveMethod) -> dict[str, torch.Tensor]:
    """The online backbone's weights under its network's own names (no classifier), on the
    CPU: torchvision's for the ResNets, timm's for timm models."""
    state = model.backbone.net.state_dict()
    return {k: v.detach().cpu().contiguous() for k, v in state.items() if not k.startswith("fc.")}


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
    name = model.hparams.backbone
    if format in RESNET_ONLY and name.startswith(TIMM_PREFIX):
        raise ValueError(
            f"--format {format} holds torchvision ResNets; {name} exports as safetensors or timm"
        )
    out = Path(out)
    state = backbone_state_dict(model)
    if format == "detectron2":
        atomic_write(out, lambda f: pickle.dump(detectron2_weights(state), f))
    elif format == "safetensors":
        from safetensors.torch import save

        atomic_write(out, lambda f: f.write(save(state, metadata={"backbone": name})))
    else:
        atomic_write(out, lambda f: torch.save(state, f))
    meta = export_metadata(model, format)
    meta["load"] = load_snippet(format, meta, out.name)
    atomic_write(
        Path(f"{out}.json"), lambda f: f.write((json.dumps(meta, indent=2) + "\n").encode())
    )
    return out


def export_metadata(model: ContrastiveMethod, format: str) -> dict:
    """What rebuilds and feeds the exported network: backbone name (``arch``), timm name and
    kwargs, CIFAR stem, feature width, input size and normalisation."""
    name, hparams = model.hparams.backbone, model.hparams
    timm_model = name.startswith(TIMM_PREFIX)
    meta = {
        "format": format,
        "arch": name,
        "timm_name": name.removeprefix(TIMM_PREFIX) if timm_model else name,
        "kwargs": dict(hparams.get("backbone_kwargs") or {}),
        "cifar_stem": bool(hparams.cifar_stem),
        "feature_dim": int(model.backbone.feature_dim),
        "input_size": int(model.augment.size),
        "mean": list(model.augment.mean),
        "std": list(model.augment.std),
        "framework": type(model).__name__,
    }
    return meta


def load_snippet(format: str, meta: dict, file: str) -> str:
    """Python lines that load the export ``file`` with nothing from contrastlab: the network
    built in timm or torchvision (a CIFAR stem made by hand: a 3x3 stride-1 ``conv1`` and no
    max-pool), its weights loaded with ``strict=True``, as ``net``."""
    if format == "detectron2":
        return (
            f"MODEL.WEIGHTS={file} in detectron2, with a ResNet backbone of the same depth "
            "(MoCo's R50-C4 recipe)"
        )
    name = meta["timm_name"]
    if meta["arch"].startswith(TIMM_PREFIX):
        kwargs = "".join(f", {k}={v!r}" for k, v in meta["kwargs"].items())
        lines = ["import torch, timm", f"net = timm.create_model({name!r}, num_classes=0{kwargs})"]
    elif format == "torchvision":
        lines = [
            "import torch, torchvision",
            f"net = torchvision.models.{name}()",
            "net.fc = torch.nn.Identity()",
        ]
    else:
        lines = ["import torch, timm", f"net = timm.create_model({name!r}, num_classes=0)"]
    if meta["cifar_stem"] and not meta["arch"].startswith(TIMM_PREFIX):
        lines += [
            "net.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)  # the CIFAR stem",
            "net.maxpool = torch.nn.Identity()",
        ]
    if format == "safetensors":
        lines += ["from safetensors.torch import load_file", f"weights = load_file({file!r})"]
    else:
        lines += [f"weights = torch.load({file!r}, weights_only=True)"]
    return "\n".join([*lines, "net.load_state_dict(weights, strict=True)"])
