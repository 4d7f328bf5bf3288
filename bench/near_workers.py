"""The multi-process parts of ``bench_near``: the children, and the parent's rounds.

Children live in an importable module because ``spawn`` children import their target.
Each talks to the parent over one ``Pipe``: it says ``"up"`` once ready, answers every
request, and returns on ``None`` (or a broken pipe). Timestamps are ``time.monotonic()``,
one clock for all processes on Linux (CLOCK_MONOTONIC).
"""

from __future__ import annotations

import ctypes
import gc
import multiprocessing
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnProcess
from multiprocessing.synchronize import Event as ProcessEvent
from typing import Any, Final, NamedTuple

import redis
from redis.client import PubSub

from penny_cache import PersonalityCache, PersonalityStore, PersonalityTracker
from penny_cache.policy.near import NearCache
from penny_cache.state import PersonalityState

SPAWN: Final = multiprocessing.get_context("spawn")
POLL_TIMEOUT: Final = 2.0  # an invalidation not seen by then counts as lost
POLL_INTERVAL: Final = 20e-6
_PR_SET_TIMERSLACK: Final = 29
RELEASE_TIMEOUT: Final = 60.0
Job = tuple[Callable[..., None], tuple[Any, ...]]


@dataclass(frozen=True)
class Target:
    """Where a child finds Redis, SQL and the user it works on (pickled to the child)."""

    redis_url: str
    database_url: str
    namespace: str
    user: str


class CountingStore(PersonalityStore):
    """A ``PersonalityStore`` that counts its ``load`` calls: one per SQL read."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._count_lock = threading.Lock()
        self.loads = 0

    def load(self, user_id: str) -> PersonalityState:
        with self._count_lock:
            self.loads += 1
        return super().load(user_id)


def open_cache(target: Target) -> PersonalityCache:
    """The cache every process of the benchmark uses: near cache on (the default).

    The near TTL is raised from its default (10 s) so that no entry expires during a
    timed loop: every sample must be a near hit, and an expiry makes one a Redis read.
    """
    return PersonalityCache.from_url(
        target.redis_url, namespace=target.namespace, ttl=3600, near_cache_ttl=600.0
    )


def prime_near(tracker: PersonalityTracker, user: str, version: int, timeout: float = 10.0) -> None:
    """Read until the near cache is trusted and holds ``user`` at ``version`` or later.

    One read is not enough: the first read starts the listener, whose subscription then
    flushes the near cache (what it took in before may have missed a message).
    """
    cache, deadline = tracker.cache, time.monotonic() + timeout
    near = cache.near
    if near is None:
        raise RuntimeError("the near cache is off")
    while True:
        tracker.get_current_personality_state(user)
        state = near.get(user, time.monotonic())
        if cache.near_trusted and state is not None and state.version >= version:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{user} at version {version} never reached the near cache")
        time.sleep(0.001)


def poll(done: Callable[[], bool], timeout: float = POLL_TIMEOUT) -> tuple[float | None, bool]:
    """Poll until ``done()``; return (time.monotonic() when seen, already done at start).

    It sleeps between checks: spinning (even on ``sleep(0)``) takes a vCPU from the
    processes being measured, and can starve the thread that applies the change of the
    GIL for a 5 ms switch interval. A turn is ~45 us here (see ``tighten_timers``).
    """
    mono, sleep, interval = time.monotonic, time.sleep, POLL_INTERVAL
    if done():
        return mono(), True
    deadline = mono() + timeout
    gc.disable()
    try:
        while not done():
            if mono() > deadline:
                return None, False
            sleep(interval)
        return mono(), False
    finally:
        gc.enable()


def tighten_timers() -> None:
    """1 us of timer slack instead of 50 us, so short sleeps are short (best effort)."""
    with suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_TIMERSLACK, 1000, 0, 0, 0)


# -- children --------------------------------------------------------------------------


def _gone(near: NearCache, user: str, version: int) -> bool:
    """True once the near cache no longer serves ``user`` at ``version`` or below."""
    state = near.get(user, time.monotonic())
    return state is None or state.version > version


def penny_watcher(target: Target, conn: Connection) -> None:
    """Per request ``v``: hold the user at version ``v`` in the near cache, say ``ready``,
    then report when an invalidation removed it (the parent commits ``v + 1``)."""
    tighten_timers()
    store = PersonalityStore(target.database_url)
    cache = open_cache(target)
    tracker = PersonalityTracker(store, cache)
    near = cache.near
    assert near is not None
    try:
        conn.send("up")
        while (version := conn.recv()) is not None:
            prime_near(tracker, target.user, version)
            conn.send("ready")
            seen, late = poll(partial(_gone, near, target.user, version))
            conn.send((seen, late, None))
    finally:
        cache.close()
        store.close()


def _receive(pubsub: PubSub, last: list[float], stop: threading.Event) -> None:
    """The raw subscriber thread: ``last`` is [sequence number, time it arrived]."""
    while not stop.is_set():
        message = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if message is not None:
            last[1] = time.monotonic()
            last[0] = int(message["data"])


def raw_watcher(target: Target, channel: str, conn: Connection) -> None:
    """The floor: a plain redis-py subscriber thread. Per request ``n``: say ``ready``,
    then report when message ``n`` arrived, seen the same way as in ``penny_watcher``."""
    tighten_timers()
    client = redis.Redis.from_url(target.redis_url)
    pubsub = PubSub(connection_pool=client.connection_pool)
    pubsub.subscribe(channel)
    for _ in range(50):  # the confirmation: from then on every PUBLISH reaches us
        confirm = pubsub.get_message(timeout=0.1)
        if confirm is not None and confirm["type"] == "subscribe":
            break
    last, stop = [0.0, 0.0], threading.Event()
    receiver = threading.Thread(target=_receive, args=(pubsub, last, stop), daemon=True)
    receiver.start()
    try:
        conn.send("up")
        while (seq := conn.recv()) is not None:
            conn.send("ready")
            seen, late = poll(lambda: last[0] >= seq)  # runs before seq moves on
            conn.send((seen, late, last[1]))
    finally:
        stop.set()
        receiver.join(5)
        pubsub.close()
        client.close()


@dataclass(frozen=True)
class StampedeResult:
    """One worker process's share of one stampede round."""

    loads: int  # store.load calls made during the round
    reads: int  # reads that returned a state
    versions: tuple[int, ...]  # distinct versions the reads returned
    errors: tuple[str, ...]
    first_done: float  # when the first and the last read returned
    last_done: float


@dataclass
class _Reads:
    done: list[float] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _read(tracker: PersonalityTracker, user: str, release: threading.Event, out: _Reads) -> None:
    release.wait(RELEASE_TIMEOUT)
    try:
        out.versions.append(tracker.get_current_personality_state(user).version)
    except Exception as exc:
        out.errors.append(repr(exc))
    out.done.append(time.monotonic())


def _stampede_round(
    target: Target, store: CountingStore, threads: int, conn: Connection, go: ProcessEvent
) -> StampedeResult:
    """A fresh cache and tracker; ``threads`` readers parked on one event that ``go``
    (set by the parent for all processes at once) releases."""
    cache = open_cache(target)
    try:
        tracker = PersonalityTracker(store, cache)
        cache.bind_store(store.identity)  # reading the store id is no load: do it before
        cache.ping()
        release, out, before = threading.Event(), _Reads(), store.loads
        args = (tracker, target.user, release, out)
        readers = [threading.Thread(target=_read, args=args) for _ in range(threads)]
        for reader in readers:
            reader.start()
        conn.send("ready")
        go.wait(RELEASE_TIMEOUT)
        release.set()
        for reader in readers:
            reader.join()
    finally:
        cache.close()
    done = out.done or [float("nan")]
    versions, errors = tuple(sorted(set(out.versions))), tuple(out.errors)
    return StampedeResult(store.loads - before, len(out.versions), versions, errors,
                          min(done), max(done))  # fmt: skip


def stampede_worker(target: Target, threads: int, go: ProcessEvent, conn: Connection) -> None:
    """Per ``"prepare"``: one stampede round; the result goes back over ``conn``."""
    store = CountingStore(target.database_url)
    try:
        store.identity  # noqa: B018 - creates the schema and reads the store id once
        conn.send("up")
        while conn.recv() == "prepare":
            conn.send(_stampede_round(target, store, threads, conn, go))
    finally:
        store.close()


# -- the parent's side -----------------------------------------------------------------


@contextmanager
def children(jobs: Sequence[Job]) -> Iterator[list[Connection]]:
    """Spawned processes, each with a pipe (passed last); stopped however the run ends."""
    procs: list[SpawnProcess] = []
    conns: list[Connection] = []
    try:
        for job, args in jobs:
            mine, theirs = SPAWN.Pipe()
            procs.append(SPAWN.Process(target=job, args=(*args, theirs), daemon=True))
            procs[-1].start()
            theirs.close()
            conns.append(mine)
        for conn in conns:
            expect(conn, "up", 60.0)
        yield conns
    finally:
        for conn in conns:
            with suppress(OSError):
                conn.send(None)
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
                proc.join(10)


def expect(conn: Connection, what: str, timeout: float = 30.0) -> None:
    if not conn.poll(timeout):
        raise TimeoutError(f"a child did not say {what!r} within {timeout}s")
    if (got := conn.recv()) != what:
        raise RuntimeError(f"a child said {got!r}, expected {what!r}")


class Sample(NamedTuple):
    """One invalidation round in time.monotonic() seconds (None: never seen)."""

    seen: float | None  # the watcher saw it
    late: bool  # it had already happened when the watcher started polling
    returned: float  # the parent's call returned
    arrived: float | None = None  # raw only: the subscriber thread received the message


@dataclass
class Propagation:
    """Latencies (seen - returned) in us per kind; None where the change was never seen."""

    penny: list[float | None] = field(default_factory=list)
    raw: list[float | None] = field(default_factory=list)
    raw_arrival: list[float | None] = field(default_factory=list)
    late: dict[str, int] = field(default_factory=lambda: {"penny": 0, "raw": 0})

    def record(self, kind: str, sample: Sample) -> None:
        def us(at: float | None) -> float | None:
            return None if at is None else (at - sample.returned) * 1e6

        (self.penny if kind == "penny" else self.raw).append(us(sample.seen))
        if kind == "raw":
            self.raw_arrival.append(us(sample.arrived))
        self.late[kind] += int(sample.late)


def _penny_round(tracker: PersonalityTracker, conn: Connection, user: str, version: int) -> Sample:
    conn.send(version)
    expect(conn, "ready")
    value = (version % 97) / 100
    state = tracker.update_personality_dimension(user, "communication_formality", value)
    returned = time.monotonic()
    if state.version != version + 1:
        raise RuntimeError(f"expected version {version + 1}, committed {state.version}")
    seen, late, _ = conn.recv()
    return Sample(seen, late, returned)


def _raw_round(raw: redis.Redis, conn: Connection, channel: str, seq: int) -> Sample:
    conn.send(seq)
    expect(conn, "ready")
    raw.publish(channel, str(seq))
    returned = time.monotonic()
    seen, late, arrived = conn.recv()
    return Sample(seen, late, returned, arrived)


def measure_propagation(
    tracker: PersonalityTracker, raw: redis.Redis, target: Target, channel: str, rounds: range
) -> Propagation:
    """Rounds of one penny and one raw invalidation, alternating which goes first;
    rounds below ``rounds.start`` are warm-up. The parent makes the only commits."""
    jobs: list[Job] = [(penny_watcher, (target,)), (raw_watcher, (target, channel))]
    out = Propagation()
    version = tracker.get_current_personality_state(target.user).version
    with children(jobs) as (penny, sub):
        for r in range(rounds.stop):
            for kind in ("penny", "raw") if r % 2 == 0 else ("raw", "penny"):
                if kind == "penny":
                    sample = _penny_round(tracker, penny, target.user, version)
                    version += 1
                else:
                    sample = _raw_round(raw, sub, channel, r + 1)
                if r >= rounds.start:
                    out.record(kind, sample)
    return out


def measure_stampede(
    cache: PersonalityCache, raw: redis.Redis, target: Target, rounds: int, shape: tuple[int, int]
) -> list[dict[str, Any]]:
    """Each round: fresh caches in ``shape[0]`` workers of ``shape[1]`` threads, the
    entry dropped from Redis (and every near cache), then one release for all."""
    go = SPAWN.Event()
    jobs: list[Job] = [(stampede_worker, (target, shape[1], go))] * shape[0]
    out = []
    with children(jobs) as conns:
        for _ in range(rounds):
            for conn in conns:
                conn.send("prepare")
            for conn in conns:
                expect(conn, "ready", 60.0)
            cache.invalidate(target.user)
            absent = not raw.exists(cache.keys.state(target.user))
            released = time.monotonic()
            go.set()
            results: list[StampedeResult] = [conn.recv() for conn in conns]
            go.clear()
            out.append(_stampede_summary(results, released, absent))
    return out


def _stampede_summary(
    results: Sequence[StampedeResult], released: float, absent: bool
) -> dict[str, Any]:
    return {
        "sql_loads": sum(r.loads for r in results),
        "loads_per_process": [r.loads for r in results],
        "reads": sum(r.reads for r in results),
        "first_returned_ms": (min(r.first_done for r in results) - released) * 1000,
        "all_returned_ms": (max(r.last_done for r in results) - released) * 1000,
        "versions": sorted({v for r in results for v in r.versions}),
        "errors": [e for r in results for e in r.errors][:5],
        "entry_absent_at_release": absent,
    }
