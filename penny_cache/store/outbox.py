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
from penny_cache.store.outbox_rows import Delivery
from penny_cache.store.shared import Shared

__all__ = ["SWEEPERS", "OutboxSweeper", "shared_sweeper"]

log = logging.getLogger("penny_cache.store.outbox")


class OutboxSweeper:
    """A daemon thread per database and cache in a process (see ``shared_sweeper``),
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
        self._delivered: list[Delivery] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._errors = RateLimitedLog(log, 60.0, monotonic)
        self.replayed = 0
        forks.track(self)

    def delivered(self, user_id: str, version: int) -> None:
        """This process's write-through of ``version`` reached Redis: forget its row."""
        with self._lock:
            self._delivered.append(Delivery(user_id, version, self._store.now()))

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

    def sweep(self, grace: float | None = None) -> int:
        """One pass over the rows older than ``grace`` (default: the sweeper's); the
        number of versions replayed. Raises ``StoreError`` if SQL fails."""
        with self._lock:
            done, self._delivered = self._delivered, []
        self._store.outbox_delivered(done)
        replayed: list[Delivery] = []
        for user_id, _version in self._store.outbox_due(self._grace if grace is None else grace):
            state = self._store.load(user_id)  # the newest committed version, not the row's
            if self._publish(state):
                replayed.append(Delivery(user_id, state.version, self._store.now()))
        self._store.outbox_delivered(replayed)
        self.replayed += len(replayed)
        return len(replayed)

    def recover(self) -> bool:
        """The cache's recovery step after a lost proof: publish every committed version
        whose delivery is not confirmed, however young (a sweep with no grace). True when
        the pass completed; a version Redis refused again stays for the next pass."""
        try:
            self.sweep(grace=0.0)
        except PennyCacheError as exc:
            self._errors.warning("recover", f"outbox sweep on recovery failed: {exc}")
            return False
        return True

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


def shared_sweeper(
    store: PersonalityStore,
    publisher: object,
    publish: Callable[[PersonalityState], bool],
    *,
    interval: float,
    grace: float,
) -> OutboxSweeper:
    """The sweeper of ``store``'s database publishing through ``publisher``: one per
    process however many trackers use it (Penny builds a tracker per request, and a
    thread per tracker piled up). Release it through ``SWEEPERS``; the last release
    stops its thread. The first tracker's interval and grace apply."""
    return SWEEPERS.acquire(
        (store.url, id(publisher)),
        lambda: OutboxSweeper(store, publish, interval=interval, grace=grace),
    )


# sweepers by (database URL, publisher), stopped by the last tracker that holds one
SWEEPERS: Final[Shared[OutboxSweeper]] = Shared(OutboxSweeper.stop)
