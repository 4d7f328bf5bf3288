"""Per-process metrics: the tracker times what leaves the process, by operation."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from penny_cache.cache import PersonalityCache
from penny_cache.observe.metrics import ProcessMetrics
from penny_cache.policy.near import NearCache
from penny_cache.redis.backend import RedisBackend
from penny_cache.store.database import PersonalityStore
from penny_cache.tracker import PersonalityTracker


def count(registry: CollectorRegistry, operation: str) -> float | None:
    return registry.get_sample_value(
        "penny_cache_operation_duration_seconds_count", {"operation": operation}
    )


def test_tracker_times_misses_redis_hits_and_updates(
    fake_backend: RedisBackend, namespace: str, store: PersonalityStore
) -> None:
    """A cold read is a timed miss, the next a timed Redis hit, an update a timed update."""
    registry = CollectorRegistry()
    cache = PersonalityCache(
        fake_backend,
        namespace=namespace,
        stats_flush_interval=None,
        metrics=ProcessMetrics(registry),
    )
    tracker = PersonalityTracker(store, cache)
    tracker.get_current_personality_state("alice")
    tracker.get_current_personality_state("alice")
    tracker.update_personality_dimension("alice", "communication_formality", 0.2)
    assert (count(registry, "miss"), count(registry, "redis_hit"), count(registry, "update")) == (
        1.0,
        1.0,
        1.0,
    )


def test_near_gauges_follow_the_near_cache() -> None:
    """observe_near sets the entries gauge and adds only new flushes to the counter."""
    registry = CollectorRegistry()
    metrics = ProcessMetrics(registry)
    near = NearCache(10, 60)
    metrics.observe_near(len(near), near.flushes)
    near.flush()
    near.flush()
    metrics.observe_near(3, near.flushes)
    metrics.observe_near(3, near.flushes)
    assert registry.get_sample_value("penny_cache_near_entries") == 3.0
    assert registry.get_sample_value("penny_cache_near_flushes_total") == 2.0


def test_for_worker_without_multiprocess_registers_on_its_registry() -> None:
    """Outside multiprocess mode the worker's registry holds its own metrics."""
    from penny_cache.observe.metrics import for_worker

    metrics, registry = for_worker(None)
    metrics.invalidations_received.inc()
    assert registry.get_sample_value("penny_cache_invalidations_received_total") == 1.0


def test_worker_identity_without_multiprocess_exports_process_and_build_info() -> None:
    """Finding: the service exported no process metrics and no build_info. In a
    single-process worker the standard process collector and
    ``penny_cache_build_info{version}`` are on the registry its /metrics serves."""
    from prometheus_client import CollectorRegistry

    from penny_cache.observe.metrics import OS_PROCESS_METRICS, PROCESS_METRICS, worker_identity

    registry = CollectorRegistry()
    refresh = worker_identity(None, registry, "9.9.9")
    refresh()
    assert registry.get_sample_value("penny_cache_build_info", {"version": "9.9.9"}) == 1.0
    cpu = registry.get_sample_value("process_cpu_seconds_total")
    assert cpu is not None and cpu > 0
    assert set(OS_PROCESS_METRICS) <= PROCESS_METRICS
