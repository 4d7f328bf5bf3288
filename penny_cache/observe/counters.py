"""Counters that cost no round trip per lookup and still add up across processes.

Each process keeps cumulative totals in memory and writes them, as absolute values, to
its own fields (``<process>|<counter>``) of one of 16 Redis hashes (chosen by its process
id, so that no single key, or Cluster slot, takes every write) at most once per interval, on
``close()`` and at exit. Writing absolutes makes a flush idempotent: a retried or
repeated flush cannot double count, and after a Redis restart the next flush puts the
live processes' totals back. A closing process folds its fields into ``retired|*``
exactly once (guarded by a marker key), so the hash does not grow with restarts.
Reading sums every field of the 16 hashes: one pipelined round of HGETALLs, never SCAN.

Anyone holding the service's Redis credential can write these hashes, so a reader trusts
nothing in them: a field that does not parse (not ``<process>|<known counter>``, not a
non-negative integer below 2**53) is skipped and counted in ``stats_fields_invalid``, and
a shard that is not a hash (a ``SET`` over it) is skipped and counted in
``stats_keys_invalid``; one bad field must not fail the requests that show the totals.
A flush that fails (Redis down, refused) is logged at most once per interval and retried
on the next tick. A refusal by a shard of another type is repaired at once (the key holds
no counts of ours: unlinked, remade by the next flush), so a planted key costs one flush,
not the fleet's readiness; ``SharedCounters.counting`` turns False only while Redis keeps
refusing flushes that repair did not cure (an ACL without HSET: readiness).
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
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, Protocol

from penny_cache import forks
from penny_cache.errors import CacheError, CacheTimeoutError, CacheUnavailableError
from penny_cache.keys import KeySchema
from penny_cache.observe.ratelog import RateLimitedLog

__all__ = [
    "COUNTERS",
    "FIELDS_INVALID",
    "KEYS_INVALID",
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
    "integrity_failures",
    "version_ahead",
    "divergence_older",
    "divergence_newer",
)
# what a read found unusable (totals keys beside the counters, never written to Redis)
FIELDS_INVALID: Final = "stats_fields_invalid"
KEYS_INVALID: Final = "stats_keys_invalid"
_SEEN: Final = "seen"
# ``baseline|<counter>`` (zero or negative) is what a reset subtracted: the live
# processes keep publishing absolutes, so zeroing their fields would not stick.
BASELINE: Final = "baseline"
_LOCK_FREE: Final = ("hits", "misses", "near_hits")
_NAMES: Final = frozenset(COUNTERS)
_MAX_COUNT: Final = 2**53  # a count no process reaches; above it a value is forged
_LOG_INTERVAL: Final = 60.0
_REFUSALS_UNREADY: Final = 3  # consecutive flushes Redis refused: this process cannot count
log = logging.getLogger("penny_cache.observe.counters")
_bad_state_log = RateLimitedLog(log, _LOG_INTERVAL)


class CounterBackend(Protocol):
    """What the counters need from Redis (``RedisBackend`` provides it)."""

    def write_fields(self, key: str, fields: Mapping[str, int | float | str]) -> None: ...
    def repair_counters(self, key: str) -> str: ...
    def read_fields_many(self, keys: list[str]) -> Sequence[Mapping[str, str] | None]: ...
    def retire_counters(
        self, key: str, marker: str, process_id: str, totals: Mapping[str, int]
    ) -> bool: ...
    def probe(self, *, force: bool = False) -> bool: ...
    def delete_keys(self, keys: list[str]) -> None: ...
    def rebase_counters(self, key: str, baseline: str, names: Sequence[str]) -> None: ...


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
    """Sum ``<process>|<counter>`` fields over all processes (and the retired ones);
    fields that do not parse are skipped and counted under ``FIELDS_INVALID``."""
    totals = dict.fromkeys(COUNTERS, 0)
    totals[FIELDS_INVALID] = 0
    for field, value in fields.items():
        process, _, name = field.rpartition("|")
        if name == _SEEN:
            continue  # a timestamp, for people reading the hash
        if name not in _NAMES or not 0 < len(process) <= 200:
            amount = None
        elif process == BASELINE:
            amount = _baseline(value)
        else:
            amount = _count(value)
        if amount is None:
            totals[FIELDS_INVALID] += 1
        else:
            totals[name] += amount
    return totals


def _count(value: str) -> int | None:
    """A counter's value, or None when it is not one a process could have written."""
    if not (len(value) <= 16 and value.isascii() and value.isdigit()):
        return None
    amount = int(value)
    return amount if amount <= _MAX_COUNT else None


def _baseline(value: str) -> int | None:
    """A reset's baseline: minus a count, or None when no reset could have written it."""
    negated = _count(value[1:]) if value.startswith("-") else _count(value)
    if negated is None:
        return None
    return -negated if value.startswith("-") else (0 if negated == 0 else None)


def shared_totals(backend: CounterBackend, keys: KeySchema) -> dict[str, int]:
    """Every process's totals on the namespace: the sum over all counter shards, with
    ``FIELDS_INVALID`` and ``KEYS_INVALID`` saying what was skipped (and logged)."""
    totals = sum_counters({})
    totals[KEYS_INVALID] = 0
    for fields in backend.read_fields_many(keys.all_counters()):
        if fields is None:
            totals[KEYS_INVALID] += 1
            continue
        for name, value in sum_counters(fields).items():
            totals[name] += value
    for name in COUNTERS:  # a forged baseline must not make a count negative
        totals[name] = max(0, totals[name])
    if totals[FIELDS_INVALID] or totals[KEYS_INVALID]:
        _bad_state_log.warning(
            "invalid",
            f"the shared counters hold {totals[FIELDS_INVALID]} invalid fields and "
            f"{totals[KEYS_INVALID]} keys that are not hashes (skipped; see the runbook)",
        )
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
        self.flush_failures = 0  # consecutive failed flushes (0: the last one landed)
        self.flush_failures_total = 0
        self._refusals = 0  # of those, the ones Redis answered with an error
        self.keys_repaired = 0  # counters keys of another type this process unlinked
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
            key = self._keys.counters(self.process_id)
            try:
                self._backend.write_fields(key, fields)
            except CacheError as exc:
                self._flush_failed(key, exc)
                return False
            self._published = totals
            self.flush_failures = self._refusals = 0
            return True

    def _flush_failed(self, key: str, exc: CacheError) -> None:
        """Counted and logged (once per interval); the next tick retries with absolutes,
        so nothing is lost while the totals stay in memory. A refusal may be a key of
        another type over the hash: it is unlinked here, so the next flush lands."""
        self.flush_failures += 1
        self.flush_failures_total += 1
        if not isinstance(exc, CacheUnavailableError | CacheTimeoutError):
            self._refusals += 1
            if self._repair(key):
                return
        _bad_state_log.warning(
            "flush", f"could not write this process's counters to {key} ({exc}); retrying"
        )

    def _repair(self, key: str) -> bool:
        """Without this, one key of another type (a SET over a counters hash) kept every
        process writing there from counting, and out of rotation (``counting``)."""
        try:
            kind = self._backend.repair_counters(key)
        except CacheError:
            return False  # not even that is allowed: a configuration to fix, reported
        if kind:
            self.keys_repaired += 1
            _bad_state_log.warning(
                "repair", f"{key} was a {kind}, not a hash: unlinked; the next flush remakes it"
            )
        return bool(kind)

    @property
    def counting(self) -> bool:
        """False once Redis has refused several flushes in a row (a shard of another type:
        it answers, but this process's counts go nowhere). Redis out of reach is not this:
        that is the breaker's and the readiness probe's Redis check, not a broken count."""
        return self._refusals < _REFUSALS_UNREADY

    def totals(self) -> dict[str, int]:
        """All processes' totals from Redis, this process's own counts included.

        Raises ``CacheError`` when Redis cannot be read.
        """
        self.flush()
        return shared_totals(self._backend, self._keys)

    def reset_shared(self) -> None:
        """Zero the namespace's shared totals, for every process at once: after this
        process publishes its own counts, each counter shard's ``baseline|`` fields
        subtract what the shard holds (atomically, in Redis), so the totals read 0 and
        the live processes' later absolutes count from there. A count not yet published
        by another process (at most one flush interval's) shows after the reset.
        Raises ``CacheError`` when Redis cannot be written."""
        if not self.flush():
            raise CacheUnavailableError("the counters could not be published before the reset")
        with self._flush_lock:
            for key in self._keys.all_counters():
                self._backend.rebase_counters(key, BASELINE, COUNTERS)

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
