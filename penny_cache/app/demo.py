"""The ``make run`` job: several worker processes share one cache under a realistic mix.

Each worker is a separate process with its own tracker and cache, as under a pre-fork
web server: Zipf-distributed users, mostly reads, some updates. At the end the parent
reads the cross-process counters from Redis and checks them against what the workers
report, so the demo shows the point of penny_cache: one hit rate for all processes.
"""

from __future__ import annotations

import itertools
import multiprocessing
import random
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from penny_cache.cache import PersonalityCache
from penny_cache.state import CATALOGUE, PersonalityState
from penny_cache.store.database import PersonalityStore
from penny_cache.tracker import PersonalityTracker

__all__ = ["DemoConfig", "DemoReport", "WorkerReport", "run_demo"]


@dataclass(frozen=True)
class DemoConfig:
    """What the workload looks like."""

    redis_url: str
    database_url: str
    namespace: str
    workers: int = 4
    duration: float = 5.0
    users: int = 1000
    update_share: float = 0.05
    zipf_s: float = 1.1
    seed: int = 7
    redis_timeout: float = 0.1


@dataclass
class WorkerReport:
    """What one worker did and how long it took (latencies in microseconds)."""

    reads: int = 0
    updates: int = 0
    read_us: list[float] = field(default_factory=list)
    update_us: list[float] = field(default_factory=list)
    lookups_counted: int = 0
    sql_loads: int = 0
    load_seconds: float = 0.0  # the workload itself, after this process started up


@dataclass
class DemoReport:
    """The merged result of all workers plus the shared counters."""

    config: DemoConfig
    elapsed: float
    workers: list[WorkerReport]
    shared_stats: dict[str, Any]

    @property
    def counted_exactly(self) -> bool:
        """Every lookup the workers made is in the shared counters, once."""
        made = sum(w.lookups_counted for w in self.workers)
        return bool(self.shared_stats["hits"] + self.shared_stats["misses"] == made)

    @property
    def reads(self) -> int:
        return sum(w.reads for w in self.workers)

    @property
    def updates(self) -> int:
        return sum(w.updates for w in self.workers)


def _zipf_weights(users: int, s: float) -> list[float]:
    return list(itertools.accumulate(1.0 / (rank**s) for rank in range(1, users + 1)))


def _random_change(rng: random.Random) -> tuple[str, float | str]:
    name = rng.choice(list(CATALOGUE))
    spec = CATALOGUE[name]
    if spec.value_type == "continuous":
        return name, round(rng.random(), 3)
    return name, rng.choice(spec.options)


class _CountingStore(PersonalityStore):
    """Counts SQL reads. Misses account for most; the rest are updates whose
    write-through Redis refused (a concurrent update was newer), checked against SQL,
    and readers whose load-lease holder was late (see ``format_report``)."""

    loads = 0

    def load(self, user_id: str) -> PersonalityState:
        self.loads += 1
        return super().load(user_id)


def _work(config: DemoConfig, index: int) -> WorkerReport:
    rng = random.Random(config.seed * 1000 + index)
    population = [f"user-{n}" for n in range(config.users)]
    weights = _zipf_weights(config.users, config.zipf_s)
    store = _CountingStore(config.database_url)
    cache = PersonalityCache.from_url(
        config.redis_url, namespace=config.namespace, timeout=config.redis_timeout
    )
    tracker = PersonalityTracker(store=store, cache=cache)
    report = WorkerReport()
    began = time.monotonic()
    deadline = began + config.duration
    try:
        while time.monotonic() < deadline:
            user = rng.choices(population, cum_weights=weights)[0]
            started = time.perf_counter()
            if rng.random() < config.update_share:
                name, value = _random_change(rng)
                tracker.update_personality_dimension(user, name, value, 0.05, "demo")
                report.update_us.append((time.perf_counter() - started) * 1e6)
                report.updates += 1
            else:
                tracker.get_current_personality_state(user)
                report.read_us.append((time.perf_counter() - started) * 1e6)
                report.reads += 1
        report.load_seconds = time.monotonic() - began
        report.lookups_counted = cache.local_stats()["requests"]
        report.sql_loads = store.loads
    finally:
        cache.close()
        store.close()
    return report


def run_demo(config: DemoConfig) -> DemoReport:
    """Run the workers to completion and gather the shared counters."""
    store = PersonalityStore(config.database_url)
    store.ping()  # create the tables once, before the workers race to
    _ = store.identity
    store.close()
    context = multiprocessing.get_context("spawn")
    started = time.monotonic()
    with context.Pool(config.workers) as pool:
        reports = pool.starmap(_work, [(config, n) for n in range(config.workers)])
    elapsed = time.monotonic() - started
    with PersonalityCache.from_url(
        config.redis_url, namespace=config.namespace, timeout=config.redis_timeout
    ) as cache:
        shared = cache.get_stats()
    return DemoReport(config, elapsed, reports, shared)


def _percentile(samples: list[float], q: float) -> float:
    if len(samples) < 2:
        return samples[0] if samples else 0.0
    return statistics.quantiles(samples, n=100, method="inclusive")[int(q) - 1]


def _throughput(report: DemoReport) -> float:
    """Operations per second of the load phase: each worker's ops over its own load
    time, summed (the elapsed time also holds process start-up)."""
    return sum((w.reads + w.updates) / w.load_seconds for w in report.workers if w.load_seconds > 0)


def format_report(report: DemoReport) -> str:
    """The figures, each followed by what it means and what good looks like."""
    reads = [v for w in report.workers for v in w.read_us]
    updates = [v for w in report.workers for v in w.update_us]
    stats = report.shared_stats
    lookups = sum(w.lookups_counted for w in report.workers)
    counted = stats["hits"] + stats["misses"]
    loads = sum(w.sql_loads for w in report.workers)
    config = report.config
    return "\n".join(
        [
            f"workers          {config.workers} processes, {config.duration:g} s of load each; "
            f"{report.elapsed:.1f} s in all",
            _WHY["workers"],
            f"operations       {report.reads + report.updates} "
            f"({_throughput(report):,.0f}/s during the load): "
            f"{report.reads} reads, {report.updates} updates",
            f"read latency     p50 {_percentile(reads, 50):.0f} us, "
            f"p99 {_percentile(reads, 99):.0f} us",
            _WHY["reads"],
            f"update latency   p50 {_percentile(updates, 50):.0f} us, "
            f"p99 {_percentile(updates, 99):.0f} us",
            _WHY["updates"],
            f"shared hit rate  {stats['hit_rate']:.1%} "
            f"({stats['hits']} hits, of which {stats['near_hits']} in-process near hits; "
            f"{stats['misses']} misses; all processes, from Redis)",
            _WHY["hits"].format(users=config.users),
            f"SQL loads        {loads} for {stats['misses']} misses; "
            f"{stats['invalidations']} write-throughs, {stats['fills_refused']} stale fills "
            "refused",
            _WHY["loads"],
            f"errors           {stats['redis_errors']} redis, {stats['decode_errors']} decode",
            _WHY["errors"],
            f"count check      {lookups} lookups made, {counted} counted in Redis: "
            + ("exact" if counted == lookups else "MISMATCH"),
            _WHY["count"],
        ]
    )


_WHY = {
    "workers": "  (each worker runs the workload for that long once it has started; the\n"
    "  total adds spawning the processes and importing the package in each)",
    "reads": "  (p50 is a near hit, in-process, a few us; a Redis hit is a round trip, about\n"
    "  100 us; p99 is a miss's SQL load, which on the demo's SQLite file may wait\n"
    "  behind another worker's commit: milliseconds to tens of milliseconds)",
    "updates": "  (an update commits to SQL, then writes through to Redis in one script; on\n"
    "  the demo's SQLite file the workers' commits take turns on one database lock,\n"
    "  so p99 is the wait behind the others' commits and fsyncs, often 100 ms or\n"
    "  more; on PostgreSQL (PENNY_DATABASE_URL) it is a few ms)",
    "hits": "  (hits / lookups of all workers, from the shared counters in Redis. The cache\n"
    "  starts empty and each user's first read is a miss, so misses are mostly the\n"
    "  distinct users of the {users} the run reached; the rate grows with the run's\n"
    "  length: `penny-cache demo --duration 30` comes closer to the steady state)",
    "loads": "  (mostly one per miss; more than the misses is expected: an update whose\n"
    "  write-through Redis refused because another worker's update of the same user\n"
    "  was newer checks SQL once, and a reader whose load-lease holder was late reads\n"
    "  SQL itself. A stale fill refused is a slow load that would have put an older\n"
    "  version in Redis: the guard working, not an error)",
    "errors": "  (0 and 0 is good: Redis answered every call within its timeout)",
    "count": "  (every lookup counted once in Redis, over all processes: exact is the only\n"
    "  good answer; the demo uses a new namespace each run, so it starts from 0)",
}
