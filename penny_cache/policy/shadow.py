"""The shadow check: a sampled share of Redis hits compared with SQL's committed version,
off the request path, so a divergence seen in production is counted, not guessed.

A request only draws a number and, for the sampled few, puts ``(user, version)`` on a
bounded queue without waiting (a full queue drops the sample: a request never blocks,
and the asyncio face's loop never waits on SQL). One daemon thread per process drains
it: it reads SQL's version, and when the entry disagrees it waits the staleness bound
and reads both again, so an update whose write-through or invalidation was in flight
is no alarm. What still disagrees is counted: ``divergence_older`` (Redis behind SQL:
a lost invalidation) or ``divergence_newer`` (Redis ahead of SQL, or an entry of a user
SQL does not have: forged, or a database restored to an earlier point). An entry that
does not decode is already ``decode_errors``.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import threading
import weakref
from collections.abc import Callable
from typing import Final

from penny_cache.errors import PennyCacheError

__all__ = ["KINDS", "ShadowCheck"]

KINDS: Final = ("older", "newer")
CAPACITY: Final = 256
log = logging.getLogger("penny_cache.shadow")


class ShadowCheck:
    """Samples Redis hits and counts those that still disagree with SQL after the bound.

    ``redis_version``/``sql_version``: the version each holds now (None: no entry, no
    row); ``count``: adds one to ``divergence_<kind>``. ``wait`` (tests) replaces the
    stop event's timed wait.
    """

    def __init__(
        self,
        *,
        share: float,
        recheck_after: float,
        redis_version: Callable[[str], int | None],
        sql_version: Callable[[str], int | None],
        count: Callable[[str], None],
        rand: Callable[[], float] = random.random,
        wait: Callable[[float], object] | None = None,
        capacity: int = CAPACITY,
    ) -> None:
        self._share = share
        self._recheck_after = recheck_after
        self._redis_version = redis_version
        self._sql_version = sql_version
        self._count = count
        self._rand = rand
        self._stop = threading.Event()
        self._wait = wait or self._stop.wait
        self._capacity = capacity
        self._queue: queue.Queue[tuple[str, int]] = queue.Queue(capacity)
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._start_lock = threading.Lock()
        self.dropped = 0  # samples a full queue refused (this process)
        weakref.finalize(self, self._stop.set)

    @property
    def enabled(self) -> bool:
        return self._share > 0

    def offer(self, user_id: str, version: int) -> None:
        """A Redis hit of ``version``: maybe sampled, never waited on."""
        if self._share <= 0 or self._rand() >= self._share:
            return
        if self._thread is None or self._pid != os.getpid():
            self._start()
        try:
            self._queue.put_nowait((user_id, version))
        except queue.Full:
            self.dropped += 1

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is not None and self._pid == os.getpid():
                return
            if self._pid != os.getpid():  # a fork's copy: the parent's samples and thread
                self._queue = queue.Queue(self._capacity)
            self._pid = os.getpid()
            args = (weakref.ref(self), self._queue, self._stop)
            self._thread = threading.Thread(target=_drain, args=args, name="penny-shadow")
            self._thread.daemon = True
            self._thread.start()

    def check(self, user_id: str, seen: int) -> str | None:
        """Compare one sampled hit with SQL; the kind counted, or None."""
        if _kind(seen, self._sql_version(user_id)) is None:
            return None
        self._wait(self._recheck_after)
        if self._stop.is_set():
            return None
        now = self._redis_version(user_id)
        if now is None:
            return None  # dropped meanwhile: the next read fills from SQL
        kind = _kind(now, self._sql_version(user_id))
        if kind is not None:
            self._count(f"divergence_{kind}")
        return kind

    def stop(self) -> None:
        """End the thread (it finishes the sample in hand)."""
        self._stop.set()


def _drain(
    ref: weakref.ReferenceType[ShadowCheck],
    samples: queue.Queue[tuple[str, int]],
    stop: threading.Event,
) -> None:
    """The thread holds its checker weakly: a tracker dropped without ``close()`` (one
    per request in some callers) takes its thread with it."""
    while not stop.is_set():
        try:
            user_id, version = samples.get(timeout=0.5)
        except queue.Empty:
            if ref() is None:
                return
            continue
        checker = ref()
        if checker is None:
            return
        try:
            checker.check(user_id, version)
        except PennyCacheError as exc:  # Redis or SQL away: this sample is lost
            log.debug("shadow check skipped: %s", exc)
        del checker


def _kind(redis_version: int, sql_version: int | None) -> str | None:
    if sql_version is None:
        return "newer" if redis_version > 0 else None  # no row: only defaults (0) agree
    if redis_version < sql_version:
        return "older"
    return "newer" if redis_version > sql_version else None
