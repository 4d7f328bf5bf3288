"""Old import paths of modules that moved in 0.2, kept working for one release.

``import penny_cache.service`` (and the others below) still works: a finder on
``sys.meta_path`` answers the old name with the module at its new path, after a
``DeprecationWarning`` that names it. Nothing in the library imports an old path; the
table is data, so the layering test sees no arrow from here to the application.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from collections.abc import Sequence
from typing import Final

__all__ = ["MOVED", "install"]

# old module -> new module; removed in 0.3
MOVED: Final = {
    "penny_cache.service": "penny_cache.app.service",
    "penny_cache.launcher": "penny_cache.app.launcher",
    "penny_cache.cli": "penny_cache.app.cli",
    "penny_cache.demo": "penny_cache.app.demo",
    "penny_cache.embedded": "penny_cache.app.embedded",
    "penny_cache.exporter": "penny_cache.app.exporter",
    "penny_cache.facade": "penny_cache.default",
    "penny_cache.aio": "penny_cache",
}


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: types.ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        new = MOVED[spec.name]
        warnings.warn(
            f"{spec.name} moved to {new}; the old path goes in penny_cache 0.3",
            DeprecationWarning,
            stacklevel=2,
        )
        return importlib.import_module(new)

    def exec_module(self, module: types.ModuleType) -> None:
        """The module is the new one, already executed."""


def install() -> None:
    """Answer the old paths (idempotent: ``import penny_cache`` calls it)."""
    if not any(isinstance(finder, _MovedFinder) for finder in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
