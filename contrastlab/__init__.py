"""contrastlab: self-supervised contrastive pretraining of image encoders.

Two floors. The library: ``data``, ``views``, ``models``, ``negatives``, ``methods``, ``eval``,
``runs`` and the small shared modules (``io``, ``distributed``, ``precision``, ``schedules``,
``options``, ``presets``). The application above it, ``contrastlab.app``: the command line and
what its sub-commands run. Modules that moved keep working under their old names for now,
with a :class:`DeprecationWarning` that names the new one (see :data:`MOVED`).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from types import ModuleType

__version__ = "0.1.0"

MOVED: dict[str, tuple[str, ...]] = {
    "contrastlab.cli": ("contrastlab.app.cli",),
    "contrastlab.training": ("contrastlab.app.fit",),
    "contrastlab.evaluate": ("contrastlab.app.evaluate",),
    "contrastlab.report": ("contrastlab.app.report",),
    "contrastlab.figures": ("contrastlab.app.figures",),
    "contrastlab.export": ("contrastlab.app.export", "contrastlab.models.exported"),
    "contrastlab.reproduce": ("contrastlab.app.reproduce",),
    "contrastlab.runs.checks": ("contrastlab.options",),
    "contrastlab.views.boxes": ("contrastlab.views.contrastive_crop",),
    "contrastlab.views.localize": ("contrastlab.views.contrastive_crop",),
}
"""Old module name -> the module(s) its names live in now (looked up in order)."""


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old name as a module that forwards every attribute to its new home."""

    def find_spec(self, fullname: str, path=None, target=None):
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        return None  # a fresh module, filled by exec_module

    def exec_module(self, module: ModuleType) -> None:
        homes = [importlib.import_module(name) for name in MOVED[module.__name__]]
        warnings.warn(
            f"{module.__name__} moved to {' and '.join(MOVED[module.__name__])}; "
            "the old name will be removed",
            DeprecationWarning,
            stacklevel=2,
        )

        def forward(name: str):
            for home in homes:
                if hasattr(home, name):
                    return getattr(home, name)
            raise AttributeError(f"module {module.__name__!r} has no attribute {name!r}")

        module.__getattr__ = forward  # PEP 562: names not set here are looked up there


if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
    sys.meta_path.append(_MovedModules())
