"""contrastlab: self-supervised contrastive pretraining of image encoders."""

__version__ = "0.1.0"
