"""Recovery after a lost proof: what must reach Redis before this process trusts it again.

A PONG after an outage proves only that everything *published* reached this process.
Updates acknowledged while Redis was out of reach were never published: their
write-throughs wait in a writer's queue, or (the writer died, or is cut off alone) only
the outbox in SQL knows them. So a process that lost its proof (its listener's trust
lapsed after being proven, or its circuit breaker opened) answers reads from SQL, not
from Redis or its near cache, until ``Recovery.run`` has delivered its own queue and
published every committed version the outbox holds (the steps its trackers registered).
A healthy process never pays for this: nothing runs until a proof is lost.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable

__all__ = ["Recovery"]


class Recovery:
    """Whether this process must recover before trusting Redis, and the steps to do it."""

    def __init__(self) -> None:
        self.pending = False
        self._lock = threading.Lock()
        self._steps: dict[int, weakref.WeakMethod[Callable[[], bool]]] = {}

    def add_step(self, step: Callable[[], bool]) -> None:
        """A bound method run on every recovery (held weakly: an owner that goes away
        takes its step along); True when it succeeded."""
        self._steps[id(step.__self__)] = weakref.WeakMethod(step)  # type: ignore[attr-defined]

    def run(self, deliver_own: Callable[[], bool]) -> bool:
        """Deliver this process's queue, then every registered step; True, and no
        recovery pending any more, only when all of them succeeded. A recovery already
        running in another thread answers False (the caller tries again later)."""
        if not self._lock.acquire(blocking=False):
            return False
        try:
            if not deliver_own():
                return False
            for key, ref in list(self._steps.items()):
                step = ref()
                if step is None:
                    del self._steps[key]
                elif not step():
                    return False
            self.pending = False
            return True
        finally:
            self._lock.release()

    def after_fork(self) -> None:
        """Another thread may have held the lock at the fork."""
        self._lock = threading.Lock()
