"""Negatives for contrastive losses: the key queue and the InfoNCE loss (plain PyTorch)."""

from contrastlab.negatives.losses import infonce_logits, infonce_loss
from contrastlab.negatives.queue import KeyQueue

__all__ = ["KeyQueue", "infonce_logits", "infonce_loss"]
