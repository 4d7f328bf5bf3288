"""Issue 15, item 2: the shadow check in a worker, on a real redis-server and SQL: an
entry written behind the cache's back (older, newer) is counted by the check that
samples Redis hits, and the exporter shows it as ``penny_cache_divergence_total``."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from penny_cache.cache import AsyncPersonalityCache, PersonalityCache
from penny_cache.codec import encode_state
from penny_cache.observe.exporter import RedisCountersCollector
from penny_cache.state import PersonalityState
from penny_cache.store.database import PersonalityStore
from penny_cache.tracker import AsyncPersonalityTracker, PersonalityTracker
from penny_cache.tracking import _sql_version
from tests.conftest import unavailable
from tests.package_walk import ROOT

pytestmark = pytest.mark.integration
OPTIONS: dict[str, Any] = {
    "near_cache": False,
    "shadow_sample": 1.0,
    "max_staleness": 0.1,
    "stats_flush_interval": 0.05,  # the counters' tick runs the check
}


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def _at(state: PersonalityState, version: int) -> PersonalityState:
    data = state.to_dict()
    data["version"] = version
    return PersonalityState.from_dict(data)


def wait_for(read: Callable[[], int], expected: int, deadline: float = 10.0) -> None:
    """Wait on a counter with a deadline (the check runs in its own thread)."""
    end = time.monotonic() + deadline
    while read() < expected:
        assert time.monotonic() < end, f"counter stayed at {read()}, expected {expected}"
        time.sleep(0.01)
    assert read() == expected


def behind_and_ahead(tracker: PersonalityTracker, raw: redis.Redis) -> None:
    """ann's entry one version behind SQL, bob's ahead of it, both behind the cache."""
    store = tracker.store
    for user in ("ann", "bob"):
        tracker.update_personality_dimension(user, "communication_formality", 0.2)
    keys = tracker.cache.keys  # bound to the store's scope by the first call
    old = encode_state(store.load("ann"))
    tracker.update_personality_dimension("ann", "communication_formality", 0.3)
    raw.set(keys.state("ann"), old, px=60_000)
    raw.set(keys.state("bob"), encode_state(_at(store.load("bob"), 7)), px=60_000)


def alert_fires_for(exposition: str, tmp_path: Path) -> None:
    """``promtool test rules`` on the exporter's real divergence samples, after 20
    minutes of zeros: PennyCacheDivergence fires for each kind."""
    promtool = shutil.which("promtool")
    if promtool is None:
        unavailable("promtool is not installed (apt-get install prometheus)")
        return
    series, expected = [], []
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name != "penny_cache_divergence_total":
                continue
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            series.append(
                {"series": f"{sample.name}{{{labels}}}", "values": f"0x20 {sample.value:g}x20"}
            )
            alert = {**sample.labels, "alertname": "PennyCacheDivergence", "alertstate": "firing",
                     "severity": "page"}  # fmt: skip
            shown = ",".join(f'{k}="{v}"' for k, v in sorted(alert.items()))
            expected.append({"labels": f"ALERTS{{{shown}}}", "value": 1})
    assert len(expected) == 2
    rules = ROOT / "deploy" / "prometheus" / "rules" / "penny_cache_alerts.yml"
    test = {
        "rule_files": [str(rules)],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": series,
            "promql_expr_test": [{
                "expr": 'ALERTS{alertname="PennyCacheDivergence"}',
                "eval_time": "22m",
                "exp_samples": expected,
            }],
        }],
    }  # fmt: skip
    path = tmp_path / "divergence_test.yml"
    path.write_text(json.dumps(test))  # JSON is YAML
    result = subprocess.run(
        [promtool, "test", "rules", str(path)], capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_shadow_check_counts_older_and_newer_entries(
    redis_url: str, database_url: str, raw: redis.Redis, tmp_path: Path
) -> None:
    """Finding: a divergence in production was seen by nobody. Now a sampled Redis hit
    that still disagrees with SQL after the bound is counted by kind, the exporter shows
    it as ``penny_cache_divergence_total{kind}``, and the alert fires on those samples."""
    namespace = f"shadow-{uuid.uuid4().hex[:8]}"
    cache = PersonalityCache.from_url(redis_url, namespace=namespace, **OPTIONS)
    store = PersonalityStore(database_url)
    tracker = PersonalityTracker(store, cache, outbox_interval=None)
    try:
        behind_and_ahead(tracker, raw)
        assert tracker.get_current_personality_state("ann").version == 1  # served from Redis
        assert tracker.get_current_personality_state("bob").version == 7
        wait_for(lambda: cache.local_stats()["divergence_older"], 1)
        wait_for(lambda: cache.local_stats()["divergence_newer"], 1)
        cache.flush_stats()
        registry = CollectorRegistry()
        registry.register(RedisCountersCollector(cache.get_stats, namespace, "test"))
        for kind in ("older", "newer"):
            labels = {"namespace": namespace, "kind": kind}
            assert registry.get_sample_value("penny_cache_divergence_total", labels) == 1
        alert_fires_for(generate_latest(registry).decode(), tmp_path)
    finally:
        tracker.close()
        cache.clear(f"{cache.keys.base}:*")
        cache.close()
        store.close()


def test_shadow_check_agreeing_hits_count_nothing(
    redis_url: str, sqlite_url: str, raw: redis.Redis
) -> None:
    """A hit that agrees with SQL (the normal case) counts nothing, with the tracker's
    own wiring to Redis and SQL; one that disagrees does."""
    namespace = f"shadow-{uuid.uuid4().hex[:8]}"
    cache = PersonalityCache.from_url(redis_url, namespace=namespace, **OPTIONS)
    store = PersonalityStore(sqlite_url)
    tracker = PersonalityTracker(store, cache, outbox_interval=None)
    try:
        tracker.update_personality_dimension("ann", "communication_formality", 0.2)
        sql = partial(_sql_version, store)
        cache.shadow.offer("ann", 1, sql)
        assert cache.shadow.run(now=0.0) == [] and cache.shadow.run(now=9.0) == []
        raw.set(cache.keys.state("ann"), encode_state(_at(store.load("ann"), 5)), px=60_000)
        cache.shadow.offer("ann", 5, sql)
        assert cache.shadow.run(now=10.0) == []  # a suspect, re-read after the bound
        assert cache.shadow.run(now=11.0) == ["newer"]
        assert cache.local_stats()["divergence_newer"] == 1
    finally:
        tracker.close()
        cache.clear(f"{cache.keys.base}:*")
        cache.close()
        store.close()


def test_shadow_check_on_the_asyncio_face(
    redis_url: str, sqlite_url: str, raw: redis.Redis
) -> None:
    """The asyncio tracker offers its hits the same way, without blocking the loop."""
    namespace = f"shadow-{uuid.uuid4().hex[:8]}"
    store = PersonalityStore(sqlite_url)
    sync_cache = PersonalityCache.from_url(redis_url, namespace=namespace, **OPTIONS)
    writer = PersonalityTracker(store, sync_cache, outbox_interval=None)
    behind_and_ahead(writer, raw)

    async def run() -> tuple[int, int]:
        cache = AsyncPersonalityCache.from_url(redis_url, namespace=namespace, **OPTIONS)
        tracker = AsyncPersonalityTracker(store, cache, outbox_interval=None)
        try:
            assert (await tracker.get_current_personality_state("ann")).version == 1
            assert (await tracker.get_current_personality_state("bob")).version == 7
            stats = cache.local_stats
            await asyncio.to_thread(wait_for, lambda: stats()["divergence_older"], 1)
            await asyncio.to_thread(wait_for, lambda: stats()["divergence_newer"], 1)
            return stats()["divergence_older"], stats()["divergence_newer"]
        finally:
            await tracker.aclose()
            await cache.aclose()

    try:
        assert asyncio.run(run()) == (1, 1)
    finally:
        writer.close()
        sync_cache.clear(f"{sync_cache.keys.base}:*")
        sync_cache.close()
        store.close()
