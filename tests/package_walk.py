"""The package as files: every module of ``penny_cache`` by dotted name, found without
importing anything (shared by the layering and the doc-reference tests)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "penny_cache"


@cache
def modules() -> dict[str, Path]:
    """Dotted module name -> source file, packages included (``penny_cache.redis`` is
    ``penny_cache/redis/__init__.py``)."""
    found: dict[str, Path] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def is_package(name: str) -> bool:
    """Whether ``name`` (one of ``modules()``) is a package rather than a plain module."""
    return modules()[name].name == "__init__.py"
