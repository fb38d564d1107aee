"""Frameworks as LightningModules sharing :class:`ContrastiveMethod`."""

from contrastlab.methods.base import ContrastiveMethod
from contrastlab.methods.byol import BYOL
from contrastlab.methods.mocov2 import MoCoV2
from contrastlab.methods.simclr import SimCLR
from contrastlab.methods.simsiam import SimSiam

__all__ = ["BYOL", "ContrastiveMethod", "MoCoV2", "SimCLR", "SimSiam"]
