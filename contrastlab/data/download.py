"""Where datasets live, and fetching the official archives when the network allows."""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from contrastlab.data.readers import DatasetError


@dataclass(frozen=True)
class Archive:
    """An official dataset archive: where to get it, its md5, and the folder it unpacks to."""

    url: str
    md5: str
    folder: str
    marker: str  # a file inside ``folder`` whose presence means "already extracted"


ARCHIVES = {
    "cifar10": Archive(
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "c58f30108f718f92721af3b95e74349a",
        "cifar-10-batches-py",
        "batches.meta",
    ),
    "cifar100": Archive(
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "eb9058c3a382ffc7106e4002c42a8d85",
        "cifar-100-python",
        "meta",
    ),
    "stl10": Archive(
        "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",
        "91f7769df0f17e558f3565bffb0c7dfb",
        "stl10_binary",
        "class_names.txt",
    ),
    "tinyimagenet": Archive(
        "http://cs231n.stanford.edu/tiny-imagenet-200.zip",
        "90528d7ca1a48142e341f4ef8d21d0de",
        "tiny-imagenet-200",
        "wnids.txt",
    ),
}


def default_root() -> Path:
    """``$CONTRASTLAB_DATA`` if set, else ``$XDG_CACHE_HOME/contrastlab`` (``~/.cache/...``)."""
    if os.environ.get("CONTRASTLAB_DATA"):
        return Path(os.environ["CONTRASTLAB_DATA"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "contrastlab"


def resolve_root(root: str | Path | None) -> Path:
    """The data root: the explicit ``root``, else :func:`default_root`."""
    return Path(root).expanduser() if root else default_root()


def is_present(root: Path, archive: Archive) -> bool:
    return (root / archive.folder / archive.marker).exists() or (root / archive.marker).exists()


def ensure_dataset(
    name: str, root: str | Path | None, download: bool = True, archive: Archive | None = None
) -> Path:
    """Return the data root holding ``name``; download and verify the archive if it is absent.

    Raises :class:`DatasetError` saying exactly where to put the files when the dataset is
    absent and cannot be downloaded (no network, or ``download=False``).
    """
    archive = archive or ARCHIVES[name]
    root = resolve_root(root)
    if is_present(root, archive):
        return root
    where = f"put the extracted {archive.url.rsplit('/', 1)[-1]} at {root / archive.folder}/"
    if not download:
        raise DatasetError(f"{name} not found under {root}: {where} (or pass --data.root)")
    try:
        fetch_and_extract(archive, root)
    except Exception as error:  # offline, HTTP error, or checksum mismatch
        raise DatasetError(
            f"{name} not found under {root} and the download from {archive.url} "
            f"failed ({error}); {where}"
        ) from error
    if not is_present(root, archive):
        raise DatasetError(f"{archive.url} did not unpack to {root / archive.folder}")
    return root


def fetch_and_extract(archive: Archive, root: Path, chunk: int = 1 << 20) -> None:
    """Stream ``archive.url`` to a temporary file (progress on stderr), check its md5, and
    unpack it into ``root``; nothing is left behind on failure."""
    from torchvision.datasets.utils import extract_archive

    root.mkdir(parents=True, exist_ok=True)
    name = archive.url.rsplit("/", 1)[-1]
    digest, done = hashlib.md5(), 0
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        target = Path(tmp) / name
        with urllib.request.urlopen(archive.url, timeout=60) as response, target.open("wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            while block := response.read(chunk):
                out.write(block)
                digest.update(block)
                done += len(block)
                if total:
                    print(
                        f"\rdownloading {name}: {100 * done / total:5.1f}%", end="", file=sys.stderr
                    )
        if total:
            print(file=sys.stderr)
        if digest.hexdigest() != archive.md5:
            raise ValueError(f"md5 {digest.hexdigest()} != expected {archive.md5}")
        extracted = Path(tmp) / "extracted"
        extract_archive(str(target), str(extracted))
        for item in extracted.iterdir():
            shutil.move(str(item), root / item.name)
