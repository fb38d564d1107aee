"""Files that survive crashes: atomic writes, and loads that run no code from the file."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

TEMPORARY_SUFFIX = ".tmp"


def stage_file(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Phase one of an atomic write: ``write(f)`` into a hidden temporary file beside ``path``
    (``.<name>.<random>.tmp``), flushed and fsynced. Nothing at ``path`` changes; a crash
    leaves at most the temporary, which :func:`remove_stale_temporaries` clears later."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX, dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def commit_file(staged: str | Path, path: str | Path) -> Path:
    """Phase two: rename the staged file over ``path`` (atomic) and fsync the folder, so
    ``path`` holds either the old or the new bytes, never a mix."""
    path = Path(path)
    os.replace(staged, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return path


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(f)`` on a temporary file in ``path``'s folder, fsync it, then rename it over
    ``path``: a crash mid-write leaves the previous file intact and no temporary behind."""
    return commit_file(stage_file(path, write), path)


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` through :func:`atomic_write`."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporaries that a killed :func:`stage_file` left in ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.glob(f".*{TEMPORARY_SUFFIX}") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def load_tensors(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)`` onto the CPU, with a clear error if absent."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"not found: {path}")
    return torch.load(path, map_location="cpu", weights_only=True)


def load_state(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a ``.safetensors`` file or a torch file (:func:`load_tensors`)."""
    if Path(path).suffix != ".safetensors":
        return load_tensors(path)
    if not Path(path).is_file():
        raise FileNotFoundError(f"not found: {path}")
    from safetensors.torch import load_file

    return load_file(str(path), device="cpu")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
