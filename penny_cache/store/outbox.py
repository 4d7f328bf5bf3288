"""The outbox sweeper: committed versions whose write-through may never have happened.

An update commits its new version and an outbox row in one SQL transaction, then writes
the version through to Redis and publishes the invalidation. A process that dies between
the two (or cannot reach Redis and dies before its queue drains) would leave every other
process on the old version until the Redis TTL. Each tracker runs this sweeper: every
``interval`` it forgets the rows its own process delivered, then loads each row older
than ``grace`` from SQL and publishes it (version-checked write plus invalidation:
idempotent, so sweepers in several processes may race harmlessly).

A row whose replay fails backs off (exponentially, capped, per row) and later passes page
past it: a pass used to read the 100 oldest rows only, so 100 rows failing every time hid
every later one. The backoff lives in this process, not in the table, because a failure
may be this process's own (its path to Redis is cut while others' are not): a shared
backoff would stop the processes that can deliver the row. A lost proof (Redis came back)
clears it. The same thread trims the evolution history (``PENNY_HISTORY_DAYS``) at most
once a minute.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from penny_cache import forks
from penny_cache.errors import PennyCacheError
from penny_cache.observe.metrics import ProcessMetrics
from penny_cache.observe.ratelog import RateLimitedLog
from penny_cache.state import PersonalityState
from penny_cache.store.database import PersonalityStore
from penny_cache.store.history_rows import valid_days
from penny_cache.store.outbox_backoff import RowBackoff
from penny_cache.store.outbox_rows import Delivery, DueRow
from penny_cache.store.shared import Shared

__all__ = ["SWEEPERS", "OutboxSweeper", "SweepLimits", "shared_sweeper"]

log = logging.getLogger("penny_cache.store.outbox")

HISTORY_EVERY: Final = 60.0  # seconds between a process's history sweeps
HISTORY_BATCH: Final = 1000  # rows per DELETE transaction
HISTORY_BATCHES: Final = 10  # per periodic sweep: a backlog is the CLI's (history-sweep)


@dataclass(frozen=True, slots=True)
class SweepLimits:
    """How much one pass may do: ``replays`` publish attempts, ``pages`` reads of
    ``page`` rows each (past rows in backoff); a pass that runs out of pages resumes
    where it stopped. ``backoff_cap``: the longest wait of a failing row (seconds)."""

    replays: int = 100
    page: int = 500
    pages: int = 10
    backoff_cap: float = 60.0


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
        limits: SweepLimits = SweepLimits(),
        history_days: float | None = None,
        metrics: ProcessMetrics | None = None,
    ) -> None:
        """``history_days``: also delete history rows older than that, at most once a
        ``HISTORY_EVERY`` (None: keep them). ``metrics``: where failures, skipped rows
        and rows in backoff are counted for ``/metrics``."""
        self._store = store
        self._publish = publish
        self._interval = interval
        self._grace = grace
        self._limits = limits
        self._monotonic = monotonic
        self._backoff = RowBackoff(min(max(interval, 0.1), limits.backoff_cap), limits.backoff_cap)
        self._resume: DueRow | None = None
        self._history_days = None if history_days is None else valid_days(history_days)
        self._history_at = float("-inf")
        self._metrics = metrics
        self._lock = threading.Lock()
        self._sweeping = threading.Lock()
        self._delivered: list[Delivery] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._errors = RateLimitedLog(log, 60.0, monotonic)
        self.replayed = 0
        self.failures = 0  # replays that did not reach Redis
        self.skipped = 0  # rows a pass passed over because they were backing off
        self.history_deleted = 0
        forks.track(self)

    @property
    def backing_off(self) -> int:
        """Rows this process will not retry before their backoff ends."""
        return self._backoff.waiting_count(self._monotonic())

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
        if self._history_days is not None:
            now = self._monotonic()
            if now - self._history_at >= HISTORY_EVERY:
                self._history_at = now
                self._sweep_history(self._history_days)

    def _sweep_history(self, days: float) -> None:
        try:
            removed = self._store.sweep_history(
                days, batch=HISTORY_BATCH, max_batches=HISTORY_BATCHES
            )
        except PennyCacheError as exc:
            self._errors.warning("history", f"history sweep failed, will retry: {exc}")
            return
        self.history_deleted += removed
        if self._metrics is not None:
            self._metrics.history_deleted.inc(removed)

    def sweep(self, grace: float | None = None) -> int:
        """One pass over the rows older than ``grace`` (default: the sweeper's); the
        number of versions replayed. Raises ``StoreError`` if SQL fails."""
        with self._lock:
            done, self._delivered = self._delivered, []
        with self._sweeping:
            before = (self.failures, self.skipped)
            self._store.outbox_delivered(done)
            for delivery in done:
                self._backoff.forget(delivery.user_id)
            older_than = self._store.now() - timedelta(
                seconds=self._grace if grace is None else grace
            )
            replayed = self._replay_due(older_than)
            self._store.outbox_delivered(replayed)
            self.replayed += len(replayed)
            failed, skipped = self.failures - before[0], self.skipped - before[1]
        if self._metrics is not None:
            self._metrics.observe_outbox(len(replayed), failed, skipped, self.backing_off)
        return len(replayed)

    def _replay_due(self, older_than: datetime) -> list[Delivery]:
        """Replay due rows not in backoff, oldest first, paging past those in backoff
        within this pass's limits; a pass that runs out resumes where it stopped."""
        now, limits = self._monotonic(), self._limits
        self._backoff.prune(now)
        replayed: list[Delivery] = []
        attempts, after, self._resume = 0, self._resume, None
        for _page in range(limits.pages):
            rows = self._store.outbox_page(older_than, after, limits.page)
            for row in rows:
                if attempts >= limits.replays:
                    self._resume = after
                    return replayed
                after = row
                if self._backoff.waiting(row.user_id, now):
                    self.skipped += 1
                    continue
                attempts += 1
                self._replay(row.user_id, now, replayed)
            if len(rows) < limits.page:
                return replayed  # the end: the next pass starts at the oldest row
        self._resume = after
        return replayed

    def _replay(self, user_id: str, now: float, replayed: list[Delivery]) -> None:
        state = self._store.load(user_id)  # the newest committed version, not the row's
        if self._publish(state):
            replayed.append(Delivery(user_id, state.version, self._store.now()))
            self._backoff.forget(user_id)
        else:
            self.failures += 1
            self._backoff.failed(user_id, now)

    def recover(self) -> bool:
        """The cache's recovery step after a lost proof: publish every committed version
        whose delivery is not confirmed, however young (a sweep with no grace). True when
        the pass completed; a version Redis refused again stays for the next pass. The
        backoff is forgotten first: failures while Redis was away said nothing of the
        rows."""
        with self._sweeping:
            self._backoff.clear()
            self._resume = None
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
        self._sweeping = threading.Lock()
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
    history_days: float | None = None,
    metrics: ProcessMetrics | None = None,
) -> OutboxSweeper:
    """The sweeper of ``store``'s database publishing through ``publisher``: one per
    process however many trackers use it (Penny builds a tracker per request, and a
    thread per tracker piled up). Release it through ``SWEEPERS``; the last release
    stops its thread. The first tracker's interval, grace and history days apply."""
    return SWEEPERS.acquire(
        (store.url, id(publisher)),
        lambda: OutboxSweeper(
            store,
            publish,
            interval=interval,
            grace=grace,
            history_days=history_days,
            metrics=metrics,
        ),
    )


# sweepers by (database URL, publisher), stopped by the last tracker that holds one
SWEEPERS: Final[Shared[OutboxSweeper]] = Shared(OutboxSweeper.stop)
