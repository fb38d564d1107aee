"""Frameworks as LightningModules sharing :class:`ContrastiveMethod`."""

from contrastlab.methods.base import ContrastiveMethod
from contrastlab.methods.mocov2 import MoCoV2

__all__ = ["ContrastiveMethod", "MoCoV2"]
