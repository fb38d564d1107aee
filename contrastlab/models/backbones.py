"""Backbones: torchvision ResNets, optionally with the CIFAR stem, returning pooled features."""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from contrastlab.models.splitbn import SplitBatchNorm

ARCHITECTURES = ("resnet18", "resnet34", "resnet50")


class ResNetBackbone(nn.Module):
    """A torchvision ResNet without its classifier: ``(B, 3, H, W) -> (B, feature_dim)``.

    ``cifar_stem=True`` swaps the 7x7/2 convolution and max-pool for a 3x3/1 convolution, the
    usual ResNet variant for 32-96 px images. ``bn_splits > 1`` uses :class:`SplitBatchNorm`
    (simulates per-GPU batch statistics on one device). Submodule names are torchvision's, so
    exported weights load into ``torchvision.models.<arch>`` with ``strict=True`` minus ``fc``.
    """

    def __init__(self, arch: str = "resnet18", cifar_stem: bool = True, bn_splits: int = 1) -> None:
        super().__init__()
        if arch not in ARCHITECTURES:
            raise ValueError(f"unknown backbone {arch!r}; expected one of {ARCHITECTURES}")
        norm = (lambda c: SplitBatchNorm(c, bn_splits)) if bn_splits > 1 else nn.BatchNorm2d
        net = getattr(torchvision.models, arch)(weights=None, norm_layer=norm)
        if cifar_stem:
            net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        self.feature_dim = net.fc.in_features
        net.fc = nn.Identity()
        self.net = net

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The last convolutional stage's output ``(B, C, h, w)`` (before pooling)."""
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        return n.layer4(n.layer3(n.layer2(n.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.net.avgpool(self.feature_map(x)), 1)
