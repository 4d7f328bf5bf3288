"""Logging that says a failure once per interval instead of once per request.

When Redis is down every request fails the same way; a log line per request would bury
the one line an operator needs. Each kind of failure is logged at most once per interval,
with the number of repeats suppressed since the last line.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

__all__ = ["RateLimitedLog"]


class RateLimitedLog:
    """At most one warning per ``kind`` per ``interval`` seconds (clock injected)."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval = interval
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, kind: str, message: str) -> bool:
        """Log ``message`` unless ``kind`` was logged within the interval; True if logged."""
        now = self._monotonic()
        with self._lock:
            last = self._last.get(kind)
            if last is not None and now - last < self._interval:
                self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
                return False
            self._last[kind] = now
            repeats = self._suppressed.pop(kind, 0)
        suffix = f" ({repeats} more since the last report)" if repeats else ""
        self._logger.warning("%s%s", message, suffix)
        return True
