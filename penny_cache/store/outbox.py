"""The outbox sweeper: committed versions whose write-through may never have happened.

An update commits its new version and an outbox row in one SQL transaction, then writes
the version through to Redis and publishes the invalidation. A process that dies between
the two (or cannot reach Redis and dies before its queue drains) would leave every other
process on the old version until the Redis TTL. Each tracker runs this sweeper: every
``interval`` it forgets the rows its own process delivered, then loads each row older
than ``grace`` from SQL and publishes it (version-checked write plus invalidation:
idempotent, so sweepers in several processes may race harmlessly).
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import Final

from penny_cache import forks
from penny_cache.errors import PennyCacheError
from penny_cache.observe.ratelog import RateLimitedLog
from penny_cache.state import PersonalityState
from penny_cache.store.database import PersonalityStore

__all__ = ["SWEEPERS", "OutboxSweeper", "SweeperRegistry"]

log = logging.getLogger("penny_cache.store.outbox")


class OutboxSweeper:
    """A daemon thread per database and cache in a process (see ``SweeperRegistry``),
    started on first use (fork-safe)."""

    def __init__(
        self,
        store: PersonalityStore,
        publish: Callable[[PersonalityState], bool],
        *,
        interval: float = 5.0,
        grace: float = 2.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._publish = publish
        self._interval = interval
        self._grace = grace
        self._lock = threading.Lock()
        self._delivered: list[tuple[str, int]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._errors = RateLimitedLog(log, 60.0, monotonic)
        self.replayed = 0
        forks.track(self)

    def delivered(self, user_id: str, version: int) -> None:
        """This process's write-through of ``version`` reached Redis: forget its row."""
        with self._lock:
            self._delivered.append((user_id, version))

    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(
                target=_loop,
                args=(weakref.ref(self), self._stop, self._interval),
                name="penny-outbox",
                daemon=True,
            )
            self._thread.start()

    def sweep_logged(self) -> None:
        try:
            self.sweep()
        except PennyCacheError as exc:
            self._errors.warning("sweep", f"outbox sweep failed, will retry: {exc}")

    def sweep(self) -> int:
        """One pass; the number of versions replayed. Raises ``StoreError`` if SQL fails."""
        with self._lock:
            done, self._delivered = self._delivered, []
        self._store.outbox_delivered(done)
        replayed: list[tuple[str, int]] = []
        for user_id, _version in self._store.outbox_due(self._grace):
            state = self._store.load(user_id)  # the newest committed version, not the row's
            if self._publish(state):
                replayed.append((user_id, state.version))
        self._store.outbox_delivered(replayed)
        self.replayed += len(replayed)
        return len(replayed)

    def stop(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    def after_fork(self) -> None:
        """A forked child has no thread and did not deliver its parent's writes."""
        self._thread = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._delivered = []


def _loop(ref: weakref.ReferenceType[OutboxSweeper], stop: threading.Event, every: float) -> None:
    """The thread holds the sweeper weakly: a tracker dropped without close() ends it."""
    while not stop.wait(every):
        sweeper = ref()
        if sweeper is None:
            return
        sweeper.sweep_logged()
        del sweeper


class SweeperRegistry:
    """One sweeper per (database URL, publisher) per process, however many trackers use
    it: Penny builds a tracker per request, and a sweeper thread per tracker piled up.
    Trackers acquire it and release it on ``close()`` or when collected; the last
    release stops the thread. The first tracker's interval and grace apply."""

    def __init__(self) -> None:
        # re-entrant: a store or tracker collected while this thread holds the lock
        # releases from its finalizer, inside acquire()
        self._lock = threading.RLock()
        self._sweepers: dict[tuple[str, int], tuple[OutboxSweeper, int]] = {}
        forks.track(self)

    def acquire(
        self,
        store: PersonalityStore,
        publisher: object,
        publish: Callable[[PersonalityState], bool],
        *,
        interval: float,
        grace: float,
    ) -> OutboxSweeper:
        """The sweeper of ``store``'s database publishing through ``publisher``."""
        key = (store.url, id(publisher))
        with self._lock:
            current = self._sweepers.get(key)
            sweeper, holders = current or (
                OutboxSweeper(store, publish, interval=interval, grace=grace),
                0,
            )
            self._sweepers[key] = (sweeper, holders + 1)
            return sweeper

    def release(self, sweeper: OutboxSweeper) -> None:
        """One holder fewer; the last one stops the sweeper's thread."""
        with self._lock:
            for key, (held, holders) in list(self._sweepers.items()):
                if held is sweeper:
                    if holders > 1:
                        self._sweepers[key] = (held, holders - 1)
                        return
                    del self._sweepers[key]
                    break
        sweeper.stop()

    def __len__(self) -> int:
        return len(self._sweepers)

    def after_fork(self) -> None:
        """Another thread may have held the lock at the fork; the sweepers themselves
        forget their threads (``OutboxSweeper.after_fork``)."""
        self._lock = threading.RLock()


SWEEPERS: Final = SweeperRegistry()
