"""Image decoding: libjpeg-turbo with DCT-domain downscaling for JPEGs, PIL for other formats.

A JPEG's 8x8 blocks can be decoded at 1/2, 1/4 or 1/8 of the image's size for much less work
than the whole image (the inverse DCT runs on fewer coefficients and there are fewer pixels to
colour-convert). Since a view needs only its box's pixels at its output size, the loader draws
the boxes first and decodes at the smallest scale at which every box keeps at least its output
size in pixels (:func:`dct_denominator`), so no view loses detail.

simplejpeg wraps libjpeg-turbo's TurboJPEG API, including that scaling; torchvision's
``decode_jpeg`` has no scaling and is slower here (``bench/data_pipeline.py``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
import simplejpeg

from contrastlab.data.errors import DatasetError

DENOMINATORS = (8, 4, 2, 1)  # the power-of-two DCT scales, smallest image first
JPEG_MAGIC = b"\xff\xd8"
TURBO_RGB = ("YCbCr", "Gray", "RGB")  # what libjpeg-turbo (and decode_jpeg) turn into RGB;
# CMYK and YCCK (Adobe's inverted conventions) go to PIL


def is_jpeg(data: bytes) -> bool:
    return data[:2] == JPEG_MAGIC


def read_bytes(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise DatasetError(f"{path}: cannot be read ({error})") from error


def image_size(path: Path, data: bytes | None = None) -> tuple[int, int]:
    """``(height, width)`` from the file's header, without decoding its pixels."""
    data = read_bytes(path) if data is None else data
    if is_jpeg(data):
        try:
            height, width, _, _ = simplejpeg.decode_jpeg_header(data)
            return int(height), int(width)
        except ValueError:
            pass  # a JPEG libjpeg-turbo's header reader refuses: let PIL say why
    with _open_pil(path, data) as image:
        return image.height, image.width


def dct_denominator(size: tuple[int, int], min_box_side: float, out_size: int) -> int:
    """The largest power-of-two ``d`` (at most 8) with ``min_box_side / d >= out_size``: decoding
    at ``1/d`` keeps every box at least ``out_size`` pixels on each side. 1 when even the
    full image is too small (the view is then upsampled, as it would be anyway)."""
    side = min(min_box_side, *size)
    for denominator in DENOMINATORS:
        if side / denominator >= out_size:
            return denominator
    return 1


def decode_rgb(
    path: Path,
    denominator: int = 1,
    data: bytes | None = None,
    out: np.ndarray | None = None,
    size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Decode to ``(h, w, 3)`` uint8 RGB at ``1 / denominator`` of the image's size
    (``h = ceil(H / d)``; JPEGs only, other formats are decoded whole).

    With ``out`` (a flat uint8 array of ``h * w * 3``), the pixels are written there (libjpeg-turbo
    decodes straight into it); ``size`` is the ``(H, W)`` the caller planned for, and a file of
    another size (changed since it was indexed) is an error naming it. Greyscale and CMYK
    JPEGs are converted to RGB; a truncated or corrupt file raises :class:`DatasetError` naming
    it (libjpeg-turbo's recoverable errors count as errors).
    """
    data = read_bytes(path) if data is None else data
    if is_jpeg(data):
        height, width, colourspace = jpeg_header(path, data)
        _check_size(path, (height, width), size)
        if colourspace in TURBO_RGB:
            try:
                return simplejpeg.decode_jpeg(
                    data,
                    "RGB",
                    min_height=math.ceil(height / denominator),
                    min_width=math.ceil(width / denominator),
                    strict=True,
                    **({} if out is None else {"buffer": out}),
                )
            except ValueError as error:
                raise DatasetError(f"{path}: not a readable JPEG ({error})") from error
    pixels = _decode_pil(path, data, denominator)
    _check_size(path, pixels.shape[:2], size, denominator)
    if out is None:
        return pixels
    out[:] = pixels.reshape(-1)
    return out.reshape(pixels.shape)


def _check_size(
    path: Path, found: tuple[int, int], planned: tuple[int, int] | None, denominator: int = 1
) -> None:
    if planned is None:
        return
    expected = tuple(math.ceil(side / denominator) for side in planned)
    if tuple(found) not in (tuple(planned), expected):
        raise DatasetError(
            f"{path}: is {found[0]}x{found[1]} pixels but was indexed as {planned[0]}x"
            f"{planned[1]}: the file changed after the folder was indexed; delete the folder's "
            ".contrastlab/index.npz to rebuild it"
        )


def jpeg_header(path: Path, data: bytes) -> tuple[int, int, str]:
    """``(height, width, colourspace)`` of a JPEG's header; an unreadable one is an error
    naming the file."""
    try:
        height, width, colourspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError as error:
        raise DatasetError(f"{path}: not a readable JPEG ({error})") from error
    return int(height), int(width), colourspace


class DecodePlan(NamedTuple):
    """How one file is decoded: its bytes, the DCT denominator, the decoded ``(h, w)``, and
    whether it is a JPEG that libjpeg-turbo (and torchvision's ``decode_jpeg``) turns into RGB
    itself."""

    data: bytes
    denominator: int
    shape: tuple[int, int]
    turbo: bool


def plan_decode(
    path: Path, size: tuple[int, int], min_box_side: float, out_size: int
) -> DecodePlan:
    """Read a file and choose how to decode it for boxes whose shortest side is
    ``min_box_side``. Only JPEGs that libjpeg-turbo converts to RGB itself are scaled (CMYK
    and other formats are decoded whole); a file whose header disagrees with the indexed
    ``size`` is an error naming it."""
    data = read_bytes(path)
    turbo = False
    if is_jpeg(data):
        height, width, colourspace = jpeg_header(path, data)
        _check_size(path, (height, width), size)
        turbo = colourspace in TURBO_RGB
    denominator = dct_denominator(size, min_box_side, out_size) if turbo else 1
    shape = (math.ceil(size[0] / denominator), math.ceil(size[1] / denominator))
    return DecodePlan(data, denominator, shape, turbo)


def decode_square(path: Path, size: int) -> np.ndarray:
    """Decode at the smallest DCT scale whose shorter side is still at least ``size`` (the
    fixed working-size path resizes it to ``size`` next)."""
    data = read_bytes(path)
    return decode_rgb(path, dct_denominator(image_size(path, data), float("inf"), size), data)


def check_image(path: Path) -> tuple[int, int]:
    """Decode the whole file once (at 1/8 scale for JPEGs: every entropy-coded byte is still
    read, so truncation is found) and return its ``(height, width)``; a file that cannot be
    decoded raises :class:`DatasetError` naming it."""
    data = read_bytes(path)
    size = image_size(path, data)
    decoded = decode_rgb(path, 8, data)
    if decoded.ndim != 3 or decoded.shape[2] != 3 or decoded.size == 0:
        raise DatasetError(f"{path}: decoded to an unexpected shape {decoded.shape}")
    return size


def _open_pil(path: Path, data: bytes):
    import io

    from PIL import Image

    try:
        return Image.open(io.BytesIO(data))
    except Exception as error:  # PIL raises several types for foreign files
        raise DatasetError(f"{path}: not a readable image ({error})") from error


def _decode_pil(path: Path, data: bytes, denominator: int) -> np.ndarray:
    try:
        with _open_pil(path, data) as image:
            if denominator > 1 and image.format == "JPEG":
                image.draft("RGB", (image.width // denominator, image.height // denominator))
            return np.array(image.convert("RGB"))  # a writable copy
    except DatasetError:
        raise
    except Exception as error:  # truncated pixel data surfaces here, at load time
        raise DatasetError(f"{path}: not a readable image ({error})") from error
