"""Readers for the standard on-disk formats, returning uint8 image tensors.

Every reader returns an :class:`ImageSet`: ``images`` is ``(N, 3, H, W)`` uint8, ``labels`` is
``(N,)`` int64 or ``None`` for unlabelled data; the dataset index of an image is its row. Every
structural problem raises :class:`DatasetError` naming the file and what was expected.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from contrastlab.data.errors import DatasetError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")


@dataclass(frozen=True)
class ImageSet:
    """Images as ``(N, 3, H, W)`` uint8 with optional ``(N,)`` int64 labels and class names."""

    images: torch.Tensor
    labels: torch.Tensor | None
    classes: list[str] | None = None

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            raise DatasetError(
                f"images must be (N, 3, H, W) uint8, got {tuple(self.images.shape)} "
                f"{self.images.dtype}"
            )
        if self.labels is not None and self.labels.shape != (len(self.images),):
            raise DatasetError(
                f"labels must be ({len(self.images)},), got {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int | None:
        if self.classes is not None:
            return len(self.classes)
        return None if self.labels is None else int(self.labels.max()) + 1

    def subset(self, indices: torch.Tensor) -> ImageSet:
        labels = None if self.labels is None else self.labels[indices]
        return ImageSet(self.images[indices], labels, self.classes)


# --------------------------------------------------------------------------- CIFAR


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR batches while refusing every global but numpy's array rebuilders.

    The official CIFAR files are pickles; a plain ``pickle.load`` of a tampered file can run
    arbitrary code, so only the handful of callables the real files reference are allowed.
    """

    _ALLOWED: ClassVar[frozenset[tuple[str, str]]] = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("_codecs", "encode"),
        }
    )

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        if module == "numpy.core.multiarray":  # NumPy 2 moved it; same function
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    try:
        with path.open("rb") as f:
            content = _NumpyOnlyUnpickler(f, encoding="latin1").load()
    except Exception as error:  # any unpickling failure means a corrupt or foreign file
        raise DatasetError(f"{path}: not a readable CIFAR pickle ({error})") from error
    if not isinstance(content, dict):
        raise DatasetError(f"{path}: expected a dict, got {type(content).__name__}")
    return content


def _cifar_batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(path)
    for key in ("data", label_key):
        if key not in batch:
            raise DatasetError(f"{path}: missing key {key!r} (has {sorted(batch)})")
    data, labels = batch["data"], np.asarray(batch[label_key])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise DatasetError(f"{path}: 'data' must be a 2-D uint8 array")
    if data.shape[1] != 3072:
        raise DatasetError(f"{path}: 'data' rows must hold 3072 values, got {data.shape[1]}")
    if labels.shape != (len(data),):
        raise DatasetError(f"{path}: {len(labels)} labels for {len(data)} images")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DatasetError(
            f"{path}: labels must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]"
        )
    return data, labels


def _find_folder(root: Path, name: str, marker: str) -> Path:
    """``root/name`` if it holds ``marker``, else ``root`` itself if it does."""
    for candidate in (root / name, root):
        if (candidate / marker).exists():
            return candidate
    raise DatasetError(
        f"{root}: no {name}/ folder with {marker!r} found; put the extracted official archive "
        f"there (expected {root / name / marker})"
    )


CIFAR_LAYOUT = {
    "cifar10": ("cifar-10-batches-py", "batches.meta", "label_names", "labels", 10),
    "cifar100": ("cifar-100-python", "meta", "fine_label_names", "fine_labels", 100),
}


def read_cifar(root: str | Path, variant: str = "cifar10", split: str = "train") -> ImageSet:
    """CIFAR-10/100 in the official "python version" pickle layout.

    ``root`` is the folder that holds ``cifar-10-batches-py/`` (or ``cifar-100-python/``), or
    that folder itself. ``split`` is ``"train"`` or ``"test"``.
    """
    if variant not in CIFAR_LAYOUT:
        raise DatasetError(
            f"unknown CIFAR variant {variant!r}; expected one of {list(CIFAR_LAYOUT)}"
        )
    folder_name, meta_name, names_key, label_key, num_classes = CIFAR_LAYOUT[variant]
    folder = _find_folder(Path(root), folder_name, meta_name)
    if split == "train":
        files = [f"data_batch_{i}" for i in range(1, 6)] if variant == "cifar10" else ["train"]
    elif split == "test":
        files = ["test_batch"] if variant == "cifar10" else ["test"]
    else:
        raise DatasetError(f"CIFAR split must be 'train' or 'test', got {split!r}")
    parts = [_cifar_batch(folder / name, label_key, num_classes) for name in files]
    data = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    meta = _unpickle(folder / meta_name)
    classes = meta.get(names_key)
    if not isinstance(classes, list) or len(classes) != num_classes:
        raise DatasetError(f"{folder / meta_name}: {names_key!r} must list {num_classes} names")
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    return ImageSet(images, torch.from_numpy(labels.astype(np.int64)), list(classes))


# --------------------------------------------------------------------------- STL-10

STL10_SIZE = 96
STL10_SPLITS = {"train": "train", "test": "test", "unlabeled": "unlabeled"}


def _stl10_images(path: Path) -> torch.Tensor:
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    per_image = 3 * STL10_SIZE * STL10_SIZE
    size = path.stat().st_size
    if size == 0 or size % per_image:
        raise DatasetError(
            f"{path}: size {size} is not a positive multiple of {per_image} (3x96x96 uint8 images)"
        )
    raw = np.fromfile(path, dtype=np.uint8).reshape(-1, 3, STL10_SIZE, STL10_SIZE)
    # Each channel is stored column-major: swap to row-major (H, W).
    return torch.from_numpy(np.ascontiguousarray(raw.transpose(0, 1, 3, 2)))


def _stl10_labels(path: Path, count: int) -> torch.Tensor:
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    labels = np.fromfile(path, dtype=np.uint8).astype(np.int64)
    if len(labels) != count:
        raise DatasetError(f"{path}: {len(labels)} labels for {count} images")
    if count and (labels.min() < 1 or labels.max() > 10):
        raise DatasetError(
            f"{path}: labels must lie in [1, 10], got [{labels.min()}, {labels.max()}]"
        )
    return torch.from_numpy(labels - 1)


def read_stl10(root: str | Path, split: str = "train") -> ImageSet:
    """STL-10 in the official binary layout (``stl10_binary/{split}_X.bin``, ``_y.bin``).

    ``split`` is ``train``, ``test``, ``unlabeled`` or a ``+``-joined union such as
    ``train+unlabeled`` (labels are then ``None``).
    """
    folder = _find_folder(Path(root), "stl10_binary", "class_names.txt")
    classes = (folder / "class_names.txt").read_text().split()
    parts = split.split("+")
    unknown = [p for p in parts if p not in STL10_SPLITS]
    if unknown:
        raise DatasetError(f"STL-10 split {split!r}: expected parts of {list(STL10_SPLITS)}")
    images, labels = [], []
    for part in parts:
        x = _stl10_images(folder / f"{part}_X.bin")
        images.append(x)
        if part != "unlabeled":
            labels.append(_stl10_labels(folder / f"{part}_y.bin", len(x)))
    joined_labels = torch.cat(labels) if len(labels) == len(parts) else None
    return ImageSet(torch.cat(images), joined_labels, classes)


# --------------------------------------------------------------------------- image folders


def decode_image(path: Path, size: int | None = None) -> torch.Tensor:
    """Decode one image file to ``(3, H, W)`` uint8 RGB; with ``size``, resize the shorter side
    to ``size`` and centre-crop to ``size x size`` (the fixed working size), decoding a large
    JPEG at the smallest DCT scale that still holds ``size`` pixels."""
    from torchvision.transforms.v2.functional import center_crop, resize

    from contrastlab.data.decode import decode_rgb, decode_square

    pixels = decode_rgb(path) if size is None else decode_square(path, size)
    image = torch.from_numpy(pixels).permute(2, 0, 1).contiguous()
    if size is not None:
        image = center_crop(resize(image, [size], antialias=True), [size, size])
    return image


def class_folders(root: str | Path) -> list[str]:
    """The class sub-folders of an image folder, sorted by name (their labels); hidden ones,
    such as the index's ``.contrastlab/``, are not classes. Empty for a flat folder."""
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))


def align_labels(
    labels: torch.Tensor | None,
    classes: list[str] | None,
    reference: list[str] | None,
    where: str,
) -> torch.Tensor | None:
    """``labels`` of a split whose class folders are ``classes``, renumbered to the training
    split's ``reference`` classes by name (a split may lack some of them: its labels still mean
    the same classes). A class the training split lacks is an error naming it. Unchanged when
    either split is unlabelled (a flat folder)."""
    if labels is None or classes is None or reference is None or classes == reference:
        return labels
    unknown = [name for name in classes if name not in reference]
    if unknown:
        shown = ", ".join(unknown[:5]) + (
            f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        )
        raise DatasetError(
            f"{where}: class folder(s) {shown} are not classes of the training split "
            f"({len(reference)} classes: {', '.join(reference[:5])}"
            f"{', ...' if len(reference) > 5 else ''})"
        )
    position = {name: i for i, name in enumerate(reference)}
    mapping = torch.tensor([position[name] for name in classes], dtype=torch.int64)
    return mapping[labels]


def list_image_folder(root: str | Path) -> tuple[list[Path], list[int] | None, list[str] | None]:
    """Files of an image folder: class sub-folders (sorted names = labels) or a flat folder."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: image folder not found")
    subdirs = [root / name for name in class_folders(root)]
    if subdirs:
        files, labels = [], []
        for label, sub in enumerate(subdirs):
            found = sorted(p for p in sub.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            files += found
            labels += [label] * len(found)
        classes = [p.name for p in subdirs]
    else:
        files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        labels, classes = None, None
    if not files:
        raise DatasetError(f"{root}: no image files ({', '.join(IMAGE_SUFFIXES)}) found")
    return files, labels, classes


def stack_images(files: Sequence[Path], size: int | None) -> torch.Tensor:
    """Decode all ``files`` into one uint8 tensor; they must share a size unless ``size`` is set."""
    images = [decode_image(p, size) for p in files]
    shapes = {tuple(x.shape) for x in images}
    if len(shapes) > 1:
        raise DatasetError(f"images differ in size ({sorted(shapes)[:3]}...); set a working size")
    return torch.stack(images)


def read_image_folder(root: str | Path, size: int | None = None) -> ImageSet:
    """Any folder of images decoded into memory (see :func:`list_image_folder`)."""
    files, labels, classes = list_image_folder(root)
    label_tensor = None if labels is None else torch.tensor(labels, dtype=torch.int64)
    return ImageSet(stack_images(files, size), label_tensor, classes)


# --------------------------------------------------------------------------- Tiny ImageNet


def read_tiny_imagenet(root: str | Path, split: str = "train") -> ImageSet:
    """Tiny ImageNet (``tiny-imagenet-200/``): ``train/<wnid>/images/*.JPEG``, and ``val/`` with
    ``val_annotations.txt`` mapping file names to wnids. ``wnids.txt`` fixes the label order."""
    folder = _find_folder(Path(root), "tiny-imagenet-200", "wnids.txt")
    wnids = (folder / "wnids.txt").read_text().split()
    label_of = {w: i for i, w in enumerate(wnids)}
    if split == "train":
        files, labels = [], []
        for wnid in wnids:
            class_dir = folder / "train" / wnid / "images"
            if not class_dir.is_dir():
                raise DatasetError(f"{class_dir}: missing class folder for {wnid}")
            found = sorted(class_dir.glob("*.JPEG"))
            files += found
            labels += [label_of[wnid]] * len(found)
    elif split == "val":
        annotations = folder / "val" / "val_annotations.txt"
        if not annotations.is_file():
            raise DatasetError(f"{annotations}: file not found")
        files, labels = [], []
        for line_no, line in enumerate(annotations.read_text().splitlines(), 1):
            fields = line.split("\t")
            if len(fields) < 2 or fields[1] not in label_of:
                raise DatasetError(
                    f"{annotations}:{line_no}: expected 'file<TAB>wnid' with a "
                    f"wnid from wnids.txt, got {line!r}"
                )
            files.append(folder / "val" / "images" / fields[0])
            labels.append(label_of[fields[1]])
    else:
        raise DatasetError(f"Tiny ImageNet split must be 'train' or 'val', got {split!r}")
    if not files:
        raise DatasetError(f"{folder}: no images found for split {split!r}")
    images = stack_images(files, None)
    return ImageSet(images, torch.tensor(labels, dtype=torch.int64), wnids)
