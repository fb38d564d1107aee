"""Photo folders the tests write themselves, in the real formats and in mixed sizes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# (name, height, width, PIL mode, format): every shape and encoding a photo folder meets
PHOTO_SHAPES = [
    ("portrait", 120, 80, "RGB", "JPEG"),
    ("landscape", 72, 108, "RGB", "JPEG"),
    ("wide", 54, 96, "RGB", "JPEG"),  # 16:9
    ("square", 64, 64, "RGB", "JPEG"),
    ("small", 12, 14, "RGB", "JPEG"),  # smaller than the tests' 16-px views
    ("grey", 90, 70, "L", "JPEG"),
    ("cmyk", 70, 90, "CMYK", "JPEG"),
    ("lossless", 60, 84, "RGB", "PNG"),
]


def photo_pixels(height: int, width: int, seed: int) -> np.ndarray:
    """A smooth random photo-like image ``(H, W, 3)`` uint8 (JPEG keeps it close)."""
    coarse = np.random.default_rng(seed).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR))


def save_photo(path: Path, pixels: np.ndarray, mode: str = "RGB", fmt: str = "JPEG") -> Path:
    image = Image.fromarray(pixels)
    image = image.convert(mode) if mode != "RGB" else image
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return path


def write_photo_folder(root: Path, copies: int = 2, classes: int = 2) -> list[Path]:
    """``root/class_k/<shape>_<i>.<jpg|png>``: every shape of :data:`PHOTO_SHAPES`, ``copies``
    times per class with different pixels."""
    written = []
    for k in range(classes):
        for i in range(copies):
            for n, (name, height, width, mode, fmt) in enumerate(PHOTO_SHAPES):
                seed = (k * copies + i) * len(PHOTO_SHAPES) + n
                suffix = ".png" if fmt == "PNG" else ".jpg"
                path = root / f"class_{k}" / f"{name}_{i}{suffix}"
                written.append(save_photo(path, photo_pixels(height, width, seed), mode, fmt))
    return written


def truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path
