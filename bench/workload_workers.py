"""The worker processes of ``bench_workload``: one library, one Zipf schedule, one loop.

Children live in an importable module because ``spawn`` children import their target.
Every library runs the very same schedule (same seed per worker index), through a client
with two calls, ``read(user) -> version`` and ``update(user, value) -> version``, so the
only thing that differs between rows of the report is the caching library.

A worker: builds its client, warms up (untimed), publishes its counters, then meets the
parent at a ``Barrier`` four times: *ready* (the parent snapshots Redis), *start* (the
timed loop begins), *stopped* (the parent snapshots Redis again) and *release* (the
worker closes its client and sends its ``WorkerResult`` on the queue).
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import random
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from functools import partial
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from typing import Any, Final, Protocol

from penny_cache import PersonalityStore
from penny_cache.state import DimensionValue, PersonalityState
from penny_cache.store.database import BeforeCommit

DIMENSION: Final = "communication_formality"
TTL_S: Final = 300
SCHEDULE_LEN: Final = 1 << 17  # ops per worker before the schedule repeats (a power of 2)
Counts = dict[str, float]


@dataclass(frozen=True)
class WorkerSpec:
    """What one worker runs (pickled to the child)."""

    library: str  # "penny_cache", "dogpile" or "cashews"
    index: int
    redis_port: int
    database_url: str
    namespace: str
    users: int
    zipf_s: float
    update_share: float
    warmup_s: float
    duration_s: float
    seed: int
    reservoir: int


@dataclass(frozen=True)
class WorkerResult:
    """One worker's timed window: latency samples in ns and counter deltas."""

    index: int
    reads: int
    updates: int
    elapsed_s: float
    busy_s: tuple[float, float]  # time spent inside read calls, inside update calls
    read_ns: list[int]
    update_ns: list[int]
    counts: Counts  # hits, misses, near_hits, sql_loads, sql_updates, redis_errors, lag_*
    stale_reads: int  # over warm-up and timed loop: reads older than this worker's write
    checked_reads: int
    error: str | None = None


def user_id(rank: int) -> str:
    return f"user-{rank:05d}"


def zipf_ranks(users: int, s: float, size: int, seed: int) -> list[int]:
    """``size`` ranks in [0, users), P(rank k) ~ 1/(k+1)^s: numpy if there, else bisect."""
    try:
        import numpy as np
    except ImportError:
        weights = list(itertools.accumulate(1.0 / (k + 1) ** s for k in range(users)))
        rng = random.Random(seed)
        total = weights[-1]
        return [bisect.bisect_left(weights, rng.random() * total) for _ in range(size)]
    p = 1.0 / np.arange(1, users + 1, dtype=np.float64) ** s
    generator = np.random.default_rng(seed)
    return [int(r) for r in generator.choice(users, size=size, p=p / p.sum())]


def build_schedule(spec: WorkerSpec) -> list[tuple[str, float | None]]:
    """(user, None) is a read, (user, value) an update: drawn before timing, so the timed
    loop pays for no random numbers."""
    rng = random.Random(spec.seed)
    ids = [user_id(rank) for rank in range(spec.users)]
    ranks = zipf_ranks(spec.users, spec.zipf_s, SCHEDULE_LEN, spec.seed)
    share = spec.update_share
    return [(ids[r], round(rng.random(), 3) if rng.random() < share else None) for r in ranks]


class Reservoir:
    """At most ``cap`` latency samples, a uniform sample of all seen (Algorithm R)."""

    def __init__(self, cap: int, seed: int) -> None:
        self.cap, self.seen, self.total_ns, self.samples = cap, 0, 0, list[int]()
        self._rng = random.Random(seed)

    def add(self, ns: int) -> None:
        self.seen += 1
        self.total_ns += ns
        if len(self.samples) < self.cap:
            self.samples.append(ns)
        elif (j := self._rng.randrange(self.seen)) < self.cap:
            self.samples[j] = ns


class Tally:
    """Samples of the current phase, and read-your-writes checks across all phases."""

    def __init__(self, cap: int, seed: int) -> None:
        self._cap, self._seed = cap, seed
        self.written: dict[str, int] = {}  # newest version this worker committed, per user
        self.stale = self.checked = 0
        self.restart()

    def restart(self) -> None:
        self.reads, self.updates = (
            Reservoir(self._cap, self._seed),
            Reservoir(self._cap, ~self._seed),
        )

    def read(self, user: str, version: int, ns: int) -> None:
        self.reads.add(ns)
        self.checked += 1
        if version < self.written.get(user, 0):
            self.stale += 1

    def update(self, user: str, version: int, ns: int) -> None:
        self.updates.add(ns)
        if version > self.written.get(user, 0):
            self.written[user] = version


class CountingStore(PersonalityStore):
    """A ``PersonalityStore`` that counts SQL reads and committed updates.

    Plain ints: only the worker's main thread calls the store (no outbox sweeper).
    """

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.loads = self.updates = 0

    def load(self, user_id: str) -> PersonalityState:
        self.loads += 1
        return super().load(user_id)

    def update_dimension(
        self,
        user_id: str,
        dimension: str,
        value: DimensionValue,
        confidence_change: float = 0.0,
        context: str | None = None,
        *,
        confidence: float | None = None,
        before_commit: BeforeCommit | None = None,
    ) -> PersonalityState:
        self.updates += 1
        return super().update_dimension(
            user_id,
            dimension,
            value,
            confidence_change,
            context,
            confidence=confidence,
            before_commit=before_commit,
        )


# -- the loops -------------------------------------------------------------------------

Schedule = list[tuple[str, float | None]]


def sync_loop(
    read: Callable[[str], int], update: Callable[[str, float], int], ops: Schedule, tally: Tally,
    seconds: float,
) -> float:  # fmt: skip
    """Run the schedule for ``seconds``; return the seconds actually spent."""
    clock, mask, i = time.perf_counter_ns, len(ops) - 1, 0
    began = now = clock()
    deadline = began + int(seconds * 1e9)
    while now < deadline:
        user, value = ops[i & mask]
        i += 1
        start = clock()
        if value is None:
            version = read(user)
            now = clock()
            tally.read(user, version, now - start)
        else:
            version = update(user, value)
            now = clock()
            tally.update(user, version, now - start)
    return (now - began) / 1e9


async def async_loop(
    read: Callable[[str], Coroutine[Any, Any, int]],
    update: Callable[[str, float], Coroutine[Any, Any, int]],
    ops: Schedule, tally: Tally, seconds: float,
) -> float:  # fmt: skip
    """``sync_loop`` with ``await``: the same schedule and the same clock reads."""
    clock, mask, i = time.perf_counter_ns, len(ops) - 1, 0
    began = now = clock()
    deadline = began + int(seconds * 1e9)
    while now < deadline:
        user, value = ops[i & mask]
        i += 1
        start = clock()
        if value is None:
            version = await read(user)
            now = clock()
            tally.read(user, version, now - start)
        else:
            version = await update(user, value)
            now = clock()
            tally.update(user, version, now - start)
    return (now - began) / 1e9


# -- the clients -----------------------------------------------------------------------


class Client(Protocol):
    def run(self, ops: Schedule, tally: Tally, seconds: float) -> float: ...
    def settle(self) -> None: ...
    def counts(self) -> Counts: ...
    def close(self) -> None: ...


class PennyClient:
    """penny_cache as an application uses it: tracker, near cache on, metrics on."""

    def __init__(self, spec: WorkerSpec) -> None:
        from prometheus_client import CollectorRegistry

        from penny_cache import PersonalityCache, PersonalityTracker
        from penny_cache.observe.metrics import ProcessMetrics

        self.store = CountingStore(spec.database_url)
        self.registry = CollectorRegistry()
        url = f"redis://127.0.0.1:{spec.redis_port}/0"
        metrics = ProcessMetrics(self.registry)
        self.cache = PersonalityCache.from_url(
            url, namespace=spec.namespace, ttl=TTL_S, near_cache=True, metrics=metrics
        )
        self.tracker = PersonalityTracker(self.store, self.cache, outbox_interval=None)

    def read(self, user: str) -> int:
        return self.tracker.get_current_personality_state(user).version

    def update(self, user: str, value: float) -> int:
        return self.tracker.update_personality_dimension(user, DIMENSION, value).version

    def run(self, ops: Schedule, tally: Tally, seconds: float) -> float:
        return sync_loop(self.read, self.update, ops, tally, seconds)

    def settle(self) -> None:
        """Publish the warm-up's counters, so the parent's snapshot is exact."""
        self.cache.flush_stats()

    def counts(self) -> Counts:
        stats = self.cache.local_stats()
        out: Counts = {k: float(stats[k]) for k in ("hits", "misses", "near_hits", "redis_errors")}
        out |= {"sql_loads": self.store.loads, "sql_updates": self.store.updates}
        for metric in self.registry.collect():
            if metric.name == "penny_cache_invalidation_lag_seconds":
                for sample in metric.samples:
                    suffix = sample.name.removeprefix(metric.name)
                    out[f"lag{suffix}:{sample.labels.get('le', '')}"] = sample.value
        return out

    def close(self) -> None:
        self.cache.close()
        self.store.close()


class _AsideCounts:
    """Cache-aside bookkeeping: a lookup that had to call the store is a miss."""

    store: CountingStore
    lookups: int = 0

    def counts(self) -> Counts:
        loads = self.store.loads
        return {"hits": self.lookups - loads, "misses": loads, "near_hits": 0, "redis_errors": 0,
                "sql_loads": loads, "sql_updates": self.store.updates}  # fmt: skip

    def settle(self) -> None:
        """Nothing to publish: the counts live in this process."""


class DogpileClient(_AsideCounts):
    """dogpile.cache's Redis backend: ``get_or_create`` with the distributed lock, and
    delete-on-update (it has no cross-process near cache to keep coherent)."""

    def __init__(self, spec: WorkerSpec) -> None:
        from dogpile.cache import make_region

        self.store = CountingStore(spec.database_url)
        arguments = {"host": "127.0.0.1", "port": spec.redis_port, "db": 0,
                     "distributed_lock": True, "thread_local_lock": False}  # fmt: skip
        self.region = make_region().configure(
            "dogpile.cache.redis", expiration_time=TTL_S, arguments=arguments
        )

    def _create(self, user: str) -> dict[str, Any]:
        return self.store.load(user).to_dict()

    def read(self, user: str) -> int:
        self.lookups += 1
        return int(self.region.get_or_create(user, partial(self._create, user))["version"])

    def update(self, user: str, value: float) -> int:
        version = self.store.update_dimension(user, DIMENSION, value).version
        self.region.delete(user)
        return version

    def run(self, ops: Schedule, tally: Tally, seconds: float) -> float:
        return sync_loop(self.read, self.update, ops, tally, seconds)

    def close(self) -> None:
        self.store.close()


class CashewsClient(_AsideCounts):
    """cashews on Redis, cache-aside by hand (get, else SQL and set; delete on update),
    on one event loop that lives as long as the client."""

    def __init__(self, spec: WorkerSpec) -> None:
        from cashews import Cache

        self.store = CountingStore(spec.database_url)
        self.runner = asyncio.Runner()
        self.cache = Cache()
        self.cache.setup(f"redis://127.0.0.1:{spec.redis_port}/0")

    async def read(self, user: str) -> int:
        self.lookups += 1
        value = await self.cache.get(user)
        if value is None:
            value = self.store.load(user).to_dict()
            await self.cache.set(user, value, expire=TTL_S)
        return int(value["version"])

    async def update(self, user: str, value: float) -> int:
        version = self.store.update_dimension(user, DIMENSION, value).version
        await self.cache.delete(user)
        return version

    def run(self, ops: Schedule, tally: Tally, seconds: float) -> float:
        return self.runner.run(async_loop(self.read, self.update, ops, tally, seconds))

    def close(self) -> None:
        try:
            self.runner.run(self.cache.close())
        finally:
            self.runner.close()
            self.store.close()


CLIENTS: Final[dict[str, Callable[[WorkerSpec], Client]]] = {
    "penny_cache": PennyClient,
    "dogpile": DogpileClient,
    "cashews": CashewsClient,
}


def prefill_peer(library: str, port: int, states: Sequence[PersonalityState]) -> None:
    """Store every state under its user id, as ``DogpileClient``/``CashewsClient`` do."""
    values = {s.user_id: s.to_dict() for s in states}
    if library == "dogpile":
        from dogpile.cache import make_region

        arguments = {"host": "127.0.0.1", "port": port, "db": 0}
        region = make_region().configure(
            "dogpile.cache.redis", expiration_time=TTL_S, arguments=arguments
        )
        region.set_multi(values)
        return
    asyncio.run(_fill_cashews(port, values))


async def _fill_cashews(port: int, values: dict[str, dict[str, Any]]) -> None:
    from cashews import Cache

    cache = Cache()
    cache.setup(f"redis://127.0.0.1:{port}/0")
    try:
        await cache.set_many(values, expire=TTL_S)
    finally:
        await cache.close()


# -- the child's entry point -----------------------------------------------------------


def _phases(spec: WorkerSpec, client: Client, barrier: Barrier) -> WorkerResult:
    """Warm up, then the four barrier meetings around the timed loop."""
    ops, tally = build_schedule(spec), Tally(spec.reservoir, spec.seed)
    client.run(ops[SCHEDULE_LEN // 2 :], tally, spec.warmup_s)  # other ops than timed ones
    client.settle()
    before = client.counts()
    tally.restart()
    barrier.wait()  # ready: the parent snapshots Redis
    barrier.wait()  # start
    elapsed = client.run(ops, tally, spec.duration_s)
    after = client.counts()
    barrier.wait()  # stopped: the parent snapshots Redis again
    counts = {k: v - before.get(k, 0.0) for k, v in after.items()}
    busy = (tally.reads.total_ns / 1e9, tally.updates.total_ns / 1e9)
    return WorkerResult(spec.index, tally.reads.seen, tally.updates.seen, elapsed, busy,
                        tally.reads.samples, tally.updates.samples, counts, tally.stale,
                        tally.checked)  # fmt: skip


def workload_worker(spec: WorkerSpec, barrier: Barrier, results: Queue[WorkerResult]) -> None:
    """Run one worker; on any failure break the barrier so the parent stops waiting."""
    try:
        client = CLIENTS[spec.library](spec)
        try:
            result = _phases(spec, client, barrier)
            barrier.wait()  # release: close only after the parent's last snapshot
        finally:
            client.close()  # penny_cache publishes its last counters here
    except BaseException as exc:
        barrier.abort()
        results.put(WorkerResult(spec.index, 0, 0, 0.0, (0, 0), [], [], {}, 0, 0, repr(exc)))
        raise
    results.put(result)
