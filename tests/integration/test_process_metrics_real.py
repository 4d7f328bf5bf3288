"""Per-process metrics on a real redis-server, and aggregated across worker processes."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from penny_cache.app.embedded import RedisServerProcess, wait_until
from penny_cache.cache import PersonalityCache
from penny_cache.observe.metrics import ProcessMetrics, for_worker
from penny_cache.store.database import PersonalityStore
from penny_cache.tracker import PersonalityTracker
from tests.integration import workers

pytestmark = pytest.mark.integration
SPAWN = multiprocessing.get_context("spawn")


def test_invalidations_received_and_their_lag(
    own_redis: RedisServerProcess, sqlite_url: str, namespace: str
) -> None:
    """A process with a warm near cache counts the invalidations it applies and observes
    their lag (well under a second on loopback), and reports its near-cache size."""
    registry = CollectorRegistry()
    watched = PersonalityCache.from_url(
        own_redis.url, namespace=namespace, metrics=ProcessMetrics(registry)
    )
    reader = PersonalityTracker(PersonalityStore(sqlite_url), watched)
    writer = PersonalityTracker(
        PersonalityStore(sqlite_url), PersonalityCache.from_url(own_redis.url, namespace=namespace)
    )
    reader.get_current_personality_state("alice")
    wait_until(lambda: watched.near_trusted, 10, "the listener")
    for n in range(5):
        writer.update_personality_dimension("alice", "communication_formality", n / 10)

    def received() -> float:
        return registry.get_sample_value("penny_cache_invalidations_received_total") or 0.0

    wait_until(lambda: received() >= 5, 10, "five invalidations")
    lag_sum = registry.get_sample_value("penny_cache_invalidation_lag_seconds_sum")
    assert lag_sum is not None and 0 <= lag_sum < 5.0
    reader.get_current_personality_state("alice")
    wait_until(
        lambda: (registry.get_sample_value("penny_cache_near_entries") or 0) >= 1,
        10,
        "the near-cache gauge",
    )
    watched.close()
    writer.cache.close()


def test_multiprocess_mode_sums_the_workers(
    own_redis: RedisServerProcess, namespace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under PROMETHEUS_MULTIPROC_DIR (pre-fork servers), every worker's timings reach one
    /metrics: two processes' misses add up."""
    multiproc = tmp_path / "prom"
    multiproc.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(multiproc))
    database = f"sqlite:///{tmp_path / 'db.sqlite'}"
    PersonalityStore(database).identity  # noqa: B018 - create the tables once
    procs = [
        SPAWN.Process(target=workers.timed_reads, args=(own_redis.url, namespace, database, 3))
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    _metrics, registry = for_worker(str(multiproc))  # what a worker's /metrics serves
    misses = registry.get_sample_value(
        "penny_cache_operation_duration_seconds_count", {"operation": "miss"}
    )
    assert misses == 6.0
