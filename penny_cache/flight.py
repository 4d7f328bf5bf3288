"""Single-flight: concurrent misses of one key in a process run one load, not many.

Hand-written because it is twenty lines around ``threading.Event`` and no maintained
library offers the sync version with exceptions shared to the waiters.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["SingleFlight"]

_T = TypeVar("_T")


class _Call(Generic[_T]):
    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: _T | None = None
        self.error: BaseException | None = None


class SingleFlight(Generic[_T]):
    """``run(key, load)``: the first caller loads; callers arriving meanwhile share it."""

    def __init__(self, wait_timeout: float = 30.0) -> None:
        self._lock = threading.Lock()
        self._calls: dict[str, _Call[_T]] = {}
        self._wait_timeout = wait_timeout

    def run(self, key: str, load: Callable[[], _T]) -> _T:
        with self._lock:
            call = self._calls.get(key)
            leader = call is None
            if call is None:
                call = self._calls[key] = _Call()
        if not leader:
            if call.done.wait(self._wait_timeout) and call.error is None:
                return call.result  # type: ignore[return-value]
            return load()  # the leader failed or hangs: load for ourselves
        try:
            call.result = load()
            return call.result
        except BaseException as exc:
            call.error = exc
            raise
        finally:
            with self._lock:
                del self._calls[key]
            call.done.set()
