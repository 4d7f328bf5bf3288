"""The package drawn by its imports: no cycle, arrows one way, drivers in their rooms.

The imports are read with ``ast`` from the source, so an import hidden inside a function or
under ``if TYPE_CHECKING:`` counts like one at the top of the module. An edge goes to the
module an import names (``from penny_cache.redis import scripts`` is an edge to
``penny_cache.redis.scripts``); the parent packages' ``__init__`` that Python runs on the
way are not edges, or every module would reach the root ``__init__`` and so everything.

The layers, lowest first (a module may import its own layer and the ones below it)::

    vocabulary  config, settings_env, errors, catalogue, state, user_ids, codec, keys, forks,
                values, signing (root modules)
    observe     penny_cache/observe/
    policy      penny_cache/policy/
    transport   penny_cache/redis/ | penny_cache/store/   (side by side: never each other)
    faces       cache, tracker, tracking, wiring, default, personality_state_cache, _moved, penny,
                and the package's own __init__
    app         penny_cache/app/   (the library never imports it)
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from functools import cache
from itertools import pairwise
from pathlib import Path
from typing import Final, NamedTuple

import pytest

from penny_cache import _moved
from tests.package_walk import ROOT, is_package, modules

VOCABULARY: Final = frozenset(
    {
        "config",
        "settings_env",
        "errors",
        "catalogue",
        "state",
        "user_ids",
        "codec",
        "keys",
        "forks",
        "values",
        "signing",
    }
)
FACES: Final = frozenset(
    {
        "cache",
        "tracker",
        "tracking",
        "wiring",
        "default",
        "personality_state_cache",
        "_moved",
        "penny",
        "admin",
    }
)
# folder -> (rank, group); a group may import itself and any lower rank.
FOLDERS: Final = {
    "observe": (1, "observe"),
    "policy": (2, "policy"),
    "redis": (3, "redis"),
    "store": (3, "store"),
    "app": (5, "app"),
}

# third-party top-level module -> the only folders (as module prefixes) that may import it
DRIVERS: Final = {
    "redis": ("penny_cache.redis", "penny_cache.app"),
    "sqlalchemy": ("penny_cache.store",),
    "fastapi": ("penny_cache.app",),
    "uvicorn": ("penny_cache.app",),
    "starlette": ("penny_cache.app",),
    "pydantic": ("penny_cache.app",),
    "fastapi_offline": ("penny_cache.app",),
}
SERVICE_EXTRA: Final = ("fastapi", "uvicorn", "starlette", "pydantic", "fastapi_offline")


class Import(NamedTuple):
    """One name an ``import``/``from`` statement brings in, absolute: ``target`` is
    ``a.b`` for ``from a import b`` (a module or a name in ``a``), ``module`` is ``a``."""

    source: str
    line: int
    module: str
    target: str


class Layer(NamedTuple):
    rank: int
    group: str


def layer_of(module: str) -> Layer:
    """The layer of one module of the package; ``KeyError`` for a module no rule places."""
    parts = module.split(".")
    if parts == ["penny_cache"]:
        return Layer(4, "faces")
    if parts[1] in FOLDERS:
        return Layer(*FOLDERS[parts[1]])
    if len(parts) == 2 and parts[1] in VOCABULARY:
        return Layer(0, "vocabulary")
    if len(parts) == 2 and parts[1] in FACES:
        return Layer(4, "faces")
    raise KeyError(module)


def may_import(source: str, target: str) -> bool:
    """Whether ``source`` may import ``target``: its own group, or a lower layer."""
    mine, theirs = layer_of(source), layer_of(target)
    return theirs.group == mine.group or theirs.rank < mine.rank


def _package_of(module: str, *, package: bool) -> str:
    return module if package else module.rpartition(".")[0]


def imports_in(module: str, source: str, *, package: bool = False) -> Iterator[Import]:
    """Every name ``source`` imports, wherever the statement is (functions, class bodies,
    ``if TYPE_CHECKING:``), with relative imports made absolute."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, node.lineno, alias.name, alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = _package_of(module, package=package)
                for _ in range(node.level - 1):
                    anchor = anchor.rpartition(".")[0]
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                yield Import(module, node.lineno, base, f"{base}.{alias.name}")


@cache
def all_imports() -> tuple[Import, ...]:
    """The imports of every module of the package, as written."""
    return tuple(
        found
        for name, path in modules().items()
        for found in imports_in(name, path.read_text(encoding="utf-8"), package=is_package(name))
    )


def imported_module(imp: Import) -> str:
    """The module an import reaches: ``a.b`` when that is a module of ours, else ``a``."""
    return imp.target if imp.target in modules() else imp.module


def package_graph(found: Sequence[Import]) -> dict[str, dict[str, Import]]:
    """Module -> the modules of ours it imports (each with one statement that does)."""
    ours = modules()
    graph: dict[str, dict[str, Import]] = {name: {} for name in ours}
    for imp in found:
        target = imported_module(imp)
        if target in ours:
            graph[imp.source].setdefault(target, imp)
    return graph


def reachable(graph: Mapping[str, Mapping[str, object]], start: str) -> set[str]:
    """Every module ``start`` reaches through one or more imports."""
    seen: set[str] = set()
    todo = list(graph.get(start, {}))
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(graph.get(node, {}))
    return seen


def cycles(graph: Mapping[str, Mapping[str, object]]) -> list[list[str]]:
    """The groups of modules that reach each other (a module importing itself included),
    each sorted; empty when the graph has no cycle."""
    reach = {node: reachable(graph, node) for node in graph}
    found: list[list[str]] = []
    for node in sorted(graph):
        if node in reach[node]:
            group = sorted(m for m in reach[node] if node in reach.get(m, set()))
            if group not in found:
                found.append(group)
    return found


def _where(imp: Import) -> str:
    return f"{modules()[imp.source].relative_to(ROOT)}:{imp.line}"


# --- the walker itself: it must see what it claims to see --------------------------------


def test_walker_sees_imports_in_functions_type_checking_and_relative_forms() -> None:
    """The import walker finds imports inside functions and under TYPE_CHECKING, resolves
    relative imports against the right package, and spells ``from a import b`` as ``a.b``:
    a blind walker would let every other test here pass for nothing."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from penny_cache.cache import PersonalityCache\n"
        "def late():\n"
        "    import penny_cache.app.service\n"
        "    from . import scripts\n"
        "    from ..store import database\n"
    )
    found = {imported_module(imp) for imp in imports_in("penny_cache.redis.backend", source)}
    assert found == {
        "typing",
        "penny_cache.cache",
        "penny_cache.app.service",
        "penny_cache.redis.scripts",
        "penny_cache.store.database",
    }
    in_package = imports_in("penny_cache.redis", source, package=True)
    assert "penny_cache.redis.scripts" in {imported_module(imp) for imp in in_package}


def test_cycle_finder_and_layer_rule_catch_a_planted_fault() -> None:
    """The cycle finder reports a planted two-module cycle and the layer rule refuses an
    upward arrow and an arrow between redis and store, so a clean result means something."""
    planted = {"a": {"b": None}, "b": {"a": None}, "c": {"a": None}}
    assert cycles(planted) == [["a", "b"]]
    assert cycles({"a": {"a": None}}) == [["a"]]
    assert shortest_cycle(planted, "a") == ["a", "b", "a"]
    assert not may_import("penny_cache.policy.reads", "penny_cache.cache")
    assert not may_import("penny_cache.redis.backend", "penny_cache.store.database")
    assert not may_import("penny_cache.store.outbox", "penny_cache.redis.scripts")
    assert may_import("penny_cache.redis.backend", "penny_cache.policy.ops")
    assert may_import("penny_cache.tracker", "penny_cache.default")


# --- the package ------------------------------------------------------------------------


def test_every_module_has_a_layer() -> None:
    """Every module of the package is placed by the layer rules: a new root module or
    folder must be given a layer here before the other tests can judge it."""
    unplaced = []
    for name in modules():
        try:
            layer_of(name)
        except KeyError:
            unplaced.append(name)
    assert not unplaced, f"modules with no layer (add them to test_layers.py): {unplaced}"


def test_every_folder_says_its_job() -> None:
    """Every package folder opens its ``__init__.py`` with a docstring: its one job."""
    silent = [
        name
        for name in modules()
        if is_package(name)
        and not ast.get_docstring(ast.parse(modules()[name].read_text(encoding="utf-8")))
    ]
    assert not silent, f"packages without a docstring saying their job: {silent}"


def shortest_cycle(graph: Mapping[str, Mapping[str, object]], start: str) -> list[str]:
    """One shortest path from ``start`` back to itself (breadth first), for the message."""
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for nxt in graph.get(node, {}):
            if nxt == start:
                return [*paths[node], start]
            if nxt not in paths:
                paths[nxt] = [*paths[node], nxt]
                queue.append(nxt)
    return []


def test_no_import_cycle() -> None:
    """No two modules of the package reach each other through their imports, counting
    imports inside functions and under TYPE_CHECKING."""
    graph = package_graph(all_imports())
    found = cycles(graph)
    detail = []
    for component in found:
        path = shortest_cycle(graph, component[0])
        detail.append(
            " -> ".join(path) + "\n    " + ", ".join(_where(graph[a][b]) for a, b in pairwise(path))
        )
    assert not found, "import cycles:\n" + "\n".join(detail)


def test_layers_point_one_way() -> None:
    """Every import points to the module's own layer or a lower one: vocabulary < observe
    < policy < redis | store < faces < app, and redis and store never import each other."""
    upward = [
        f"{_where(imp)}: {imp.source} ({layer_of(imp.source).group}) -> "
        f"{target} ({layer_of(target).group})"
        for source, edges in package_graph(all_imports()).items()
        for target, imp in edges.items()
        if not may_import(source, target)
    ]
    assert not upward, "imports that point back up:\n" + "\n".join(upward)


def test_library_never_imports_the_application_statically() -> None:
    """No module outside ``penny_cache/app/`` names ``penny_cache.app`` in an import."""
    offenders = [
        f"{_where(imp)}: {imp.target}"
        for imp in all_imports()
        if not imp.source.startswith("penny_cache.app")
        and (imported_module(imp) + ".").startswith("penny_cache.app.")
    ]
    assert not offenders, "the library imports the application:\n" + "\n".join(offenders)


@pytest.mark.parametrize("driver", sorted(DRIVERS))
def test_drivers_are_imported_only_in_their_folder(driver: str) -> None:
    """redis-py is imported only under penny_cache/redis/ (and app/), SQLAlchemy only under
    penny_cache/store/, the HTTP stack of the ``[service]`` extra only under app/."""
    allowed = DRIVERS[driver]
    offenders = [
        f"{_where(imp)}: {imp.source} imports {imp.target}"
        for imp in all_imports()
        if imp.module.split(".")[0] == driver
        and not any(imp.source == p or imp.source.startswith(p + ".") for p in allowed)
    ]
    assert not offenders, f"{driver} outside {allowed}:\n" + "\n".join(offenders)


# --- at run time --------------------------------------------------------------------------

_LIBRARY_ONLY: Final = """
import importlib, json, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] == "penny_cache")))
"""


def _run(code: str, *args: str, env: Mapping[str, str] | None = None) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        env=dict(env) if env is not None else None,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr or done.stdout
    return done.stdout


def test_importing_the_whole_library_loads_no_application_module() -> None:
    """Importing every library module (all but ``penny_cache.app``) in a fresh interpreter
    leaves no ``penny_cache.app`` module loaded: no dynamic or hidden import reaches it."""
    library = [name for name in modules() if not name.startswith("penny_cache.app")]
    loaded = json.loads(_run(_LIBRARY_ONLY, *library).splitlines()[-1])
    assert set(library) <= set(loaded)
    assert not [name for name in loaded if name.startswith("penny_cache.app")]


_WITHOUT_SERVICE_EXTRA: Final = """
import contextlib, importlib.abc, io, json, os, sys

BLOCKED = frozenset(sys.argv[1].split(","))


class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname.split(".")[0] in BLOCKED:
            raise ImportError(f"{fullname} is not installed (the [service] extra)")
        return None


sys.meta_path.insert(0, Blocked())
try:
    import fastapi  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("the blocker let fastapi through")

from penny_cache.app import cli
from penny_cache.app.exporter import registry_for_settings, serve
from penny_cache.config import Settings

report = {}
with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(out):
    try:
        cli.main(["--help"])
    except SystemExit as exc:
        report["help"] = exc.code
    report["check"] = cli.main(["check"])
    report["stats"] = cli.main(["stats"])
    settings = Settings.from_env(os.environ)
    registry, close = registry_for_settings(settings, "test")
    serve(registry, "127.0.0.1", 0).server_close()
    report["up"] = registry.get_sample_value("penny_cache_up", {"namespace": settings.namespace})
    close()
report["output"] = out.getvalue()
report["loaded"] = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
print(json.dumps(report))
"""


def test_stats_check_and_exporter_need_no_service_extra(tmp_path: Path) -> None:
    """With fastapi, uvicorn, starlette and pydantic unimportable, ``penny-cache --help``,
    ``check``, ``stats`` and the exporter (registry, collection, HTTP server) all run; the
    Redis they are given refuses connections, so each reports that rather than an
    ImportError."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PENNY_")}
    env |= {
        "PENNY_REDIS_URL": "redis://127.0.0.1:1/0",
        "PENNY_REDIS_TIMEOUT": "0.2",
        "PENNY_DATABASE_URL": f"sqlite:///{tmp_path / 'check.db'}",
    }
    out = _run(_WITHOUT_SERVICE_EXTRA, ",".join(SERVICE_EXTRA), env=env)
    report = json.loads(out.splitlines()[-1])
    assert report["help"] == 0
    assert report["check"] == 1  # Redis refused: reported, and SQL still checked
    assert "sql     ok" in report["output"]
    assert report["stats"] == 1
    assert "cannot read the counters" in report["output"]
    assert report["up"] == 0.0
    assert report["loaded"] == []


# --- old paths ----------------------------------------------------------------------------


@pytest.mark.parametrize(("old", "new"), sorted(_moved.MOVED.items()))
def test_moved_path_warns_and_gives_the_new_module(old: str, new: str) -> None:
    """Each old module path in ``penny_cache._moved.MOVED`` still imports, with a
    DeprecationWarning naming the new path, and is the new module itself (same objects)."""
    parent_name, _, attr = old.rpartition(".")
    parent = importlib.import_module(parent_name)
    had_attr = attr in vars(parent)
    saved = sys.modules.pop(old, None)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            module = importlib.import_module(old)
        target = importlib.import_module(new)
        assert module is target
        assert all(getattr(module, n) is getattr(target, n) for n in getattr(target, "__all__", ()))
        messages = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]
        assert any(old in m and new in m for m in messages), messages
    finally:
        sys.modules.pop(old, None)
        if saved is not None:
            sys.modules[old] = saved
        if not had_attr:
            vars(parent).pop(attr, None)
