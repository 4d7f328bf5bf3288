"""``get_shared_cache()``: the one named process-wide ``PersonalityCache``, and its reset
for tests.

Named apart from the drop-in's ``penny_cache.personality_state_cache.get_cache()`` (which
returns a ``PersonalityStateCache``, Penny's import): the old names ``get_cache`` and
``reset_cache`` of this module and of the package still answer for one release, with a
``DeprecationWarning``. This is the only module-level state in penny_cache. The instance
is built from ``PENNY_*`` variables on first use, in the process that uses it: a worker
forked after import builds its own instead of sharing its parent's.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Callable, Mapping
from typing import Any, Final, Generic, Protocol, TypeVar

from penny_cache.cache import PersonalityCache
from penny_cache.config import Settings

__all__ = ["DEPRECATED_NAMES", "ProcessSingleton", "get_shared_cache", "reset_shared_cache"]

_T = TypeVar("_T", bound="_Closeable")


class _Closeable(Protocol):
    def close(self) -> None: ...


class ProcessSingleton(Generic[_T]):
    """One lazily built instance per process, closed and rebuilt on ``reset()``."""

    def __init__(self, factory: Callable[[], _T]) -> None:
        self._factory = factory
        self._lock = threading.Lock()
        self._instance: _T | None = None
        self._owner_pid = 0

    def get(self) -> _T:
        with self._lock:
            if self._instance is None or self._owner_pid != os.getpid():
                self._instance = self._factory()
                self._owner_pid = os.getpid()
            return self._instance

    def reset(self) -> None:
        with self._lock:
            instance, self._instance = self._instance, None
        if instance is not None and self._owner_pid == os.getpid():
            instance.close()


def _cache_from_env(environ: Mapping[str, str] | None = None) -> PersonalityCache:
    return PersonalityCache.from_settings(Settings.from_env(environ or os.environ))


_shared: ProcessSingleton[PersonalityCache] = ProcessSingleton(_cache_from_env)


def get_shared_cache() -> PersonalityCache:
    """The process-wide cache, configured from ``PENNY_REDIS_URL``, ``PENNY_CACHE_TTL``, ..."""
    return _shared.get()


def reset_shared_cache() -> None:
    """Close and forget the process-wide cache (tests; reconfiguration)."""
    _shared.reset()


# old name -> new name; removed in 0.3
DEPRECATED_NAMES: Final = {"get_cache": "get_shared_cache", "reset_cache": "reset_shared_cache"}


def deprecated(module: str, name: str) -> Any:
    """The function an old name stands for, after a ``DeprecationWarning`` naming the new
    one; ``AttributeError`` for any other name (a module ``__getattr__``'s contract)."""
    new = DEPRECATED_NAMES.get(name)
    if new is None:
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    warnings.warn(
        f"{module}.{name}() is now {module}.{new}() (a PersonalityCache; Penny's drop-in is "
        f"penny_cache.personality_state_cache.get_cache()); the old name goes in 0.3",
        DeprecationWarning,
        stacklevel=3,
    )
    return globals()[new]


def __getattr__(name: str) -> Any:
    return deprecated(__name__, name)
