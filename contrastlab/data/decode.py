"""Image decoding: libjpeg-turbo with DCT-domain downscaling for JPEGs, PIL for other formats.

A JPEG's 8x8 blocks can be decoded at 1/2, 1/4 or 1/8 of the image's size for much less work
than the whole image (the inverse DCT runs on fewer coefficients and there are fewer pixels to
colour-convert). Since a view needs only its box's pixels at its output size, the loader draws
the boxes first and decodes at the smallest scale at which every box keeps at least its output
size in pixels (:func:`dct_denominator`), so no view loses detail.

simplejpeg wraps libjpeg-turbo's TurboJPEG API, including that scaling; torchvision's
``decode_jpeg`` has no scaling and is slower here (``bench/data_pipeline.py``).

Every photo comes out as a viewer shows it: its EXIF orientation applied (a portrait phone photo
stands upright, and its size is the upright one), 16-bit images scaled to 8 bits, transparent
pixels composited on :data:`ALPHA_BACKGROUND` (not their hidden colour), palettes expanded.
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
ALPHA_BACKGROUND = (255, 255, 255)  # what a transparent pixel shows: white, as a web page does
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # PIL's 16-bit greyscale modes
EXIF_ORIENTATION_TAG = 0x0112

# EXIF orientation -> (transpose, flip rows, flip columns) turning stored pixels upright, in that
# order (the tag's eight values: mirrorings and rotations by multiples of 90 degrees)
ORIENTATIONS = {
    1: (False, False, False),
    2: (False, False, True),
    3: (False, True, True),
    4: (False, True, False),
    5: (True, False, False),
    6: (True, False, True),  # stored 90 degrees anticlockwise: turn it clockwise
    7: (True, True, True),
    8: (True, True, False),
}


def is_jpeg(data: bytes) -> bool:
    return data[:2] == JPEG_MAGIC


def read_bytes(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise DatasetError(f"{path}: cannot be read ({error})") from error


def image_size(path: Path, data: bytes | None = None) -> tuple[int, int]:
    """``(height, width)`` of the stored pixels from the file's header, without decoding them
    (before the EXIF orientation: :func:`upright_size` turns it)."""
    data = read_bytes(path) if data is None else data
    if is_jpeg(data):
        try:
            height, width, _, _ = simplejpeg.decode_jpeg_header(data)
            return int(height), int(width)
        except ValueError:
            pass  # a JPEG libjpeg-turbo's header reader refuses: let PIL say why
    with _open_pil(path, data) as image:
        return image.height, image.width


def exif_orientation(path: Path, data: bytes) -> int:
    """The EXIF orientation (1-8) of an image's bytes; 1 (as stored) when there is none or it
    is not one of the eight values."""
    try:
        with _open_pil(path, data) as image:
            value = image.getexif().get(EXIF_ORIENTATION_TAG, 1)
    except Exception:  # a broken EXIF block: the pixels may still be fine, shown as stored
        return 1
    return int(value) if value in ORIENTATIONS else 1


def upright_size(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    """The ``(height, width)`` a photo of stored ``size`` has once turned by ``orientation``."""
    return (size[1], size[0]) if ORIENTATIONS[orientation][0] else (size[0], size[1])


def upright(pixels, orientation: int):
    """``(h, w, ...)`` pixels (a NumPy array or a torch tensor) turned by an EXIF
    ``orientation`` as a viewer shows them; orientation 1 returns them unchanged."""
    transpose, flip_rows, flip_columns = ORIENTATIONS[orientation]
    if transpose:
        pixels = pixels.swapaxes(0, 1)
    if isinstance(pixels, np.ndarray):
        return pixels[:: -1 if flip_rows else 1, :: -1 if flip_columns else 1]
    dims = [d for d, flip in ((0, flip_rows), (1, flip_columns)) if flip]
    return pixels.flip(dims) if dims else pixels


def grid_offsets(size: tuple[int, int], denominator: int, orientation: int) -> tuple[float, float]:
    """Where the upright photo's ``(0, 0)`` falls in its decoded pixels, per axis, in decoded
    pixels. libjpeg's ``1/d`` scale maps stored ``x`` to ``x / d`` with any partial block at the
    far edge; an axis the orientation flips puts that partial block first, so the upright
    ``x`` maps to ``(x + pad) / d``, ``pad = d * ceil(n / d) - n``."""
    _, flip_rows, flip_columns = ORIENTATIONS[orientation]
    return tuple(
        (denominator * math.ceil(n / denominator) - n) / denominator if flip else 0.0
        for n, flip in zip(size, (flip_rows, flip_columns), strict=True)
    )


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
    orientation: int | None = None,
) -> np.ndarray:
    """Decode to ``(h, w, 3)`` uint8 RGB, upright, at ``1 / denominator`` of the image's size
    (``h = ceil(H / d)``; JPEGs only, other formats are decoded whole).

    ``orientation`` is the file's EXIF orientation when the caller knows it (the folder index
    does), else it is read from the file. With ``out`` (a flat uint8 array of ``h * w * 3``), the
    pixels are written there (libjpeg-turbo decodes straight into it when the photo is stored
    upright); ``size`` is the upright ``(H, W)`` the caller planned for, and a file of another
    size (changed since it was indexed) is an error naming it. Greyscale, CMYK, 16-bit, palette
    and transparent images are converted as the module says; a truncated or corrupt file raises
    :class:`DatasetError` naming it (libjpeg-turbo's recoverable errors count as errors).
    """
    data = read_bytes(path) if data is None else data
    orientation = exif_orientation(path, data) if orientation is None else orientation
    pixels = None
    if is_jpeg(data):
        height, width, colourspace = jpeg_header(path, data)
        _check_size(path, upright_size((height, width), orientation), size)
        if colourspace in TURBO_RGB:
            direct = out is not None and orientation == 1
            try:
                pixels = simplejpeg.decode_jpeg(
                    data,
                    "RGB",
                    min_height=math.ceil(height / denominator),
                    min_width=math.ceil(width / denominator),
                    strict=True,
                    **({"buffer": out} if direct else {}),
                )
            except ValueError as error:
                raise DatasetError(f"{path}: not a readable JPEG ({error})") from error
            if direct:
                return pixels
    if pixels is None:
        pixels = _decode_pil(path, data, denominator)
    pixels = upright(pixels, orientation)
    _check_size(path, pixels.shape[:2], size, denominator)
    if out is None:
        return np.ascontiguousarray(pixels)
    shaped = out.reshape(pixels.shape)
    shaped[:] = pixels
    return shaped


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
    offset: tuple[float, float] = (0.0, 0.0)  # :func:`grid_offsets`


def plan_decode(
    path: Path, size: tuple[int, int], min_box_side: float, out_size: int, orientation: int = 1
) -> DecodePlan:
    """Read a file and choose how to decode it for boxes whose shortest side is
    ``min_box_side``. Only JPEGs that libjpeg-turbo converts to RGB itself are scaled (CMYK
    and other formats are decoded whole); ``size`` is the indexed upright size, and a file
    whose header disagrees with it is an error naming it."""
    data = read_bytes(path)
    turbo = False
    if is_jpeg(data):
        height, width, colourspace = jpeg_header(path, data)
        _check_size(path, upright_size((height, width), orientation), size)
        turbo = colourspace in TURBO_RGB
    denominator = dct_denominator(size, min_box_side, out_size) if turbo else 1
    shape = (math.ceil(size[0] / denominator), math.ceil(size[1] / denominator))
    offset = grid_offsets(size, denominator, orientation)
    return DecodePlan(data, denominator, shape, turbo, offset)


def decode_square(path: Path, size: int) -> np.ndarray:
    """Decode at the smallest DCT scale whose shorter side is still at least ``size`` (the
    fixed working-size path resizes it to ``size`` next)."""
    data = read_bytes(path)
    return decode_rgb(path, dct_denominator(image_size(path, data), float("inf"), size), data)


def check_image(path: Path) -> tuple[tuple[int, int], int]:
    """Decode the whole file once (at 1/8 scale for JPEGs: every entropy-coded byte is still
    read, so truncation is found) and return its upright ``(height, width)`` and EXIF
    orientation; a file that cannot be decoded raises :class:`DatasetError` naming it."""
    data = read_bytes(path)
    orientation = exif_orientation(path, data)
    size = upright_size(image_size(path, data), orientation)
    decoded = decode_rgb(path, 8, data, orientation=orientation)
    if decoded.ndim != 3 or decoded.shape[2] != 3 or decoded.size == 0:
        raise DatasetError(f"{path}: decoded to an unexpected shape {decoded.shape}")
    return size, orientation


def _open_pil(path: Path, data: bytes):
    import io

    from PIL import Image

    try:
        return Image.open(io.BytesIO(data))
    except Exception as error:  # PIL raises several types for foreign files
        raise DatasetError(f"{path}: not a readable image ({error})") from error


def _decode_pil(path: Path, data: bytes, denominator: int) -> np.ndarray:
    """The stored pixels as ``(h, w, 3)`` uint8 RGB (not yet turned upright)."""
    try:
        with _open_pil(path, data) as image:
            if denominator > 1 and image.format == "JPEG":
                image.draft("RGB", (image.width // denominator, image.height // denominator))
            return _rgb(image)
    except DatasetError:
        raise
    except Exception as error:  # truncated pixel data surfaces here, at load time
        raise DatasetError(f"{path}: not a readable image ({error})") from error


def _rgb(image) -> np.ndarray:
    """A PIL image as 8-bit RGB: 16-bit greyscale scaled by ``255 / 65535`` (PIL's own
    conversion clips it, so most of a 16-bit photo turns white), palettes expanded, and any
    transparency composited on :data:`ALPHA_BACKGROUND`."""
    from PIL import Image

    if image.mode in SIXTEEN_BIT_MODES:
        grey = np.asarray(image, dtype=np.float64) * (255 / 65535)
        grey = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
        image = Image.alpha_composite(background, rgba)
    return np.array(image.convert("RGB"))  # a writable copy
