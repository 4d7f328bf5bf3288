"""``get_cache()``: the one named process-wide instance, and its reset for tests.

This is the only module-level state in penny_cache. The instance is built from
``PENNY_*`` variables on first use, in the process that uses it: a worker forked after
import builds its own instead of sharing its parent's.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from typing import Generic, Protocol, TypeVar

from penny_cache.cache import PersonalityCache
from penny_cache.config import Settings

__all__ = ["ProcessSingleton", "get_cache", "reset_cache"]

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


def get_cache() -> PersonalityCache:
    """The process-wide cache, configured from ``PENNY_REDIS_URL``, ``PENNY_CACHE_TTL``, ..."""
    return _shared.get()


def reset_cache() -> None:
    """Close and forget the process-wide cache (tests; reconfiguration)."""
    _shared.reset()
