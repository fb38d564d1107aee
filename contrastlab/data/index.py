"""An image folder's index: its files, labels and image sizes, checked once and kept on disk.

Listing a 1.28M-file folder and reading every header takes minutes; every process of every run
would pay it again. :func:`folder_index` does it once, in parallel, decoding each file in full
(:func:`contrastlab.data.decode.check_image`) so a truncated or foreign file is named before
training starts instead of killing a run hours in, and writes the result next to the images
(``.contrastlab/index.npz``; under ``$CONTRASTLAB_DATA/indexes`` when the folder is read-only;
its own sub-folder, so writing it does not change the folder it describes).
Later runs and the other processes load it in a fraction of a second. Sizes are upright (EXIF
orientation applied) and each file's orientation is kept, so loading never parses EXIF again.

The index is rebuilt when a folder in it changed (a file added, removed or renamed changes its
folder's modification time); on a rebuild, files whose byte size and modification time are
unchanged keep their entry and are not decoded again. A file rewritten in place with the same
size and time is not noticed: delete the index file to force a full pass.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from contrastlab.data.decode import check_image
from contrastlab.data.errors import DatasetError
from contrastlab.data.readers import IMAGE_SUFFIXES, class_folders

INDEX_NAME = ".contrastlab/index.npz"
INDEX_VERSION = 2  # 2: upright sizes and EXIF orientations (older indexes rebuild once)
PARALLEL_FROM = 256  # smaller folders are checked in this process (a pool costs ~1 s to start)


@dataclass(frozen=True)
class FolderIndex:
    """Files (relative to ``root``), labels (``None`` for a flat folder), class names, each
    file's upright ``(height, width)`` and EXIF orientation (1-8), and the files left out as
    undecodable with their reasons."""

    root: Path
    files: list[str]
    labels: np.ndarray | None
    classes: list[str] | None
    sizes: np.ndarray
    orientations: np.ndarray
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.files)

    def paths(self) -> list[Path]:
        return [self.root / name for name in self.files]

    def label_list(self) -> list[int] | None:
        return None if self.labels is None else self.labels.tolist()


@dataclass(frozen=True)
class _Entry:
    label: int
    bytes: int
    mtime: int
    size: tuple[int, int] | None = None
    error: str | None = None
    orientation: int = 1


def folder_index(
    root: str | Path, skip_bad: bool = False, workers: int | None = None, progress: bool = True
) -> FolderIndex:
    """The index of ``root`` (class sub-folders, sorted names = labels, or a flat folder),
    loaded when fresh, else built and saved. Undecodable files raise :class:`DatasetError`
    naming every one of them, or with ``skip_bad`` are left out and listed in ``skipped``."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise DatasetError(f"{root}: image folder not found")
    saved = _load(root)
    if saved is None or not _is_fresh(root, saved):
        saved = _build(root, saved, workers, progress)
    return _finish(root, saved, skip_bad)


def _build(root: Path, saved: dict | None, workers: int | None, progress: bool) -> dict:
    """List the folder, decode the files the old index does not vouch for, save, and return
    the new index's content (as :func:`_load` returns it)."""
    listed, classes, folders = _list(root)
    known = _entries_of(saved) if saved is not None else {}
    entries, to_check = {}, []
    for name, (label, stat) in listed.items():
        old = known.get(name)
        if old is not None and (old.bytes, old.mtime) == (stat.st_size, stat.st_mtime_ns):
            entries[name] = replace(old, label=label)
        else:
            entries[name] = _Entry(label, stat.st_size, stat.st_mtime_ns)
            to_check.append(name)
    for name, (checked, error) in zip(
        to_check, _check_all(root, to_check, workers, progress), strict=True
    ):
        entry = entries[name]
        size, orientation = checked or (None, 1)
        entries[name] = _Entry(entry.label, entry.bytes, entry.mtime, size, error, orientation)
    content = _content(entries, classes, folders)
    _save(root, content)
    return _decoded(content)


def _list(root: Path) -> tuple[dict[str, tuple[int, os.stat_result]], list[str] | None, list]:
    """Every image file ``relative path -> (label, stat)``, the class names, and every folder
    walked with its modification time (the freshness signature)."""
    # the index's own folder first: creating it later would change the root's time (a
    # read-only folder keeps its index in the data cache)
    with contextlib.suppress(OSError):
        (root / INDEX_NAME).parent.mkdir(exist_ok=True)
    top = [e for e in os.scandir(root) if not e.name.startswith(".")]
    subdirs = class_folders(root)
    listed: dict[str, tuple[int, os.stat_result]] = {}
    # the root as ".": an empty name would vanish from the saved text of a flat folder's index
    folders = [(".", root.stat().st_mtime_ns)]
    if not subdirs:  # a flat folder: its own files only
        for entry in sorted(top, key=lambda e: e.name):
            if entry.is_file() and _is_image(entry.name):
                listed[entry.name] = (-1, entry.stat())
    for label, name in enumerate(subdirs):
        for folder, dirs, names in os.walk(root / name):
            dirs.sort()
            relative = os.path.relpath(folder, root).replace(os.sep, "/")
            folders.append((relative, os.stat(folder).st_mtime_ns))
            for file in sorted(names):
                if _is_image(file):
                    listed[f"{relative}/{file}"] = (label, os.stat(os.path.join(folder, file)))
    if not listed:
        raise DatasetError(f"{root}: no image files ({', '.join(IMAGE_SUFFIXES)}) found")
    return listed, subdirs or None, folders


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def _check_one(path: str) -> tuple[tuple[tuple[int, int], int] | None, str | None]:
    try:
        return check_image(Path(path)), None
    except DatasetError as error:
        return None, str(error).removeprefix(f"{path}: ")


def _check_all(root: Path, names: Sequence[str], workers: int | None, progress: bool) -> list:
    """Decode every file once, in parallel for a large folder, with a progress bar."""
    from tqdm.auto import tqdm

    paths = [str(root / name) for name in names]
    bar = tqdm(
        total=len(paths),
        desc=f"indexing {root.name}/",
        unit="file",
        disable=not progress or len(paths) < PARALLEL_FROM,
        file=sys.stderr,
    )
    workers = workers or os.cpu_count() or 1
    if len(paths) < PARALLEL_FROM or workers == 1:
        results = [_check_one(p) for p in paths]
    else:
        results = []
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for result in pool.map(_check_one, paths, chunksize=64):
                results.append(result)
                bar.update()
    bar.close()
    return results


def _finish(root: Path, saved: dict, skip_bad: bool) -> FolderIndex:
    files, errors = saved["files"], saved["errors"]
    if errors and not skip_bad:
        bad = list(errors.items())
        listing = "\n".join(f"  {root / name}: {reason}" for name, reason in bad[:20])
        more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
        raise DatasetError(
            f"{root}: {len(bad)} of {len(files)} image files cannot be decoded:\n{listing}"
            f"{more}\nFix or remove them, or set data.skip_bad_images=true to train without "
            "them."
        )
    good = np.array([name not in errors for name in files], dtype=bool) if errors else None
    if good is not None and not good.any():
        raise DatasetError(f"{root}: none of its {len(files)} image files can be decoded")
    keep = (lambda a: a[good]) if good is not None else (lambda a: a)
    names = [n for n, g in zip(files, good, strict=True) if g] if good is not None else files
    classes = saved["classes"]
    labels = keep(saved["labels"]) if classes is not None else None
    sizes, orientations = keep(saved["sizes"]), keep(saved["orientations"])
    return FolderIndex(root, names, labels, classes, sizes, orientations, list(errors.items()))


# --------------------------------------------------------------------------- the file


def index_locations(root: Path) -> list[Path]:
    """Where the index is kept: in the folder, or (read-only folders) under the data cache."""
    from contrastlab.data.download import resolve_root

    digest = hashlib.sha256(str(root).encode()).hexdigest()[:16]
    return [root / INDEX_NAME, resolve_root(None) / "indexes" / f"{root.name}-{digest}.npz"]


def _text(items: Sequence[str]) -> np.ndarray:
    return np.frombuffer("\n".join(items).encode(), dtype=np.uint8)


def _untext(array: np.ndarray) -> list[str]:
    return array.tobytes().decode().split("\n") if len(array) else []


def _content(entries: dict[str, _Entry], classes: list[str] | None, folders: list) -> dict:
    """The arrays the index file holds (text as UTF-8 bytes joined by newlines)."""
    errors = [(n, e.error) for n, e in entries.items() if e.error is not None]
    return {
        "version": np.array(INDEX_VERSION),
        "files": _text(list(entries)),
        "labels": np.array([e.label for e in entries.values()], dtype=np.int64),
        "classes": _text(classes or []),
        "flat": np.array(classes is None),
        "bytes": np.array([e.bytes for e in entries.values()], dtype=np.int64),
        "mtimes": np.array([e.mtime for e in entries.values()], dtype=np.int64),
        "sizes": np.array([e.size or (0, 0) for e in entries.values()], dtype=np.int64),
        "orientations": np.array([e.orientation for e in entries.values()], dtype=np.int8),
        "bad_files": _text([n for n, _ in errors]),
        "bad_reasons": _text([r.replace("\n", " ") for _, r in errors]),
        "folders": _text([f for f, _ in folders]),
        "folder_mtimes": np.array([t for _, t in folders], dtype=np.int64),
    }


def _save(root: Path, arrays: dict) -> None:
    for target in index_locations(root):
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
            with partial.open("wb") as out:
                np.savez(out, **arrays)
            os.replace(partial, target)  # atomic: a reader sees the old index or the new one
            return
        except OSError:
            continue
    print(f"contrastlab: could not save the index of {root} anywhere", file=sys.stderr)


def _load(root: Path) -> dict | None:
    for location in index_locations(root):
        if not location.is_file():
            continue
        try:
            with np.load(location, allow_pickle=False) as saved:
                if int(saved["version"]) != INDEX_VERSION:
                    return None
                content = {key: saved[key] for key in saved.files}
        except (OSError, ValueError, KeyError):
            return None  # unreadable or foreign: rebuild it
        return _decoded(content)
    return None


def _decoded(content: dict) -> dict:
    """The index file's arrays with its text fields as Python strings."""
    content = dict(content)
    content["files"] = _untext(content["files"])
    classes = _untext(content["classes"])
    content["classes"] = None if bool(content["flat"]) else classes
    content["errors"] = dict(
        zip(_untext(content["bad_files"]), _untext(content["bad_reasons"]), strict=True)
    )
    content["folders"] = _untext(content["folders"])
    return content


def _entries_of(saved: dict) -> dict[str, _Entry]:
    errors = saved["errors"]
    return {
        name: _Entry(
            int(label),
            int(size_bytes),
            int(mtime),
            None if name in errors else (int(hw[0]), int(hw[1])),
            errors.get(name),
            int(orientation),
        )
        for name, label, size_bytes, mtime, hw, orientation in zip(
            saved["files"],
            saved["labels"],
            saved["bytes"],
            saved["mtimes"],
            saved["sizes"],
            saved["orientations"],
            strict=True,
        )
    }


def _is_fresh(root: Path, saved: dict) -> bool:
    if len(saved["folders"]) != len(saved["folder_mtimes"]):
        return False  # written by a version that lost a flat folder's root: rebuild it
    for folder, mtime in zip(saved["folders"], saved["folder_mtimes"], strict=True):
        try:
            if (root / folder).stat().st_mtime_ns != int(mtime):
                return False
        except OSError:
            return False
    return True
