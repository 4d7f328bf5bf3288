"""Worker processes and the history checker of the multi-process coherence tests.

Each worker (a ``spawn`` child: it imports this module) runs a timed mix of tracker reads
and updates on a few shared users and records every operation as
``(kind, user, version, start, end)`` with ``time.monotonic()``: CLOCK_MONOTONIC is one
clock for the whole machine on Linux, so the histories of all workers can be merged.
After the deadline a worker waits until every worker has stopped writing, then polls its
reads until they equal SQL's final versions. The checker below is pure: it gets the
workers' results and a propagation bound and says which reads broke which property.
"""

from __future__ import annotations

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

from penny_cache.cache import PersonalityCache
from penny_cache.config import Settings
from penny_cache.store.database import PersonalityStore
from penny_cache.tracker import PersonalityTracker

READ: Final = "r"
WRITE: Final = "w"
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

    def settings(self) -> Settings:
        return Settings(
            redis_url=self.redis_url,
            database_url=self.database_url,
            namespace=self.namespace,
            max_staleness=self.max_staleness,
            **dict(self.options),
        )


@dataclass
class WorkerResult:
    """A worker's history, its convergence times (None: did not converge), its counters."""

    worker: int
    ops: list[Op]
    converged: dict[str, float | None]
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def reads(self) -> int:
        return sum(1 for op in self.ops if op.kind == READ)

    def dump(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: Path) -> WorkerResult:
        raw = json.loads(path.read_text())
        ops = [Op(*row) for row in raw["ops"]]
        return cls(raw["worker"], ops, raw["converged"], raw["stats"])


# -- the worker process ----------------------------------------------------------------


def run_worker(plan: Plan, worker: int, start: Barrier, writes_done: Barrier, out: str) -> None:
    """Warm up, run the timed workload, converge, publish counters, write the result."""
    faulthandler.dump_traceback_later(STUCK_AFTER)  # a stuck worker shows where it is
    cache = PersonalityCache.from_settings(plan.settings())
    store = PersonalityStore(plan.database_url)
    tracker = PersonalityTracker(store, cache)
    ops: list[Op] = []
    try:
        for user in plan.users:  # binds the store and starts the listener
            _read(tracker, user, ops)
        start.wait(BARRIER_TIMEOUT)
        _workload(plan, tracker, random.Random(worker), ops)
        writes_done.wait(BARRIER_TIMEOUT)
        converged = _converge(plan, tracker, ops)
        stats = cache.local_stats()
    except BaseException:
        start.abort()  # never leave the others (or the parent) waiting for us
        writes_done.abort()
        raise
    finally:
        _close_when_reachable(cache)
        store.close()
    WorkerResult(worker, ops, converged, stats).dump(Path(out))
    faulthandler.cancel_dump_traceback_later()


def _read(tracker: PersonalityTracker, user: str, ops: list[Op]) -> int:
    started = time.monotonic()
    version = tracker.get_current_personality_state(user).version
    ops.append(Op(READ, user, version, started, time.monotonic()))
    return version


def _write(tracker: PersonalityTracker, user: str, value: float, ops: list[Op]) -> None:
    started = time.monotonic()
    state = tracker.update_personality_dimension(user, DIMENSION, value)
    ops.append(Op(WRITE, user, state.version, started, time.monotonic()))


def _workload(plan: Plan, tracker: PersonalityTracker, rng: random.Random, ops: list[Op]) -> None:
    deadline = time.monotonic() + plan.duration
    while time.monotonic() < deadline:
        user = rng.choice(plan.users)
        if rng.random() < plan.write_ratio:
            _write(tracker, user, round(rng.random(), 6), ops)
        else:
            _read(tracker, user, ops)
        time.sleep(rng.uniform(0, 2 * plan.pace))


def _converge(plan: Plan, tracker: PersonalityTracker, ops: list[Op]) -> dict[str, float | None]:
    """Seconds until this process read SQL's final version of each user (None: never)."""
    store = PersonalityStore(plan.database_url)
    target = {user: store.load(user).version for user in plan.users}
    store.close()
    began = time.monotonic()
    took: dict[str, float | None] = dict.fromkeys(plan.users)
    while time.monotonic() < began + plan.converge_within:
        for user in [u for u, t in took.items() if t is None]:
            if _read(tracker, user, ops) == target[user]:
                took[user] = time.monotonic() - began
        if all(t is not None for t in took.values()):
            break
        time.sleep(0.01)
    for user in plan.users:  # one more read each: what converged must stay converged
        _read(tracker, user, ops)
    return took


def _close_when_reachable(cache: PersonalityCache, within: float = 5.0) -> None:
    """Close once Redis answers: closing folds this process's counters into the totals,
    which a backend still cooling down after a fault would skip."""
    deadline = time.monotonic() + within
    while not cache.ping() and time.monotonic() < deadline:
        time.sleep(0.05)
    cache.close()


# -- the history checker ---------------------------------------------------------------


@dataclass
class Report:
    """What the merged history shows; the lists hold one line per violating read."""

    ops: int = 0
    reads: int = 0
    writes: int = 0
    worst_lag: float = 0.0
    stale: list[str] = field(default_factory=list)
    not_own_writes: list[str] = field(default_factory=list)
    invented: list[str] = field(default_factory=list)
    not_converged: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.ops} ops ({self.reads} reads, {self.writes} writes), "
            f"worst lag {self.worst_lag * 1000:.0f} ms, violations: "
            f"stale {len(self.stale)}, read-your-writes {len(self.not_own_writes)}, "
            f"invented {len(self.invented)}, not converged {len(self.not_converged)}"
        )


def check_history(results: list[WorkerResult], bound: float) -> Report:
    """Check properties (1) bounded staleness, (2) read-your-writes, (3) no invented
    versions and (4) convergence over every worker's history."""
    ops = [(r.worker, op) for r in results for op in r.ops]
    writes = [op for _, op in ops if op.kind == WRITE]
    report = Report(ops=len(ops), writes=len(writes), reads=len(ops) - len(writes))
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
