"""Negatives for contrastive losses: the key queue, InfoNCE and synthetic hard negatives
(plain PyTorch, no Lightning)."""

from contrastlab.negatives.losses import infonce_logits, infonce_loss
from contrastlab.negatives.queue import KeyQueue
from contrastlab.negatives.synthesis import KINDS, SyntheticNegatives

__all__ = ["KINDS", "KeyQueue", "SyntheticNegatives", "infonce_logits", "infonce_loss"]
