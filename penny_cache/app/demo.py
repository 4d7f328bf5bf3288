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
    """Counts SQL reads, to show that loads stay at or below misses."""

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
    deadline = time.monotonic() + config.duration
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


def format_report(report: DemoReport) -> str:
    """A human summary: throughput, latencies, the shared hit rate, and the count check."""
    reads = [v for w in report.workers for v in w.read_us]
    updates = [v for w in report.workers for v in w.update_us]
    stats = report.shared_stats
    lookups = sum(w.lookups_counted for w in report.workers)
    counted = stats["hits"] + stats["misses"]
    ops = report.reads + report.updates
    lines = [
        f"workers          {report.config.workers} processes, {report.elapsed:.1f} s",
        f"operations       {ops} ({ops / report.elapsed:,.0f}/s): "
        f"{report.reads} reads, {report.updates} updates",
        f"read latency     p50 {_percentile(reads, 50):.0f} us, "
        f"p99 {_percentile(reads, 99):.0f} us",
        f"update latency   p50 {_percentile(updates, 50):.0f} us, "
        f"p99 {_percentile(updates, 99):.0f} us",
        f"shared hit rate  {stats['hit_rate']:.1%} "
        f"({stats['hits']} hits, of which {stats['near_hits']} in-process near hits; "
        f"{stats['misses']} misses; all processes, from Redis)",
        f"SQL loads        {sum(w.sql_loads for w in report.workers)} "
        f"for {stats['misses']} misses; "
        f"{stats['invalidations']} write-throughs, {stats['fills_refused']} stale fills refused",
        f"errors           {stats['redis_errors']} redis, {stats['decode_errors']} decode",
        f"count check      {lookups} lookups made, {counted} counted in Redis: "
        + ("exact" if counted == lookups else "MISMATCH"),
    ]
    return "\n".join(lines)
