"""Worker processes and the history checker of the multi-process coherence tests.

Each worker (a ``spawn`` child: it imports this module) runs a timed mix of tracker reads
and updates on a few shared users and records every operation as
``(kind, user, version, start, end)`` with ``time.monotonic()``: CLOCK_MONOTONIC is one
clock for the whole machine on Linux, so the histories of all workers can be merged.
After the deadline a worker waits until every worker has stopped writing, then polls its
reads until they equal SQL's final versions. The checker below is pure: it gets the
workers' results and a propagation bound and says which reads broke which property.

The plan names the API (``"sync"``: ``PersonalityTracker``; ``"asyncio"``:
``AsyncPersonalityTracker`` awaited on an event loop; same op log), each worker's role
(``mixed``, ``writer``: updates only, ``reader``: reads only), a Redis URL for the
writers alone (a fault proxy that cuts them off) and the trackers' ``write_mode``. An
exception from a tracker call does not kill the worker: it is logged in ``errors`` (a
failure reaching the caller) or, for a strict update refused with
``CacheUnavailableError``, in ``refused``; the tests assert on both.
"""

from __future__ import annotations

import asyncio
import faulthandler
import json
import random
import time
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any, Final, NamedTuple

from penny_cache.cache import AsyncPersonalityCache, PersonalityCache
from penny_cache.config import Settings
from penny_cache.errors import CacheUnavailableError
from penny_cache.store.database import PersonalityStore
from penny_cache.tracker import AsyncPersonalityTracker, PersonalityTracker

READ: Final = "r"
WRITE: Final = "w"
REFUSED: Final = "x"  # a strict update refused (version -1: it committed nothing)
MIXED: Final = "mixed"
WRITER: Final = "writer"
READER: Final = "reader"
BARRIER_TIMEOUT: Final = 30.0
STUCK_AFTER: Final = 20.0
DIMENSION: Final = "communication_formality"


class Op(NamedTuple):
    """One tracker call: what it returned and when it started and ended (monotonic)."""

    kind: str
    user: str
    version: int
    start: float
    end: float


@dataclass(frozen=True)
class Plan:
    """What every worker does (picklable: it crosses the spawn boundary)."""

    redis_url: str
    database_url: str
    namespace: str
    users: tuple[str, ...]
    duration: float = 3.0
    write_ratio: float = 0.15
    max_staleness: float = 0.5
    pace: float = 0.002
    converge_within: float = 5.0
    options: tuple[tuple[str, Any], ...] = ()  # more Settings fields (Sentinel, Cluster)
    api: str = "sync"  # "sync" | "asyncio"
    roles: tuple[str, ...] = ()  # per worker; () or a missing index: MIXED
    writer_redis_url: str | None = None  # the writers' Redis (a proxy); None: redis_url
    writer_pace: float = 0.01  # a writer's mean pause between updates
    write_mode: str | None = None  # the trackers' write_mode; None: their default

    def role(self, worker: int) -> str:
        return self.roles[worker] if worker < len(self.roles) else MIXED

    def settings(self, worker: int | None = None) -> Settings:
        """The Settings of ``worker`` (its Redis URL), or the direct ones (None)."""
        url = self.redis_url
        if worker is not None and self.role(worker) == WRITER and self.writer_redis_url:
            url = self.writer_redis_url
        return Settings(
            redis_url=url,
            database_url=self.database_url,
            namespace=self.namespace,
            max_staleness=self.max_staleness,
            **dict(self.options),
        )

    def tracker_options(self) -> dict[str, Any]:
        return {} if self.write_mode is None else {"write_mode": self.write_mode}

    def mix(self, worker: int) -> tuple[float, float]:
        """(write ratio, mean pause) of ``worker``'s workload."""
        role = self.role(worker)
        if role == WRITER:
            return 1.0, self.writer_pace
        return (0.0 if role == READER else self.write_ratio), self.pace


@dataclass
class WorkerResult:
    """A worker's history, its convergence times (None: did not converge), its counters."""

    worker: int
    ops: list[Op]
    converged: dict[str, float | None]
    stats: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)  # exceptions that reached the caller
    refused: list[Op] = field(default_factory=list)  # strict updates refused

    @property
    def reads(self) -> int:
        return sum(1 for op in self.ops if op.kind == READ)

    def dump(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: Path) -> WorkerResult:
        raw = json.loads(path.read_text())
        ops = [Op(*row) for row in raw["ops"]]
        refused = [Op(*row) for row in raw["refused"]]
        return cls(raw["worker"], ops, raw["converged"], raw["stats"], raw["errors"], refused)


# -- the worker process ----------------------------------------------------------------


class _Log:
    """What a worker records: its ops, the errors its caller saw, its refused updates."""

    def __init__(self, plan: Plan) -> None:
        self.ops: list[Op] = []
        self.errors: list[str] = []
        self.refused: list[Op] = []
        self._strict = plan.write_mode == "strict"

    def failed(self, kind: str, user: str, started: float, exc: Exception) -> None:
        if kind == WRITE and self._strict and isinstance(exc, CacheUnavailableError):
            self.refused.append(Op(REFUSED, user, -1, started, time.monotonic()))
        else:
            self.errors.append(f"{kind} {user} at {started:.3f}: {exc!r}")


def run_worker(plan: Plan, worker: int, start: Barrier, writes_done: Barrier, out: str) -> None:
    """Warm up, run the timed workload, converge, publish counters, write the result."""
    faulthandler.dump_traceback_later(STUCK_AFTER)  # a stuck worker shows where it is
    try:
        if plan.api == "asyncio":
            result = asyncio.run(_run_async(plan, worker, start, writes_done))
        else:
            result = _run_sync(plan, worker, start, writes_done)
    except BaseException:
        start.abort()  # never leave the others (or the parent) waiting for us
        writes_done.abort()
        raise
    result.dump(Path(out))
    faulthandler.cancel_dump_traceback_later()


def _run_sync(plan: Plan, worker: int, start: Barrier, writes_done: Barrier) -> WorkerResult:
    cache = PersonalityCache.from_settings(plan.settings(worker))
    store = PersonalityStore(plan.database_url)
    tracker = PersonalityTracker(store, cache, **plan.tracker_options())
    log = _Log(plan)
    try:
        for user in plan.users:  # binds the store and starts the listener
            _read(tracker, user, log)
        start.wait(BARRIER_TIMEOUT)
        _workload(plan, worker, tracker, log)
        writes_done.wait(BARRIER_TIMEOUT)
        converged = _converge(plan, tracker, log)
        stats = cache.local_stats()
    finally:
        tracker.close()
        _close_when_reachable(cache)
        store.close()
    return WorkerResult(worker, log.ops, converged, stats, log.errors, log.refused)


def _read(tracker: PersonalityTracker, user: str, log: _Log) -> int | None:
    started = time.monotonic()
    try:
        version = tracker.get_current_personality_state(user).version
    except Exception as exc:
        log.failed(READ, user, started, exc)
        return None
    log.ops.append(Op(READ, user, version, started, time.monotonic()))
    return version


def _write(tracker: PersonalityTracker, user: str, value: float, log: _Log) -> None:
    started = time.monotonic()
    try:
        state = tracker.update_personality_dimension(user, DIMENSION, value)
    except Exception as exc:
        log.failed(WRITE, user, started, exc)
        return
    log.ops.append(Op(WRITE, user, state.version, started, time.monotonic()))


def _workload(plan: Plan, worker: int, tracker: PersonalityTracker, log: _Log) -> None:
    rng = random.Random(worker)
    write_ratio, pace = plan.mix(worker)
    deadline = time.monotonic() + plan.duration
    while time.monotonic() < deadline:
        user = rng.choice(plan.users)
        if rng.random() < write_ratio:
            _write(tracker, user, round(rng.random(), 6), log)
        else:
            _read(tracker, user, log)
        time.sleep(rng.uniform(0, 2 * pace))


def _targets(plan: Plan) -> dict[str, int]:
    """SQL's final version of each user."""
    store = PersonalityStore(plan.database_url)
    try:
        return {user: store.load(user).version for user in plan.users}
    finally:
        store.close()


def _converge(plan: Plan, tracker: PersonalityTracker, log: _Log) -> dict[str, float | None]:
    """Seconds until this process read SQL's final version of each user (None: never)."""
    target = _targets(plan)
    began = time.monotonic()
    took: dict[str, float | None] = dict.fromkeys(plan.users)
    while time.monotonic() < began + plan.converge_within:
        for user in [u for u, t in took.items() if t is None]:
            if _read(tracker, user, log) == target[user]:
                took[user] = time.monotonic() - began
        if all(t is not None for t in took.values()):
            break
        time.sleep(0.01)
    for user in plan.users:  # one more read each: what converged must stay converged
        _read(tracker, user, log)
    return took


def _close_when_reachable(cache: PersonalityCache, within: float = 5.0) -> None:
    """Close once Redis answers: closing folds this process's counters into the totals,
    which a backend still cooling down after a fault would skip."""
    deadline = time.monotonic() + within
    while not cache.ping() and time.monotonic() < deadline:
        time.sleep(0.05)
    cache.close()


# -- the same worker on the asyncio API (every tracker call awaited on one loop) -------


async def _run_async(plan: Plan, worker: int, start: Barrier, writes_done: Barrier) -> WorkerResult:
    cache = AsyncPersonalityCache.from_settings(plan.settings(worker))
    store = PersonalityStore(plan.database_url)
    tracker = AsyncPersonalityTracker(store, cache, **plan.tracker_options())
    log = _Log(plan)
    try:
        for user in plan.users:  # binds the store and starts the listener
            await _aread(tracker, user, log)
        await asyncio.to_thread(start.wait, BARRIER_TIMEOUT)
        await _aworkload(plan, worker, tracker, log)
        await asyncio.to_thread(writes_done.wait, BARRIER_TIMEOUT)
        converged = await _aconverge(plan, tracker, log)
        stats = cache.local_stats()
    finally:
        await tracker.aclose()
        await _aclose_when_reachable(cache)
        store.close()
    return WorkerResult(worker, log.ops, converged, stats, log.errors, log.refused)


async def _aread(tracker: AsyncPersonalityTracker, user: str, log: _Log) -> int | None:
    started = time.monotonic()
    try:
        version = (await tracker.get_current_personality_state(user)).version
    except Exception as exc:
        log.failed(READ, user, started, exc)
        return None
    log.ops.append(Op(READ, user, version, started, time.monotonic()))
    return version


async def _awrite(tracker: AsyncPersonalityTracker, user: str, value: float, log: _Log) -> None:
    started = time.monotonic()
    try:
        state = await tracker.update_personality_dimension(user, DIMENSION, value)
    except Exception as exc:
        log.failed(WRITE, user, started, exc)
        return
    log.ops.append(Op(WRITE, user, state.version, started, time.monotonic()))


async def _aworkload(plan: Plan, worker: int, tracker: AsyncPersonalityTracker, log: _Log) -> None:
    rng = random.Random(worker)
    write_ratio, pace = plan.mix(worker)
    deadline = time.monotonic() + plan.duration
    while time.monotonic() < deadline:
        user = rng.choice(plan.users)
        if rng.random() < write_ratio:
            await _awrite(tracker, user, round(rng.random(), 6), log)
        else:
            await _aread(tracker, user, log)
        await asyncio.sleep(rng.uniform(0, 2 * pace))


async def _aconverge(
    plan: Plan, tracker: AsyncPersonalityTracker, log: _Log
) -> dict[str, float | None]:
    """As ``_converge``."""
    target = await asyncio.to_thread(_targets, plan)
    began = time.monotonic()
    took: dict[str, float | None] = dict.fromkeys(plan.users)
    while time.monotonic() < began + plan.converge_within:
        for user in [u for u, t in took.items() if t is None]:
            if await _aread(tracker, user, log) == target[user]:
                took[user] = time.monotonic() - began
        if all(t is not None for t in took.values()):
            break
        await asyncio.sleep(0.01)
    for user in plan.users:
        await _aread(tracker, user, log)
    return took


async def _aclose_when_reachable(cache: AsyncPersonalityCache, within: float = 5.0) -> None:
    """As ``_close_when_reachable``."""
    deadline = time.monotonic() + within
    while not await cache.ping() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await cache.aclose()


# -- the history checker ---------------------------------------------------------------


@dataclass
class Report:
    """What the merged history shows; the lists hold one line per violating read."""

    ops: int = 0
    reads: int = 0
    writes: int = 0
    worst_lag: float = 0.0
    bound: float = 0.0
    stale: list[str] = field(default_factory=list)
    not_own_writes: list[str] = field(default_factory=list)
    invented: list[str] = field(default_factory=list)
    not_converged: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # exceptions that reached a caller
    refused: int = 0  # strict updates refused
    uncounted: list[str] = field(default_factory=list)  # SQL versions != acknowledged updates

    def summary(self) -> str:
        return (
            f"{self.ops} ops ({self.reads} reads, {self.writes} writes, {self.refused} "
            f"refused), worst lag {self.worst_lag * 1000:.0f} ms, violations: "
            f"stale beyond {self.bound * 1000:.0f} ms {len(self.stale)}, "
            f"errors {len(self.errors)}, read-your-writes {len(self.not_own_writes)}, "
            f"invented {len(self.invented)}, not converged {len(self.not_converged)}, "
            f"SQL versions != acknowledged updates {len(self.uncounted)}"
        )


def check_history(
    results: list[WorkerResult], bound: float, final: dict[str, int] | None = None
) -> Report:
    """Check properties (1) bounded staleness, (2) read-your-writes, (3) no invented
    versions and (4) convergence over every worker's history; collect the errors that
    reached a caller and the refused updates; with ``final`` (SQL's version per user),
    check that every committed version was acknowledged and vice versa (versions start
    at 0 and each commit adds 1: a refused update that committed anyway shows here)."""
    ops = [(r.worker, op) for r in results for op in r.ops]
    writes = [op for _, op in ops if op.kind == WRITE]
    report = Report(ops=len(ops), writes=len(writes), reads=len(ops) - len(writes), bound=bound)
    acks = _Acks(writes)
    committed = {(op.user, op.version) for op in writes}
    for worker, op in ops:
        if op.kind != READ:
            continue
        if op.version != 0 and (op.user, op.version) not in committed:
            report.invented.append(f"w{worker} {op.user}: read v{op.version}, never committed")
        lag = max(0.0, op.start - acks.first_newer(op.user, op.version))
        report.worst_lag = max(report.worst_lag, lag)
        if lag > bound:
            report.stale.append(
                f"w{worker} {op.user}: read v{op.version} at {op.start:.3f}, "
                f"a newer version was acknowledged {lag * 1000:.0f} ms before"
            )
    for result in results:
        report.not_own_writes += _read_your_writes(result)
        report.not_converged += [
            f"w{result.worker} {user}" for user, took in result.converged.items() if took is None
        ]
        report.errors += [f"w{result.worker} {error}" for error in result.errors]
        report.refused += len(result.refused)
    for user, version in (final or {}).items():
        acked = sorted(op.version for op in writes if op.user == user)
        if acked != list(range(1, version + 1)):
            report.uncounted.append(f"{user}: SQL at v{version}, {len(acked)} acknowledged")
    return report


class _Acks:
    """Per user: when a version above a given one was first acknowledged to its writer."""

    def __init__(self, writes: Iterable[Op]) -> None:
        by_user: dict[str, list[tuple[int, float]]] = defaultdict(list)
        for op in writes:
            by_user[op.user].append((op.version, op.end))
        self._versions: dict[str, list[int]] = {}
        self._earliest_from: dict[str, list[float]] = {}
        for user, acks in by_user.items():
            acks.sort()
            earliest, suffix = float("inf"), []
            for _, end in reversed(acks):
                earliest = min(earliest, end)
                suffix.append(earliest)
            self._versions[user] = [version for version, _ in acks]
            self._earliest_from[user] = suffix[::-1]

    def first_newer(self, user: str, version: int) -> float:
        """The earliest acknowledgement of a version above ``version`` (inf: none)."""
        versions = self._versions.get(user, [])
        index = bisect_right(versions, version)
        return self._earliest_from[user][index] if index < len(versions) else float("inf")


def _read_your_writes(result: WorkerResult) -> list[str]:
    """Reads of a worker that returned less than its own last acknowledged update."""
    own: dict[str, int] = {}
    broken = []
    for op in result.ops:  # one thread per worker: list order is real-time order
        if op.kind == WRITE:
            own[op.user] = max(own.get(op.user, 0), op.version)
        elif op.version < own.get(op.user, 0):
            broken.append(
                f"w{result.worker} {op.user}: read v{op.version} after writing v{own[op.user]}"
            )
    return broken
