"""Multi-process coherence, checked on merged operation histories.

Four spawned workers share five users on one real redis-server and one SQLite file, each
reading (near cache on) and updating for a few seconds while recording every call; the
merged history is then checked (see ``coherence_workers.check_history``) for

1. bounded staleness: a read that starts more than ``BOUND`` (``max_staleness`` plus a
   little slack) after an update was acknowledged returns that version or a newer one;
2. read-your-writes: a process never reads less than its own acknowledged update;
3. no invented versions: every version read was committed (or is 0, the default);
4. convergence: once writes stop, every process reads SQL's final version of every user;

plus exact counters: the shared hits + misses equal the tracker reads of all workers,
no exception reaching a caller, and SQL's versions equal to the acknowledged updates.
Every history runs on both APIs (``api``: the sync ``PersonalityTracker``, or the
``AsyncPersonalityTracker`` awaited on an event loop, as the HTTP service runs it).
The same checks then run while a fault thread in this process hurts Redis (pub/sub
connections killed, a restart, CLIENT PAUSE). Two deterministic two-cache tests pin the
case these runs found: an update committed while its write-through cannot reach Redis
must still reach the other processes' near caches promptly (queued, then delivered by
the listener thread as soon as Redis answers, not on the writer's next Redis read).
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.context import SpawnProcess
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any, Final

import pytest
import redis

from penny_cache.app.embedded import RedisServerProcess, wait_until
from penny_cache.cache import PersonalityCache
from penny_cache.config import Settings
from penny_cache.store.database import PersonalityStore
from penny_cache.tracker import PersonalityTracker
from tests.integration.coherence_workers import (
    BARRIER_TIMEOUT,
    DIMENSION,
    Plan,
    Report,
    WorkerResult,
    check_history,
    run_worker,
)
from tests.integration.coherence_workers import _targets as sql_versions

pytestmark = [pytest.mark.integration, pytest.mark.faults]
SPAWN = multiprocessing.get_context("spawn")
WORKERS: Final = 4
USERS: Final = tuple(f"coh-{n}" for n in range(5))
MAX_STALENESS: Final = 0.5
BOUND: Final = MAX_STALENESS + 0.1
JOIN_WITHIN: Final = 45.0
APIS: Final = ("sync", "asyncio")
both_apis = pytest.mark.parametrize("api", APIS)

FaultLoop = Callable[[Any, threading.Event, list[float]], None]  # (servers, stop, times)


@dataclass
class Run:
    """One harness run: the workers' results, the checked history and the shared stats."""

    results: list[WorkerResult]
    report: Report
    stats: dict[str, Any]
    faults: list[float]  # seconds after the workload started
    began: float = 0.0  # when the workload started (time.monotonic(), as the ops)
    api: str = "sync"
    final: dict[str, int] = dataclasses.field(default_factory=dict)  # SQL's versions

    def summary(self) -> str:
        near = sum(int(r.stats.get("near_hits", 0)) for r in self.results)
        keys = ("requests", "redis_errors", "listener_reconnects", "sequence_gaps")
        counters = ", ".join(f"{k} {self.stats.get(k)}" for k in keys)
        faults = ", ".join(f"{t:.2f}" for t in self.faults)
        return (
            f"{self.api}: {self.report.summary()}; near hits {near}, {counters}; "
            f"faults at [{faults}] s"
        )

    def recheck(self, bound: float) -> Report:
        """The same history checked against another staleness bound."""
        return check_history(self.results, bound, self.final)


class FaultThread(threading.Thread):
    """Runs a fault loop until told to stop; keeps its exception for the test."""

    def __init__(self, loop: FaultLoop, server: Any) -> None:
        super().__init__(name="coherence-fault", daemon=True)
        self._loop = loop
        self._server = server
        self.stop_event = threading.Event()
        self.times: list[float] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._loop(self._server, self.stop_event, self.times)
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.error = exc


def run_history(
    server: Any,
    database_url: str,
    namespace: str,
    out_dir: Path,
    fault: FaultLoop | None = None,
    *,
    options: dict[str, Any] | None = None,
    duration: float = 3.0,
    api: str = "sync",
    roles: tuple[str, ...] = (),
    writer_url: str | None = None,
    write_mode: str | None = None,
) -> Run:
    """Run the workers (and the fault loop, while they work) and check their history.

    ``server`` has a ``url`` and is what the fault loop hurts; ``options`` are more
    Settings fields (a Sentinel or Cluster topology); ``api``: "sync" or "asyncio";
    ``roles``: one per worker (``WORKERS`` mixed ones when empty); ``writer_url``: the
    Redis URL of the writer workers (a proxy), the others use ``server.url``;
    ``write_mode``: the trackers' (None: their default)."""
    store = PersonalityStore(database_url)
    assert store.identity  # tables up front: 4 first uses at once can hit "database is locked"
    store.close()
    extra = tuple((options or {}).items())
    plan = Plan(
        server.url,
        database_url,
        namespace,
        USERS,
        duration=duration,
        max_staleness=MAX_STALENESS,
        options=extra,
        api=api,
        roles=roles,
        writer_redis_url=writer_url,
        write_mode=write_mode,
    )
    workers = len(roles) or WORKERS
    start, writes_done = SPAWN.Barrier(workers + 1), SPAWN.Barrier(workers)
    paths = [out_dir / f"worker-{n}.json" for n in range(workers)]
    procs = [
        SPAWN.Process(target=run_worker, args=(plan, n, start, writes_done, str(paths[n])))
        for n in range(workers)
    ]
    for proc in procs:
        proc.start()
    try:
        _start_together(start, procs)
        began = time.monotonic()
        fault_times = _during(plan.duration, server, fault)
        _join(procs)
    finally:
        _reap(procs)
    results = [WorkerResult.load(path) for path in paths]
    final = sql_versions(plan)
    report = check_history(results, BOUND, final)
    stats = shared_stats(plan.settings())
    return Run(results, report, stats, [t - began for t in fault_times], began, api, final)


def _during(duration: float, server: Any, fault: FaultLoop | None) -> list[float]:
    """Wait out the workload, running ``fault`` meanwhile; the times it recorded."""
    if fault is None:
        time.sleep(duration)  # pacing: the workers stop by their own deadline
        return []
    thread = FaultThread(fault, server)
    thread.start()
    time.sleep(duration)
    thread.stop_event.set()
    thread.join(30)
    assert not thread.is_alive(), "the fault loop did not stop"
    if thread.error is not None:
        raise thread.error
    return thread.times


def _start_together(start: Barrier, procs: list[SpawnProcess]) -> None:
    """Join the start barrier once every worker waits there; fail fast if one died."""
    deadline = time.monotonic() + BARRIER_TIMEOUT
    while start.n_waiting < len(procs):
        dead = {n: p.exitcode for n, p in enumerate(procs) if not p.is_alive()}
        assert not dead, f"workers died before the start (exit codes {dead}; tracebacks above)"
        assert time.monotonic() < deadline, "the workers did not reach the start barrier"
        time.sleep(0.05)
    start.wait(BARRIER_TIMEOUT)


def _join(procs: list[SpawnProcess]) -> None:
    deadline = time.monotonic() + JOIN_WITHIN
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
    codes = [proc.exitcode for proc in procs]
    assert codes == [0] * len(procs), f"worker exit codes {codes} (tracebacks above)"


def _reap(procs: list[SpawnProcess]) -> None:
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
            proc.join(10)


def shared_stats(settings: Settings) -> dict[str, Any]:
    """``get_stats()`` as any process sees it once the workers have closed."""
    quiet = dataclasses.replace(settings, near_cache=False)
    with PersonalityCache.from_settings(quiet) as cache:
        return cache.get_stats()


class CoherenceViolationError(AssertionError):
    """Property (1) or (4) broken: the kind of failure a known bug is allowed to cause."""


def assert_coherent(run: Run, bound: float = BOUND) -> None:
    """Properties (2) and (3), no error reaching a caller, SQL's versions equal to the
    acknowledged updates and the counters (plain asserts), then (4) and (1)."""
    report = run.report if bound == BOUND else run.recheck(bound)
    assert report.writes > 0 and report.reads > 10 * WORKERS
    assert report.errors == [], report.errors[:10]
    assert report.uncounted == [], report.uncounted
    assert report.invented == [], report.invented[:10]
    assert report.not_own_writes == [], report.not_own_writes[:10]
    assert run.stats["shared"], "Redis must answer get_stats() at the end"
    assert run.stats["requests"] == report.reads, (run.stats, report.reads)
    assert run.stats["hits"] + run.stats["misses"] == report.reads
    if report.not_converged:
        raise CoherenceViolationError(f"not converged within 5 s: {report.not_converged}")
    if report.stale:
        raise CoherenceViolationError(f"{len(report.stale)} stale reads: {report.stale[:5]}")


# -- fault loops (run in a thread of this process while the workers work) ---------------


def kill_pubsub_connections(
    server: RedisServerProcess, stop: threading.Event, times: list[float]
) -> None:
    """CLIENT KILL TYPE pubsub every 300 ms."""
    client = redis.Redis.from_url(server.url, socket_timeout=2)
    try:
        while not stop.wait(0.3):
            client.client_kill_filter(_type="pubsub")
            times.append(time.monotonic())
    finally:
        client.close()


def restart_redis_once(
    server: RedisServerProcess, stop: threading.Event, times: list[float]
) -> None:
    """SIGKILL redis-server 1.2 s in and start it again, empty, on the same port."""
    if stop.wait(1.2):
        return
    times.append(time.monotonic())
    server.kill()
    server.start()
    times.append(time.monotonic())


def pause_all_clients(
    server: RedisServerProcess, stop: threading.Event, times: list[float]
) -> None:
    """CLIENT PAUSE 500 ALL at 0.8 s, and again at 2.3 s: the backends' 1 s cooldown after
    the second outlasts the workload, so its last updates are committed while Redis is
    skipped."""
    client = redis.Redis.from_url(server.url, socket_timeout=2)
    try:
        for delay in (0.8, 1.5):
            if stop.wait(delay):
                return
            client.client_pause(500, all=True)  # CLIENT PAUSE 500 ALL
            times.append(time.monotonic())
    finally:
        client.close()


# -- the tests --------------------------------------------------------------------------


@both_apis
def test_history_is_coherent_without_faults(
    own_redis: RedisServerProcess, sqlite_url: str, namespace: str, tmp_path: Path, api: str
) -> None:
    """With Redis healthy, 4 processes x 5 users: (1) reads lag acknowledged updates by at
    most max_staleness, (2) read-your-writes, (3) no invented versions, (4) every process
    converges to SQL, and shared hits + misses equal the tracker reads exactly."""
    run = run_history(own_redis, sqlite_url, namespace, tmp_path, api=api)
    print(f"\n[no faults] {run.summary()}")
    assert_coherent(run)


@both_apis
def test_history_is_coherent_while_pubsub_connections_are_killed(
    own_redis: RedisServerProcess, sqlite_url: str, namespace: str, tmp_path: Path, api: str
) -> None:
    """CLIENT KILL TYPE pubsub every 300 ms: a lost subscription costs near-cache hits,
    never coherence: properties (1)-(4) and exact counters hold."""
    run = run_history(own_redis, sqlite_url, namespace, tmp_path, kill_pubsub_connections, api=api)
    print(f"\n[pubsub kills] {run.summary()}")
    assert run.stats["listener_reconnects"] >= WORKERS
    assert_coherent(run)


@both_apis
def test_history_is_coherent_across_a_redis_restart(
    own_redis: RedisServerProcess, sqlite_url: str, namespace: str, tmp_path: Path, api: str
) -> None:
    """Redis SIGKILLed and restarted empty mid-run: reads fall back to SQL, and (1)-(4)
    and exact counters hold."""
    run = run_history(own_redis, sqlite_url, namespace, tmp_path, restart_redis_once, api=api)
    print(f"\n[restart] {run.summary()}")
    assert run.stats["redis_errors"] >= 1
    assert_coherent(run)


@both_apis
def test_history_is_coherent_across_client_pauses(
    own_redis: RedisServerProcess, sqlite_url: str, namespace: str, tmp_path: Path, api: str
) -> None:
    """CLIENT PAUSE 500 ALL twice mid-run: (1)-(4) and exact counters hold; updates whose
    write-through timed out reach the other near caches once Redis answers."""
    run = run_history(own_redis, sqlite_url, namespace, tmp_path, pause_all_clients, api=api)
    print(f"\n[client pause] {run.summary()}")
    assert run.stats["redis_errors"] >= 1
    assert_coherent(run)


# -- undelivered write-throughs, in two caches (as two processes), deterministically -----


@contextlib.contextmanager
def two_trackers(
    server: RedisServerProcess, sqlite_url: str, namespace: str, **options: Any
) -> Iterator[tuple[PersonalityTracker, PersonalityTracker]]:
    """Trackers A and B on caches of their own, each holding version 1 of "u" in a near
    cache its listener vouches for."""
    caches = [
        PersonalityCache.from_url(server.url, namespace=namespace, max_staleness=1.0, **options)
        for _ in range(2)
    ]
    a, b = (PersonalityTracker(PersonalityStore(sqlite_url), c) for c in caches)
    try:
        a.update_personality_dimension("u", DIMENSION, 0.1)
        wait_until(  # reading starts the listener; then wait for its PONGs
            lambda: _read("u", a, b) == [1, 1] and all(c.near_trusted for c in caches),
            10.0,
            "both to hold version 1 in a trusted near cache",
        )
        yield a, b
    finally:
        for tracker in (a, b):
            tracker.cache.close()
            tracker.store.close()


def _read(user: str, *trackers: PersonalityTracker) -> list[int]:
    return [t.get_current_personality_state(user).version for t in trackers]


def require_seen(a: PersonalityTracker, b: PersonalityTracker, version: int, within: float) -> None:
    """Both keep reading "u"; B must read ``version`` (or newer) ``within`` seconds."""
    started = time.monotonic()
    while (seen := _read("u", a, b)[1]) < version:
        if time.monotonic() - started > within:
            raise CoherenceViolationError(f"B still reads v{seen}, not v{version}, {within} s on")
        time.sleep(0.02)


def test_an_update_committed_during_a_pause_reaches_other_near_caches(
    own_redis: RedisServerProcess, sqlite_url: str, namespace: str
) -> None:
    """A commits an update during CLIENT PAUSE 500 ALL (its write-through times out); once
    Redis answers again, B reads it within max_staleness (+ 0.5 s slack) while A and B
    keep reading, though A's own reads are near hits that never touch Redis."""
    with two_trackers(own_redis, sqlite_url, namespace) as (a, b):
        pauser = redis.Redis.from_url(own_redis.url, socket_timeout=5)
        pauser.client_pause(500, all=True)
        committed = a.update_personality_dimension("u", DIMENSION, 0.2).version
        assert a.cache.pending_writes == 1, "the write-through should have timed out"
        assert pauser.ping()  # answered once the pause is over
        pauser.close()
        require_seen(a, b, committed, within=1.0 + 0.5)


def test_updates_committed_while_cooling_down_after_a_restart_reach_other_near_caches(
    own_redis: RedisServerProcess, sqlite_url: str, namespace: str
) -> None:
    """Redis restarts while A's and B's breakers are open (a 3 s cooldown). Their trust
    returns only through a recovery, which probes Redis and closes the breakers: B's and
    then A's updates go through at once (they used to be refused for the rest of the
    cooldown and queued), and B reads A's version within max_staleness (+ 0.5 s slack)
    while A and B keep reading."""
    with two_trackers(own_redis, sqlite_url, namespace, cooldown=3.0, breaker_failures=1) as (
        a,
        b,
    ):
        own_redis.kill()
        assert not a.cache.ping() and not b.cache.ping()  # both now cool down for 3 s
        wait_until(lambda: not (a.cache.near_trusted or b.cache.near_trusted), 5.0, "distrust")
        own_redis.start()
        wait_until(lambda: a.cache.near_trusted and b.cache.near_trusted, 5.0, "resubscribed")
        b.update_personality_dimension("u", DIMENSION, 0.2)
        committed = a.update_personality_dimension("u", DIMENSION, 0.3).version
        assert a.cache.pending_writes == 0, "the recovery should have closed the breaker"
        require_seen(a, b, committed, within=1.0 + 0.5)
