"""The two floors, checked on the source: no module imports one on a higher floor.

Every ``import`` and ``from ... import`` of every module counts, those inside functions too
(a lazy import is still a dependency)."""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "contrastlab"

FLOORS: list[tuple[str, tuple[str, ...]]] = [
    (
        "shared",
        (
            "contrastlab",
            "contrastlab.io",
            "contrastlab.distributed",
            "contrastlab.schedules",
            "contrastlab.optim",
            "contrastlab.options",
            "contrastlab.precision",
        ),
    ),
    (
        "parts",
        ("contrastlab.data", "contrastlab.views", "contrastlab.models", "contrastlab.negatives"),
    ),
    ("methods", ("contrastlab.methods",)),
    ("measures and runs", ("contrastlab.eval", "contrastlab.runs", "contrastlab.transfer")),
    ("recipes", ("contrastlab.presets",)),
    ("application", ("contrastlab.app", "contrastlab.__main__")),
]
"""Lowest first. A module may import its own floor and the floors below it."""


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def floor_of(name: str) -> int:
    """The floor of a module: the longest matching prefix in :data:`FLOORS`."""
    best, length = None, -1
    for level, (_, prefixes) in enumerate(FLOORS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(f"{prefix}.")) and len(prefix) > length:
                best, length = level, len(prefix)
    if best is None:
        raise AssertionError(f"{name} is on no floor: add it to FLOORS")
    return best


def imported(path: Path) -> set[str]:
    """The contrastlab modules ``path`` imports (``from a import b`` counts ``a`` and ``a.b``
    when that is a module)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                as_path = PACKAGE.parent / candidate.replace(".", "/")
                if as_path.with_suffix(".py").is_file() or (as_path / "__init__.py").is_file():
                    names.add(candidate)
    return {n for n in names if n == "contrastlab" or n.startswith("contrastlab.")}


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_no_module_imports_a_higher_floor():
    upward = []
    for path in modules():
        mine = module_name(path)
        for other in sorted(imported(path)):
            if floor_of(other) > floor_of(mine):
                upward.append(
                    f"{mine} ({FLOORS[floor_of(mine)][0]}) imports {other} "
                    f"({FLOORS[floor_of(other)][0]})"
                )
    assert not upward, "\n".join(upward)


def test_the_package_lists_the_two_floors():
    """``ls contrastlab/``: the library's packages and small shared modules, and ``app/``."""
    top = {p.name for p in PACKAGE.iterdir() if not p.name.startswith(("_", "."))}
    top.discard("configs")
    expected = {
        "app",
        "data",
        "eval",
        "methods",
        "models",
        "negatives",
        "runs",
        "transfer",
        "views",
    }
    shared = {f"{name.split('.')[-1]}.py" for name in FLOORS[0][1][1:]} | {"presets.py"}
    assert top == expected | shared


@pytest.mark.parametrize(
    ("old", "name"),
    [
        ("contrastlab.transfer", "faster_rcnn_from_export"),
        ("contrastlab.export", "torchvision_resnet"),
        ("contrastlab.export", "export_backbone"),
        ("contrastlab.training", "format_duration"),
        ("contrastlab.runs.checks", "OptionError"),
    ],
)
def test_moved_modules_still_import_with_a_warning(old, name):
    import importlib
    import sys

    sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
        value = getattr(module, name)
    assert any(issubclass(w.category, DeprecationWarning) and old in str(w.message) for w in caught)
    assert value.__module__.startswith("contrastlab.") and old not in value.__module__
