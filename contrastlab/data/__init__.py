"""Datasets as uint8 tensors with their indices; readers for the standard on-disk formats."""

from contrastlab.data.download import ARCHIVES, Archive, default_root, ensure_dataset
from contrastlab.data.readers import (
    DatasetError,
    ImageSet,
    read_cifar,
    read_image_folder,
    read_stl10,
    read_tiny_imagenet,
)

__all__ = [
    "ARCHIVES",
    "Archive",
    "DatasetError",
    "ImageSet",
    "default_root",
    "ensure_dataset",
    "read_cifar",
    "read_image_folder",
    "read_stl10",
    "read_tiny_imagenet",
]
