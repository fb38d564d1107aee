"""Networks that ``contrastlab export`` files load into, and a detector around one.

``torchvision_resnet``, ``timm_resnet`` and ``timm_backbone`` are the networks an export loads
into with ``strict=True`` (each export's ``.json`` names the call). Detection transfer, the
path from a pretrained checkpoint to a detector fine-tune (docs/transfer.md):

    contrastlab export --checkpoint last.ckpt --format torchvision --out backbone.pth
    model = faster_rcnn_from_export("backbone.pth", arch="resnet50", num_classes=21)
    # then torchvision's detection reference training (VOC07+12 or COCO) on `model`

The backbone is a ResNet-FPN whose BatchNorm layers are frozen with the pretrained statistics
(torchvision's default for detection, as MoCo's detectron2 protocol uses "SyncBN" instead; see
the docs). Only ImageNet-stem backbones make sense for detection-sized images.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

from contrastlab.io import load_tensors


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


def timm_backbone(meta: dict) -> nn.Module:
    """The timm model a ``timm/<name>`` export loads into with ``strict=True``, from its
    ``.json``: ``timm.create_model(meta["timm_name"], num_classes=0, **meta["kwargs"])``."""
    import timm

    return timm.create_model(meta["timm_name"], pretrained=False, num_classes=0, **meta["kwargs"])


def faster_rcnn_from_export(
    path: str | Path,
    arch: str = "resnet50",
    num_classes: int = 21,
    trainable_layers: int = 5,
    **detector_kwargs,
) -> FasterRCNN:
    """A Faster R-CNN (ResNet-FPN) whose ResNet body carries the exported weights.

    ``path`` is a ``--format torchvision`` export of a backbone with the ImageNet stem;
    ``num_classes`` counts the background; ``trainable_layers`` (0-5) are fine-tuned, the rest
    frozen; ``detector_kwargs`` go to ``FasterRCNN`` (e.g. ``min_size``, ``max_size``).
    """
    state = load_tensors(path)
    if state["conv1.weight"].shape[-1] != 7:
        raise ValueError(
            f"{path}: the backbone has the CIFAR stem (3x3 conv1); detection needs the ImageNet "
            "stem (pretrain with model.cifar_stem=false)"
        )
    backbone = resnet_fpn_backbone(
        backbone_name=arch, weights=None, trainable_layers=trainable_layers
    )
    body = {k: v for k, v in state.items() if "num_batches_tracked" not in k}
    missing, unexpected = backbone.body.load_state_dict(body, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{path} does not match a torchvision {arch}: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    return FasterRCNN(backbone, num_classes=num_classes, **detector_kwargs)
