"""The shadow check: a sampled share of Redis hits compared with SQL's committed version,
off the request path, so a divergence seen in production is counted, not guessed.

A request only draws a number and, for the sampled few, puts the hit on a bounded queue
without waiting (a full queue drops the sample: a request never blocks, and the asyncio
face's loop never waits on SQL). The cache's counters thread drains it on its periodic
tick (no thread of its own: Penny builds a tracker per request, and a thread per
tracker or one started by the first sample would make thread counts drift): it reads
SQL's version, and an entry that disagrees is read again, with SQL, once the staleness
bound has passed (a later tick; nothing sleeps), so an update whose write-through or
invalidation was in flight is no alarm. What still disagrees is counted:
``divergence_older`` (Redis behind SQL: a lost invalidation) or ``divergence_newer``
(Redis ahead of SQL, or an entry of a user SQL does not have: forged, or a database
restored to an earlier point). An entry that does not decode is already
``decode_errors``. Not the listener's tick: SQL there would delay invalidations.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Final, NamedTuple

from penny_cache.errors import PennyCacheError

__all__ = ["KINDS", "ShadowCheck"]

KINDS: Final = ("older", "newer")
CAPACITY: Final = 256  # samples waiting for their first look, and suspects waiting
PER_TICK: Final = 32  # first looks per tick: a slow SQL delays the counters' flush little
log = logging.getLogger("penny_cache.shadow")
SqlVersion = Callable[[str], int | None]  # SQL's committed version, None: no row


class _Sample(NamedTuple):
    user_id: str
    version: int
    sql_version: SqlVersion


class ShadowCheck:
    """Samples Redis hits and counts those that still disagree with SQL after the bound.

    ``redis_version``: the version Redis holds now (None: no usable entry); ``count``
    adds one to ``divergence_<kind>``.
    """

    def __init__(
        self,
        *,
        share: float,
        recheck_after: float,
        redis_version: Callable[[str], int | None],
        count: Callable[[str], None],
        rand: Callable[[], float] = random.random,
        monotonic: Callable[[], float] = time.monotonic,
        capacity: int = CAPACITY,
    ) -> None:
        self.share = share
        self._recheck_after = recheck_after
        self._redis_version = redis_version
        self._count = count
        self._rand = rand
        self._monotonic = monotonic
        self._capacity = capacity
        self._queue: queue.Queue[_Sample] = queue.Queue(capacity)
        self._due: deque[tuple[float, _Sample]] = deque()
        self._lock = threading.Lock()
        self.dropped = 0  # samples refused by a full queue (this process)

    def offer(self, user_id: str, version: int, sql_version: SqlVersion) -> None:
        """A Redis hit of ``version``: maybe sampled, never waited on."""
        if self.share <= 0 or self._rand() >= self.share:
            return
        try:
            self._queue.put_nowait(_Sample(user_id, version, sql_version))
        except queue.Full:
            self.dropped += 1

    def run(self, now: float | None = None) -> list[str]:
        """The tick's work: first looks at queued samples, then re-checks whose bound
        has passed; the kinds counted. Skips when another thread is running it."""
        if not self._lock.acquire(blocking=False):
            return []
        try:
            now = self._monotonic() if now is None else now
            for _ in range(PER_TICK):
                try:
                    sample = self._queue.get_nowait()
                except queue.Empty:
                    break
                self._first_look(sample, now)
            return self._recheck_due(now)
        finally:
            self._lock.release()

    def _first_look(self, sample: _Sample, now: float) -> None:
        try:
            sql = sample.sql_version(sample.user_id)
        except PennyCacheError as exc:  # SQL away: this sample is lost
            log.debug("shadow check skipped: %s", exc)
            return
        if _kind(sample.version, sql) is not None and len(self._due) < self._capacity:
            self._due.append((now + self._recheck_after, sample))

    def _recheck_due(self, now: float) -> list[str]:
        counted = []
        while self._due and self._due[0][0] <= now:
            _, sample = self._due.popleft()
            try:
                held = self._redis_version(sample.user_id)
                kind = None if held is None else _kind(held, sample.sql_version(sample.user_id))
            except PennyCacheError as exc:
                log.debug("shadow re-check skipped: %s", exc)
                continue
            if kind is not None:  # None: dropped or caught up meanwhile
                self._count(f"divergence_{kind}")
                counted.append(kind)
        return counted

    def after_fork(self) -> None:
        """A child starts empty (the parent's queue and its locks stay with it)."""
        self._queue = queue.Queue(self._capacity)
        self._due = deque()
        self._lock = threading.Lock()


def _kind(redis_version: int, sql_version: int | None) -> str | None:
    if sql_version is None:
        return "newer" if redis_version > 0 else None  # no row: only defaults (0) agree
    if redis_version < sql_version:
        return "older"
    return "newer" if redis_version > sql_version else None
