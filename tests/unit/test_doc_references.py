"""Docstrings and docs that stay true: every reference to our code resolves.

A reference is a dotted name in code markup: ``double backticks`` in the package's
docstrings, `backticks` in the Markdown docs (fenced blocks left out), and any
``penny_cache.``-prefixed name in the operations files (deploy/, grafana/). It is ours, and
so must resolve, when its first part is ``penny_cache``, the dotted tail of a module of the
package (``scripts.FILL`` is ``penny_cache.redis.scripts.FILL``; ``redis.backend``), a class
defined in the package (``PersonalityCache.set``), or a module name the package no longer
has (``redis_backend``, ``facade``: always stale). ``name.py`` must be a module file of the
package, and ``folder/name.py`` a file of it. Resolving imports the longest module prefix
and takes the rest as attributes. Names that are not ours (``threading.Event``,
``obj.after_fork()``) are left alone. A local variable named like a module is read as the
module: ``cache.get`` is ``penny_cache.cache.get`` and refused (write
``PersonalityCache.get``). A first part that is both one of our short names and a library
we import (``redis``) may resolve in either. Old paths kept by ``penny_cache._moved`` are
stale here: the docs name the new ones.

Paths written as ``penny_cache/...`` anywhere in the docs, deploy files, dashboards, bench
and the package must exist.
"""

from __future__ import annotations

import ast
import importlib
import re
from collections import defaultdict
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Final, NamedTuple

import pytest

from penny_cache import _moved
from tests.package_walk import PACKAGE, ROOT, is_package, modules

# Modules of the flat layout that 0.2 removed or renamed: a reference to one is stale.
RETIRED: Final = frozenset(
    {
        "aio",
        "facade",
        "invalidation",
        "policy_writes",
        "process_metrics",
        "redis_async",
        "redis_backend",
        "redis_boundary",
        "redis_clients",
        "redis_cluster",
        "stats",
        "store_outbox",
        "store_schema",
    }
)
# Retired names also common as words (``stats`` of a cache): stale only when dotted.
RETIRED_WORDS: Final = frozenset({"invalidation", "stats"})
# A dotted token ending in one of these is a file name (`redis.conf`), not a reference.
FILE_SUFFIXES: Final = frozenset(
    {"cfg", "conf", "db", "html", "ini", "json", "lua", "md", "sh", "toml", "txt", "yaml", "yml"}
)
MARKDOWN: Final = (
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    *sorted((ROOT / "docs" / "runbooks").glob("*.md")),
    *sorted((ROOT / "deploy").rglob("*.md")),
)
OPERATIONS: Final = tuple(
    path
    for folder in ("deploy", "grafana")
    for path in sorted((ROOT / folder).rglob("*"))
    if path.is_file() and path.suffix != ".md"
)
PATH_SOURCES: Final = (
    ROOT / "README.md",
    ROOT / "Makefile",
    ROOT / "pyproject.toml",
    *sorted((ROOT / ".ci").rglob("*")),
    *sorted((ROOT / "docs").rglob("*")),
    *sorted((ROOT / "deploy").rglob("*")),
    *sorted((ROOT / "grafana").rglob("*")),
    *sorted((ROOT / "bench").rglob("*.py")),
    *sorted((ROOT / "penny_cache").rglob("*.py")),
)

FILE_PATH: Final = re.compile(r"[\w.-]+(?:/[\w.-]+)+")
DOTTED: Final = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")
FENCE: Final = re.compile(r"^[ \t]*(```|~~~).*?^[ \t]*\1", re.DOTALL | re.MULTILINE)
INLINE: Final = re.compile(r"(`+)([^`]+?)\1")
DOUBLE: Final = re.compile(r"``([^`]+?)``")
PREFIXED: Final = re.compile(r"(?<![\w.])penny_cache(?:\.[A-Za-z_]\w*)+")
PACKAGE_PATH: Final = re.compile(r"(?<![\w/.-])penny_cache/[\w./-]*")


class Reference(NamedTuple):
    """One code-markup token, where it is written, and the folder its paths start from."""

    where: str
    text: str
    base: Path = PACKAGE


@cache
def short_names() -> dict[str, tuple[str, ...]]:
    """Every dotted tail of every module -> the modules it may name (``exporter`` is both
    ``penny_cache.observe.exporter`` and ``penny_cache.app.exporter``)."""
    names: defaultdict[str, list[str]] = defaultdict(list)
    for module in modules():
        parts = module.split(".")
        for start in range(len(parts)):
            names[".".join(parts[start:])].append(module)
    return {name: tuple(found) for name, found in names.items()}


@cache
def class_homes() -> dict[str, tuple[str, ...]]:
    """Class name -> the modules that define it at top level."""
    homes: defaultdict[str, list[str]] = defaultdict(list)
    for module, path in modules().items():
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ClassDef):
                homes[node.name].append(module)
    return {name: tuple(found) for name, found in homes.items()}


@cache
def libraries() -> frozenset[str]:
    """Top-level names of what the package imports from outside itself (``redis``)."""
    found: set[str] = set()
    for path in modules().values():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.add(node.module.split(".")[0])
    return frozenset(found - {"penny_cache"})


def _attribute_chain(module: str, rest: list[str]) -> bool:
    try:
        obj: object = importlib.import_module(module)
    except ImportError:
        return False
    for name in rest:
        if not hasattr(obj, name):
            return False
        obj = getattr(obj, name)
    return True


def _third_party(parts: list[str]) -> bool:
    for cut in range(len(parts), 0, -1):
        try:
            importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        return _attribute_chain(".".join(parts[:cut]), parts[cut:])
    return False


def judge(text: str, base: Path = PACKAGE) -> str | None:
    """None when ``text`` is not ours or resolves; otherwise why it is stale. A relative
    path is read from ``base`` (the package for a docstring, a Markdown file's folder)."""
    text = text.strip().removesuffix("()")
    if FILE_PATH.fullmatch(text):
        return _judge_path(text, base)
    if not DOTTED.fullmatch(text):
        return None
    parts = text.split(".")
    if parts[-1] in FILE_SUFFIXES:
        return None
    if parts[-1] == "py" and len(parts) > 1:
        return _judge_file(".".join(parts[:-1]))
    if len(parts) == 1:
        return "a module the package no longer has" if text in RETIRED - RETIRED_WORDS else None
    return _judge_dotted(parts)


def _judge_path(text: str, base: Path) -> str | None:
    """``redis/boundary.py`` or ``penny_cache/redis/boundary.py``: a path that exists next
    to the text (``base``), in the checkout or in the package; stale if it names a folder
    of the package and exists nowhere."""
    if any((where / text).exists() for where in (base, ROOT, PACKAGE)):
        return None
    first = text.split("/", maxsplit=1)[0]
    if first == "penny_cache" or (PACKAGE / first).is_dir():
        return "no such file in the package"
    return None  # not ours (tests/..., deploy/...: the path test's job)


def _judge_file(name: str) -> str | None:
    if name.split(".", maxsplit=1)[0] in RETIRED:
        return "a module file the package no longer has"
    homes = short_names().get(name)
    if homes is None:
        return None  # not ours (test_cli.py, setup.py)
    if all(is_package(home) for home in homes):
        return f"{name} is a folder now, not a file"
    return None


def _our_homes(parts: list[str]) -> list[tuple[str, list[str]]]:
    """Where ``parts`` may live in the package: (module, attributes to take from it), for
    every dotted prefix naming a module and for a first part naming one of our classes."""
    homes = [
        (module, parts[cut:])
        for cut in range(len(parts), 0, -1)
        for module in short_names().get(".".join(parts[:cut]), ())
    ]
    homes += [(module, parts) for module in class_homes().get(parts[0], ())]
    return homes


def _judge_dotted(parts: list[str]) -> str | None:
    text = ".".join(parts)
    for old, new in _moved.MOVED.items():
        if text == old or text.startswith(old + "."):
            return f"old path kept only for compatibility: write {new}"
    if parts[0] in RETIRED:
        return "a module the package no longer has"
    homes = _our_homes(parts)
    if not homes or any(_attribute_chain(module, rest) for module, rest in homes):
        return None
    if parts[0] in libraries() and _third_party(parts):
        return None
    return "does not resolve to an object of the package"


# --- where references are written ----------------------------------------------------------


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def docstring_references() -> Iterator[Reference]:
    """Double-backtick tokens in every module, class and function docstring."""
    for module, path in modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(
                node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef
            ):
                continue
            doc = ast.get_docstring(node, clean=False)
            if doc:
                start = node.body[0].lineno
                for match in DOUBLE.finditer(doc):
                    line = start + doc.count("\n", 0, match.start())
                    yield Reference(f"{_rel(path)}:{line} ({module})", match.group(1))


def inline_spans(markdown: str) -> Iterator[tuple[int, str]]:
    """(line number, text) of each inline code span, fenced blocks left out."""
    # blank the fenced blocks out, keeping their lines so the numbers stay right
    text = FENCE.sub(lambda block: "\n" * block.group(0).count("\n"), markdown)
    for number, line in enumerate(text.splitlines(), start=1):
        for match in INLINE.finditer(line):
            yield number, match.group(2)


def markdown_references() -> Iterator[Reference]:
    """Inline code spans of the Markdown docs, outside fenced blocks."""
    for path in MARKDOWN:
        for number, text in inline_spans(path.read_text(encoding="utf-8")):
            yield Reference(f"{_rel(path)}:{number}", text, path.parent)


def operations_references() -> Iterator[Reference]:
    """``penny_cache.``-prefixed names in the deploy files and dashboards."""
    for path in OPERATIONS:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(text.splitlines(), start=1):
            for match in PREFIXED.finditer(line):
                yield Reference(f"{_rel(path)}:{number}", match.group(0))


def stale(references: Iterator[Reference]) -> list[str]:
    return [
        f"{ref.where}: {ref.text!r}: {why}"
        for ref in references
        if (why := judge(ref.text, ref.base)) is not None
    ]


# --- the judge itself ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "penny_cache.redis.scripts.FILL",
        "scripts.FILL",
        "redis.backend.RedisBackend",
        "penny_cache.redis.commands.Commands.plan",
        "PersonalityCache.set",
        "exporter.RedisCountersCollector",  # observe/exporter, not app/exporter
        "exporter.serve",  # app/exporter
        "redis.Redis",  # redis-py: a library the package imports
        "scripts.py",
        "threading.Event",  # not ours
        "obj.after_fork()",  # not ours
        "redis.conf",  # a file
        "penny_cache",
        "redis/boundary.py",
        "penny_cache/store/database.py",
        "tests/unit/test_codec.py",  # not the package's: test_package_paths_exist's job
    ],
)
def test_judge_accepts(text: str) -> None:
    """References that name a real object of the package (or are not ours) pass."""
    assert judge(text) is None


@pytest.mark.parametrize(
    "text",
    [
        "scripts.SET_IF_NEWER",
        "penny_cache.process_metrics",
        "redis_backend.ErrorBoundary",
        "redis_backend.py",
        "policy.py",
        "policy.drive",
        "policy_writes",
        "penny_cache.facade.get_cache",
        "penny_cache.aio",
        "cache.get",
        "PersonalityCache.no_such_method",
        "redis/redis_backend.py",
        "penny_cache/process_metrics.py",
    ],
)
def test_judge_refuses(text: str) -> None:
    """Stale references are caught: moved names, retired modules, old paths kept by
    ``_moved``, a folder written as a file, a method that does not exist."""
    assert judge(text) is not None


def test_markdown_spans_skip_fenced_blocks() -> None:
    """The Markdown scanner reads inline spans (single or double backticks) with their
    line numbers and skips fenced blocks, indented ones in lists included."""
    markdown = (
        "See `scripts.FILL` and ``cache.py``.\n"
        "```python\n"
        "cache.get(`not a span`)\n"
        "```\n"
        "1. step\n"
        "   ```sh\n"
        "   echo `also not`\n"
        "   ```\n"
        "Then `redis.backend.RedisBackend`.\n"
    )
    assert list(inline_spans(markdown)) == [
        (1, "scripts.FILL"),
        (1, "cache.py"),
        (9, "redis.backend.RedisBackend"),
    ]


# --- the package and its docs -------------------------------------------------------------


def test_docstring_references_resolve() -> None:
    """Every ``module.Name`` written in double backticks in a docstring of the package
    names an object that exists, at its current path."""
    found = stale(docstring_references())
    assert not found, "stale references in docstrings:\n" + "\n".join(found)


def test_markdown_references_resolve() -> None:
    """Every backticked reference to the package in README.md, docs/ and deploy/ Markdown
    names an object or module file that exists, at its current path."""
    found = stale(markdown_references())
    assert not found, "stale references in the docs:\n" + "\n".join(found)


def test_operations_files_name_current_modules() -> None:
    """Every ``penny_cache.`` name in deploy/ and grafana/ (comments, panel descriptions)
    resolves at its current path."""
    found = stale(operations_references())
    assert not found, "stale references in deploy/ and grafana/:\n" + "\n".join(found)


def test_package_paths_exist() -> None:
    """Every ``penny_cache/...`` path written in the docs, deploy files, dashboards, bench,
    Makefile, CI script or the package itself exists in the checkout."""
    missing = []
    for path in PATH_SOURCES:
        if not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(text.splitlines(), start=1):
            for match in PACKAGE_PATH.finditer(line):
                written = match.group(0).rstrip(".,;:)")
                if not (ROOT / written).exists():
                    missing.append(f"{_rel(path)}:{number}: {written}")
    assert not missing, "paths that do not exist:\n" + "\n".join(missing)
