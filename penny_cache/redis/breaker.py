"""A circuit breaker for Redis: after repeated failures, requests skip Redis (SQL answers).

closed ──(``threshold`` failures in a row)──▶ open ──(``cooldown`` passed)──▶ half-open
  ▲                                            ▲                              │
  └──────────────── success ───────────────────┴────────── failure ───────────┘

While open, no request touches the network. Once the cooldown has passed, the first
caller to ask (a request, or the background probe a listener or flusher thread runs on
every tick) is let through as the one trial; everyone else still skips Redis until that
trial ends. Time is injected; the breaker does no I/O.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Final, Literal

__all__ = ["CircuitBreaker", "State"]

State = Literal["closed", "open", "half_open"]
_CLOSED: Final = "closed"
_OPEN: Final = "open"
_HALF_OPEN: Final = "half_open"


class CircuitBreaker:
    """Failure counting and the open/half-open/closed decision, shared by every backend
    of one cache (sync requests, asyncio requests, background threads)."""

    def __init__(
        self,
        threshold: int = 3,
        cooldown: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if threshold < 1 or cooldown <= 0:
            raise ValueError("threshold must be >= 1 and cooldown > 0")
        self.threshold = threshold
        self.cooldown = cooldown
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._state: State = _CLOSED
        self._failures = 0
        self._open_until = 0.0
        self.opened = 0  # times the breaker opened (for tests and logs)
        # The hot path reads one attribute: True while closed with no failure counted.
        self.healthy = True

    @property
    def state(self) -> str:
        """ "closed", "open" or "half_open"."""
        return self._state

    def allow(self) -> bool:
        """May a call go to Redis now? In half-open, only the one trial may."""
        if self.healthy:
            return True
        with self._lock:
            if self._state == _CLOSED:
                return True
            if self._state == _OPEN and self._monotonic() >= self._open_until:
                self._state = _HALF_OPEN
                return True  # this caller is the trial
            return False

    def probe_due(self) -> bool:
        """True when open and its cooldown has passed: a background probe may try."""
        return self._state == _OPEN and self._monotonic() >= self._open_until

    def success(self) -> None:
        if self.healthy:
            return
        with self._lock:
            self._state = _CLOSED
            self._failures = 0
            self.healthy = True

    def failure(self) -> None:
        """A connection failure or timeout: count it; open at the threshold, or at once
        when it was the half-open trial that failed."""
        with self._lock:
            self.healthy = False
            self._failures += 1
            if self._state == _HALF_OPEN or self._failures >= self.threshold:
                if self._state != _OPEN:
                    self.opened += 1
                self._state = _OPEN
                self._open_until = self._monotonic() + self.cooldown
