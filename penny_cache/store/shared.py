"""Objects made once per key and shared by their holders, closed by the last release.

Penny builds a store and a tracker per request; what those must not multiply (an engine,
an outbox sweeper) is made once per key here and counted. A holder collected without
``close()`` releases through its finalizer, possibly while this thread is inside
``acquire()``: hence the re-entrant lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from penny_cache import forks

__all__ = ["Shared"]

_V = TypeVar("_V")


class Shared(Generic[_V]):
    """Values by key, each counted by its holders; ``close`` is called on the last release."""

    def __init__(self, close: Callable[[_V], object]) -> None:
        self._close = close
        self._lock = threading.RLock()
        self._held: dict[Hashable, tuple[_V, int]] = {}
        forks.track(self)

    def acquire(self, key: Hashable, make: Callable[[], _V]) -> _V:
        """The value of ``key``, made on first use; release it once per acquire."""
        with self._lock:
            value, holders = self._held.get(key) or (make(), 0)
            self._held[key] = (value, holders + 1)
            return value

    def release(self, value: _V) -> None:
        """One holder fewer; the last one closes the value (a second release is a no-op)."""
        with self._lock:
            for key, (held, holders) in list(self._held.items()):
                if held is value:
                    if holders > 1:
                        self._held[key] = (held, holders - 1)
                        return
                    del self._held[key]
                    break
            else:
                return
        self._close(value)

    def values(self) -> list[_V]:
        with self._lock:
            return [value for value, _holders in self._held.values()]

    def __len__(self) -> int:
        return len(self._held)

    def after_fork(self) -> None:
        """Another thread may have held the lock at the fork."""
        self._lock = threading.RLock()
