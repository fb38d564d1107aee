"""Encoders: ResNet backbones (CIFAR stem optional), heads, SplitBatchNorm."""

from contrastlab.models.backbones import ARCHITECTURES, ResNetBackbone
from contrastlab.models.heads import mlp_head
from contrastlab.models.splitbn import SplitBatchNorm

__all__ = ["ARCHITECTURES", "ResNetBackbone", "SplitBatchNorm", "mlp_head"]
