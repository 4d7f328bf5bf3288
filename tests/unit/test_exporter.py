"""The exporter's collector: names, types and labels by Prometheus rules, read at scrape."""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, generate_latest

from penny_cache.errors import CacheUnavailableError
from penny_cache.observe.counters import COUNTERS
from penny_cache.observe.exporter import RedisCountersCollector

TOTALS = {name: n + 1 for n, name in enumerate(COUNTERS)} | {"hits": 30, "near_hits": 20}


def registry_for(read: object) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(RedisCountersCollector(read, "penny", "9.9.9"))  # type: ignore[arg-type]
    return registry


def test_counters_render_with_total_suffix_and_tiers() -> None:
    """requests = hits + misses; hits split by tier (near, redis); every counter _total."""
    registry = registry_for(lambda: TOTALS)
    value = registry.get_sample_value
    ns = {"namespace": "penny"}
    assert value("penny_cache_up", ns) == 1.0
    assert value("penny_cache_requests_total", ns) == 30 + TOTALS["misses"]
    assert value("penny_cache_hits_total", ns | {"tier": "near"}) == 20
    assert value("penny_cache_hits_total", ns | {"tier": "redis"}) == 10
    assert value("penny_cache_redis_errors_total", ns) == TOTALS["redis_errors"]
    assert value("penny_cache_build_info", ns | {"version": "9.9.9"}) == 1.0
    assert value("penny_cache_scrape_duration_seconds", ns) is not None


def test_redis_down_answers_up_zero_and_no_counters() -> None:
    """When Redis cannot be read the scrape still succeeds: up 0, and no fake zeros."""

    def down() -> Mapping[str, int]:
        raise CacheUnavailableError("down")

    registry = registry_for(down)
    assert registry.get_sample_value("penny_cache_up", {"namespace": "penny"}) == 0.0
    assert registry.get_sample_value("penny_cache_requests_total", {"namespace": "penny"}) is None
    assert b"penny_cache_build_info" in generate_latest(registry)


def test_reads_once_per_scrape() -> None:
    """One read of the counters per scrape (one HGETALL), never more."""
    reads = 0

    def read() -> Mapping[str, int]:
        nonlocal reads
        reads += 1
        return TOTALS

    registry = registry_for(read)
    generate_latest(registry)
    assert reads == 1


def test_exported_metrics_lists_exactly_what_a_scrape_shows() -> None:
    """EXPORTED_METRICS (what dashboards and alerts are checked against) is exactly the set
    of metric names a scrape with Redis up exposes, so the two cannot drift apart."""
    from prometheus_client.parser import text_string_to_metric_families

    from penny_cache.observe.exporter import EXPORTED_METRICS

    text = generate_latest(registry_for(lambda: TOTALS)).decode()
    names = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    assert names == set(EXPORTED_METRICS)


def test_any_collection_error_answers_up_zero_not_a_failed_scrape() -> None:
    """Used to happen: an error other than ``CacheError`` while reading the totals (a
    ``ValueError`` from a counter field ``abc``) escaped ``collect``, so /metrics answered
    500. Now any error gives ``penny_cache_up 0`` and no counter samples."""

    def broken() -> Mapping[str, int]:
        raise ValueError("invalid literal for int() with base 10: 'abc'")

    registry = registry_for(broken)
    ns = {"namespace": "penny"}
    assert registry.get_sample_value("penny_cache_up", ns) == 0.0
    assert registry.get_sample_value("penny_cache_requests_total", ns) is None
    assert b"penny_cache_up" in generate_latest(registry)
