"""Every photo decodes as a viewer shows it: EXIF orientation, 16-bit images, transparency and
palettes, each against PIL's own reading of the file (``ImageOps.exif_transpose``, an
alpha composite done by hand) or against values worked out from the pixels written."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from photos import photo_pixels
from PIL import Image, ImageOps

from contrastlab.data import index as index_module
from contrastlab.data.datasets import FolderViews
from contrastlab.data.decode import (
    ALPHA_BACKGROUND,
    ORIENTATIONS,
    check_image,
    decode_rgb,
    plan_decode,
)
from contrastlab.data.index import folder_index


def save_oriented(path: Path, pixels: np.ndarray, orientation: int) -> Path:
    """A JPEG of stored ``pixels`` whose EXIF says how to turn them upright."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, "JPEG", quality=95, exif=exif)
    return path


def viewer_pixels(path: Path) -> np.ndarray:
    """What PIL shows once it applies the file's EXIF orientation: the independent reference."""
    with Image.open(path) as image:
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
def test_each_exif_orientation_decodes_upright(tmp_path, orientation):
    """A 40x72 photo stored with each of the eight orientations: the decode, its upright size
    and the index's entry all match PIL's ``exif_transpose``. Orientations 5-8 swap the sides,
    so a decoder that ignores the tag fails on the shape alone, and 2-4 on the pixels."""
    path = save_oriented(tmp_path / "photo.jpg", photo_pixels(40, 72, seed=3), orientation)
    reference = viewer_pixels(path)
    decoded = decode_rgb(path)
    assert decoded.shape == reference.shape
    assert np.abs(decoded.astype(int) - reference.astype(int)).max() <= 1
    assert check_image(path) == (reference.shape[:2], orientation)
    # told the orientation (as the index does), decoding straight into a caller's buffer
    out = np.empty(reference.size, dtype=np.uint8)
    into = decode_rgb(path, out=out, size=reference.shape[:2], orientation=orientation)
    assert np.array_equal(into, decoded) and into.base is out


def test_the_index_keeps_upright_sizes_and_rebuilds_an_old_index(tmp_path):
    """A portrait phone photo (stored landscape, orientation 6) is indexed at its upright size
    with its orientation; an index written before orientations were kept is rebuilt once."""
    save_oriented(tmp_path / "a" / "phone.jpg", photo_pixels(30, 50, seed=0), 6)
    save_oriented(tmp_path / "a" / "plain.jpg", photo_pixels(30, 50, seed=1), 1)
    index = folder_index(tmp_path, progress=False)
    assert index.sizes.tolist() == [[50, 30], [30, 50]]
    assert index.orientations.tolist() == [6, 1]
    location = tmp_path / index_module.INDEX_NAME
    with np.load(location) as saved:
        old = {key: saved[key] for key in saved.files if key != "orientations"}
    old["version"] = np.array(1)
    old["sizes"] = np.array([[30, 50], [30, 50]])  # what version 1 recorded: the stored size
    with location.open("wb") as out:
        np.savez(out, **old)
    rebuilt = folder_index(tmp_path, progress=False)
    assert rebuilt.sizes.tolist() == [[50, 30], [30, 50]]
    assert rebuilt.orientations.tolist() == [6, 1]


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_boxes_land_on_the_same_spot_after_a_scaled_decode_of_a_turned_photo(tmp_path, orientation):
    """A bright square at a known upright place in a photo whose sides are not multiples of 8,
    decoded at 1/8 by a FolderViews batch: the square's centre in the decoded pixels is where
    the mapped box says. On an axis the orientation flips, libjpeg's partial block comes
    first, which moves everything by up to 7/8 of a decoded pixel unless accounted for."""
    height, width = 201, 329  # upright; 7 and 7 pixels short of whole 8-blocks
    upright = np.full((height, width, 3), 40, dtype=np.uint8)
    top, left, side = 96, 160, 48
    upright[top : top + side, left : left + side] = 230
    turns = {1: 0, 3: 2, 6: 1, 8: 3}[orientation]  # np.rot90 turns that undo the tag
    stored = np.ascontiguousarray(np.rot90(upright, k=turns))
    path = save_oriented(tmp_path / "photo.jpg", stored, orientation)
    assert viewer_pixels(path).shape == upright.shape
    dataset = FolderViews([path], None, torch.tensor([[height, width]]), False, [orientation])
    box = torch.tensor([[top, left, side, side]])
    batch = dataset.__getitems__([(0, box, 4)])
    assert batch.shapes == [(26, 42)]  # 1/8 of the upright size, rounded up
    photo = batch.padded()[0, 0, :26, :42].double()
    weights = (photo - 40).clamp(min=0)
    rows, cols = torch.meshgrid(torch.arange(26.0), torch.arange(42.0), indexing="ij")
    centre = torch.stack([(weights * rows).sum(), (weights * cols).sum()]) / weights.sum() + 0.5
    mapped = batch.boxes[0, 0].double()
    expected = mapped[:2] + mapped[2:] / 2
    assert torch.allclose(centre, expected, atol=0.25), (centre, expected)


def test_decoding_on_the_device_turns_the_photo_upright(tmp_path):
    """decode_on_device hands the JPEG to torchvision's ``decode_jpeg`` (nvJPEG on a GPU, which
    ignores EXIF): the batch turns it upright there, as the workers do."""
    path = save_oriented(tmp_path / "photo.jpg", photo_pixels(30, 52, seed=2), 6)
    sizes = torch.tensor([[52, 30]])
    request = [(0, torch.tensor([[0, 0, 52, 30]]), 10_000)]
    on_device = FolderViews([path], None, sizes, True, [6]).__getitems__(request)
    assert on_device.encoded[0] is not None and on_device.orientations == [6]
    in_workers = FolderViews([path], None, sizes, False, [6]).__getitems__(request)
    gap = (on_device.padded().int() - in_workers.padded().int()).abs()[0, :, :52, :30].max()
    assert gap <= 1


# ------------------------------------------------------------------- 16 bits, alpha, palettes


def write_png(path: Path, pixels: np.ndarray, colour_type: int) -> Path:
    """A PNG written from the specification (signature, IHDR, one zlib IDAT, IEND): 16-bit
    greyscale (``colour_type`` 0) or RGB (2), which PIL cannot write itself."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    height, width = pixels.shape[:2]
    rows = pixels.astype(">u2").reshape(height, -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)  # filter type 0 on every row
    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


def sixteen_bit_ramp(channels: int) -> np.ndarray:
    values = np.linspace(0, 65535, 24 * 32 * channels).round().astype(np.uint16)
    return values.reshape(24, 32, channels).squeeze()


def test_a_16_bit_greyscale_png_is_scaled_not_clipped(tmp_path):
    """PIL's own ``convert("RGB")`` clips 16-bit values at 255, so nearly the whole ramp turns
    white; the decode scales by 255 / 65535."""
    ramp = sixteen_bit_ramp(1)
    path = write_png(tmp_path / "deep.png", ramp, colour_type=0)
    decoded = decode_rgb(path)
    expected = np.rint(ramp * (255 / 65535)).astype(int)
    assert decoded.shape == (24, 32, 3)
    for channel in range(3):
        assert np.abs(decoded[..., channel].astype(int) - expected).max() <= 1
    assert (decoded == 255).mean() < 0.01


def test_a_16_bit_rgb_png_keeps_its_colours(tmp_path):
    ramp = sixteen_bit_ramp(3)
    path = write_png(tmp_path / "deep_rgb.png", ramp, colour_type=2)
    decoded = decode_rgb(path).astype(int)
    assert np.abs(decoded - ramp * (255 / 65535)).max() <= 1


def composite(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``(c * a + background * (255 - a)) / 255``, by hand."""
    background = np.array(ALPHA_BACKGROUND, dtype=np.float64)
    a = alpha[..., None].astype(np.float64) / 255
    return rgb.astype(np.float64) * a + background * (1 - a)


def test_transparent_pixels_show_the_background_not_their_hidden_colour(tmp_path):
    """RGBA with red hidden under alpha 0, half and full opacity; greyscale with alpha; a
    palette image whose tRNS makes one entry transparent; RGB with a transparent colour."""
    rgb = np.zeros((8, 12, 3), dtype=np.uint8)
    rgb[..., 0] = 255  # pure red everywhere
    alpha = np.repeat(np.array([0, 128, 255], dtype=np.uint8), 4)[None].repeat(8, axis=0)
    rgba = np.concatenate([rgb, alpha[..., None]], axis=2)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    decoded = decode_rgb(tmp_path / "rgba.png").astype(int)
    assert np.abs(decoded - composite(rgb, alpha)).max() <= 1
    assert (decoded[:, :4] == ALPHA_BACKGROUND).all()

    grey = np.full((8, 12), 60, dtype=np.uint8)
    Image.fromarray(np.stack([grey, alpha], axis=2), "LA").save(tmp_path / "la.png")
    decoded = decode_rgb(tmp_path / "la.png").astype(int)
    assert np.abs(decoded - composite(np.stack([grey] * 3, axis=2), alpha)).max() <= 1

    palette = Image.new("P", (12, 8), 1)
    palette.putpalette([0, 0, 255, 0, 255, 0] + [0] * 762)
    palette.paste(0, (0, 0, 6, 8))  # left half: entry 0 (blue), made transparent
    palette.save(tmp_path / "palette.png", transparency=0)
    decoded = decode_rgb(tmp_path / "palette.png")
    assert (decoded[:, :6] == ALPHA_BACKGROUND).all() and (decoded[:, 6:] == (0, 255, 0)).all()

    Image.fromarray(rgb).save(tmp_path / "keyed.png", transparency=(255, 0, 0))
    assert (decode_rgb(tmp_path / "keyed.png") == ALPHA_BACKGROUND).all()


def test_an_opaque_palette_image_shows_its_colours(tmp_path):
    palette = Image.new("P", (6, 4), 0)
    palette.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    palette.paste(1, (3, 0, 6, 4))
    palette.save(tmp_path / "palette.png")
    decoded = decode_rgb(tmp_path / "palette.png")
    assert (decoded[:, :3] == (10, 20, 30)).all() and (decoded[:, 3:] == (200, 100, 50)).all()


def test_plan_decode_checks_the_upright_size(tmp_path):
    path = save_oriented(tmp_path / "photo.jpg", photo_pixels(30, 50, seed=0), 8)
    plan = plan_decode(path, (50, 30), 50.0, 30, orientation=8)
    assert plan.shape == (50, 30)
    with pytest.raises(Exception, match="indexed as 30x50"):
        plan_decode(path, (30, 50), 50.0, 10, orientation=8)
