"""Counters that cost no round trip per lookup and still add up across processes.

Each process keeps cumulative totals in memory and writes them, as absolute values, to
its own fields (``<process>|<counter>``) of one of 16 Redis hashes (chosen by its process
id, so that no single key, or Cluster slot, takes every write) at most once per interval, on
``close()`` and at exit. Writing absolutes makes a flush idempotent: a retried or
repeated flush cannot double count, and after a Redis restart the next flush puts the
live processes' totals back. A closing process folds its fields into ``retired|*``
exactly once (guarded by a marker key), so the hash does not grow with restarts.
Reading sums every field of the 16 hashes: one pipelined round of HGETALLs, never SCAN.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol

from penny_cache import forks
from penny_cache.errors import CacheError
from penny_cache.keys import KeySchema

__all__ = [
    "COUNTERS",
    "CounterBackend",
    "LocalCounters",
    "SharedCounters",
    "shared_totals",
    "stats_view",
    "sum_counters",
]

COUNTERS: Final = (
    "hits",
    "misses",
    "near_hits",
    "sets",
    "fills_refused",
    "invalidations",
    "decode_errors",
    "redis_errors",
    "listener_reconnects",
    "sequence_gaps",
    "stale_served",
    "malformed_messages",
    "version_ahead",
)
_SEEN: Final = "seen"
_LOCK_FREE: Final = ("hits", "misses", "near_hits")
log = logging.getLogger("penny_cache.observe.counters")


class CounterBackend(Protocol):
    """What the counters need from Redis (``RedisBackend`` provides it)."""

    def write_fields(self, key: str, fields: Mapping[str, int | float | str]) -> None: ...
    def read_fields_many(self, keys: list[str]) -> list[dict[str, str]]: ...
    def retire_counters(
        self, key: str, marker: str, process_id: str, totals: Mapping[str, int]
    ) -> bool: ...
    def probe(self, *, force: bool = False) -> bool: ...
    def delete_keys(self, keys: list[str]) -> None: ...


class LocalCounters:
    """This process's cumulative totals; cheap to bump from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Zero everything (a forked child starts from nothing)."""
        with self._lock:
            self._totals = dict.fromkeys(COUNTERS, 0)
            # Lookups are the hot path (a near hit has ~0.3 us): next() on itertools.count
            # is atomic under the GIL and takes no lock; the value is read from repr().
            self._fast = {name: itertools.count() for name in _LOCK_FREE}
            self.near_hit = self._fast["near_hits"].__next__
            self.hit = self._fast["hits"].__next__
            self.miss = self._fast["misses"].__next__

    def incr(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._totals[name] += amount

    def snapshot(self) -> dict[str, int]:
        fast = {name: int(repr(counter)[6:-1]) for name, counter in self._fast.items()}
        with self._lock:
            totals = dict(self._totals)
        for name, value in fast.items():
            totals[name] += value
        totals["hits"] += fast["near_hits"]  # a near hit is a hit
        return totals


def new_process_id() -> str:
    """Unique across hosts and restarts, readable in ``redis-cli HGETALL``."""
    return f"{socket.gethostname()[:32]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def sum_counters(fields: Mapping[str, str]) -> dict[str, int]:
    """Sum ``<process>|<counter>`` fields over all processes (and the retired ones)."""
    totals = dict.fromkeys(COUNTERS, 0)
    for field, value in fields.items():
        _, _, name = field.rpartition("|")
        if name in totals:
            totals[name] += int(value)
    return totals


def shared_totals(backend: CounterBackend, keys: KeySchema) -> dict[str, int]:
    """Every process's totals on the namespace: the sum over all counter shards."""
    totals = sum_counters({})
    for fields in backend.read_fields_many(keys.all_counters()):
        for name, value in sum_counters(fields).items():
            totals[name] += value
    return totals


class SharedCounters:
    """Local counters plus their periodic, idempotent publication to Redis."""

    def __init__(
        self,
        backend: CounterBackend,
        keys: KeySchema,
        *,
        flush_interval: float | None = 1.0,
        wall_clock: Callable[[], float] = time.time,
        on_tick: Callable[[], None] = lambda: None,
    ) -> None:
        self.local = LocalCounters()
        self._backend = backend
        self._keys = keys
        self._interval = flush_interval
        self._wall_clock = wall_clock
        self.on_tick = on_tick
        self._flush_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._published: dict[str, int] | None = None
        self._closed = False
        self.process_id = new_process_id()
        forks.track(self)

    def near_hit(self) -> None:
        """Count one near-cache hit (also a hit); lock-free."""
        self.local.near_hit()

    def incr(self, name: str, amount: int = 1) -> None:
        """Count ``amount`` of ``name``; starts the flusher lazily (fork-safe)."""
        self.local.incr(name, amount)
        self.ensure_started()

    def ensure_started(self) -> None:
        """Start the flusher thread in this process if it is not running yet."""
        if self._thread is None and self._interval is not None and not self._closed:
            self._start()

    def _start(self) -> None:
        with self._flush_lock:
            if self._thread is not None:
                return
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._run, name="penny-cache-counters", daemon=True
            )
            self._thread.start()
        atexit.register(_close_at_exit, weakref.ref(self))

    def _run(self) -> None:
        assert self._interval is not None
        while not self._stop.wait(self._interval):
            self.flush()
            self.on_tick()

    def flush(self) -> bool:
        """Publish the totals if they changed; False when Redis could not be written."""
        with self._flush_lock:
            totals = self.local.snapshot()
            if totals == self._published or (self._published is None and not any(totals.values())):
                return True  # unchanged, or nothing counted yet: no fields for a mere reader
            fields: dict[str, int | float | str] = {
                f"{self.process_id}|{name}": value for name, value in totals.items()
            }
            fields[f"{self.process_id}|{_SEEN}"] = round(self._wall_clock(), 3)
            try:
                self._backend.write_fields(self._keys.counters(self.process_id), fields)
            except CacheError:
                return False
            self._published = totals
            return True

    def totals(self) -> dict[str, int]:
        """All processes' totals from Redis, this process's own counts included.

        Raises ``CacheError`` when Redis cannot be read.
        """
        self.flush()
        return shared_totals(self._backend, self._keys)

    def reset_shared(self) -> None:
        """Zero the namespace's shared totals (tests): delete every counter hash and this
        process's counts. Raises ``CacheError`` when Redis cannot be written. Other live
        processes' counts reappear with their next flush (they publish absolutes)."""
        with self._flush_lock:
            self.local.reset()
            self._published = None
            self._backend.delete_keys(self._keys.all_counters())

    def close(self) -> None:
        """Stop the flusher and fold this process's totals into the retired ones."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        with self._flush_lock:
            totals = self.local.snapshot()
            if not any(totals.values()) and self._published is None:
                return  # never published: nothing of ours is in the hash
            marker = self._keys.retired_marker(self.process_id)
            self._backend.probe(force=True)  # Redis may be back while the breaker is open
            try:
                key = self._keys.counters(self.process_id)
                self._backend.retire_counters(key, marker, self.process_id, totals)
            except CacheError as exc:
                # the last published absolutes stay in the hash (still summed); what is
                # lost is what was counted since, and the fold into the retired totals
                log.warning("could not retire this process's counters (%s)", exc)

    def after_fork(self) -> None:
        """A forked child must not inherit the parent's counts, id or thread."""
        self.local.reset()
        self.process_id = new_process_id()
        self._thread = None
        self._published = None
        self._flush_lock = threading.Lock()
        self._stop = threading.Event()


def _close_at_exit(ref: weakref.ReferenceType[SharedCounters]) -> None:
    counters = ref()
    if counters is not None:
        counters.close()


def stats_view(totals: Mapping[str, int], *, shared: bool) -> dict[str, Any]:
    """The ``get_stats()`` mapping: totals plus requests and a 0..1 hit rate."""
    requests = totals["hits"] + totals["misses"]
    view: dict[str, Any] = dict(totals)
    view["requests"] = requests
    view["hit_rate"] = totals["hits"] / requests if requests else 0.0
    view["shared"] = shared
    return view
