"""Encoders: ResNet backbones (CIFAR stem optional), heads, SplitBatchNorm, GlobalBatchNorm."""

from contrastlab.models.backbones import ARCHITECTURES, ResNetBackbone
from contrastlab.models.globalbn import GlobalBatchNorm, globalise_batchnorm
from contrastlab.models.heads import mlp_head
from contrastlab.models.splitbn import SplitBatchNorm

__all__ = [
    "ARCHITECTURES",
    "GlobalBatchNorm",
    "ResNetBackbone",
    "SplitBatchNorm",
    "globalise_batchnorm",
    "mlp_head",
]
