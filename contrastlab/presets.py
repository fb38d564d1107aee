"""The YAML files shipped under ``contrastlab/configs``: run presets
(``<dataset>/<framework>[_<plug-ins>]``) and, under ``grids/``, the experiment grids of
``contrastlab reproduce``."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

GRIDS = "grids"


def preset_dir() -> Path:
    return Path(str(resources.files("contrastlab") / "configs"))


def list_presets() -> list[str]:
    """Every run preset's name, such as ``cifar10/mocov2`` (grids are not presets)."""
    root = preset_dir()
    names = (p.relative_to(root) for p in root.rglob("*.yaml"))
    return sorted(str(p.with_suffix("")) for p in names if p.parts[0] != GRIDS)


def preset_path(name: str) -> Path | None:
    """The file of preset ``name`` (with or without ``.yaml``), or ``None``."""
    path = preset_dir() / f"{name.removesuffix('.yaml')}.yaml"
    return path if path.is_file() and name.split("/")[0] != GRIDS else None


def list_grids() -> list[str]:
    return sorted(p.stem for p in (preset_dir() / GRIDS).glob("*.yaml"))
