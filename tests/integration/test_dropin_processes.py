"""The drop-in (Penny's original API) driven from several spawned processes sharing one
real redis-server: values round-trip with their types, refused values store nothing, no
stale state after concurrent updates, ``get_stats()`` exact across processes with
``.stats`` per instance, and a late ``set()`` refused. No sleeps: processes are joined,
and what one process did is complete before the next step starts.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import redis

from penny_cache.app.embedded import RedisServerProcess
from penny_cache.personality_state_cache import PersonalityStateCache
from tests.integration import dropin_workers
from tests.penny_shapes import PersonalityDimension, penny_state

pytestmark = pytest.mark.integration
SPAWN = multiprocessing.get_context("spawn")
WORKERS = 4

VALUES: dict[str, Any] = {
    "default": penny_state(0.46),
    "naive": {"at": datetime(2026, 1, 2, 3, 4, 5)},
    "aware": {"at": datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=-5)))},
    "nested": [{"dims": penny_state(0.7)}, [datetime(2026, 1, 1, tzinfo=UTC)], "plain"],
}


@pytest.fixture
def cache(redis_url: str, namespace: str) -> Iterator[PersonalityStateCache]:
    c = PersonalityStateCache(ttl_seconds=300, redis_url=redis_url, namespace=namespace)
    yield c
    c.clear()
    c.close()


def _pool(workers: int = WORKERS) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(workers, mp_context=SPAWN)


def test_values_round_trip_with_their_types_across_processes(
    redis_url: str, namespace: str, cache: PersonalityStateCache
) -> None:
    """A value set in one process comes back equal, with the same types (Penny's dict of
    dataclasses with naive datetimes, aware datetimes, nesting), in another, both ways."""
    with _pool(1) as pool:
        pool.submit(dropin_workers.store, redis_url, namespace, VALUES).result(60)
        for user, value in VALUES.items():
            back = cache.get(user)
            assert back == value
        dims = cache.get("default")
        assert isinstance(dims["communication_formality"], PersonalityDimension)
        assert dims["communication_formality"].last_updated.tzinfo is None
        cache.set("from-parent", penny_state(0.2))
        seen = pool.submit(dropin_workers.read_back, redis_url, namespace, ["from-parent"])
        assert seen.result(60) == {"from-parent": penny_state(0.2)}


@pytest.mark.parametrize(
    "value", [(1, 2), {"a", "b"}, {"d": object()}], ids=["tuple", "set", "object"]
)
def test_refused_values_raise_type_error_and_store_nothing(
    redis_url: str, cache: PersonalityStateCache, value: Any
) -> None:
    """On a real server too, a value that would not come back raises TypeError and no key
    of the drop-in is written (no entry, no ticket, no index)."""
    with pytest.raises(TypeError):
        cache.set("default", value)
    raw = redis.Redis.from_url(redis_url)
    try:
        assert list(raw.scan_iter(match=cache.core.keys.legacy_pattern())) == []
    finally:
        raw.close()


@pytest.mark.parametrize("change", ["invalidate", "set"])
def test_a_late_set_is_refused_across_processes(
    redis_url: str, namespace: str, cache: PersonalityStateCache, change: str
) -> None:
    """This process misses; another process invalidates (or sets) the key and exits; this
    process's set() of what it read before is refused, and a third process reads the
    writer's outcome, not the stale value."""
    assert cache.get("default") is None
    newer = penny_state(0.9)
    with _pool(1) as pool:
        pool.submit(dropin_workers.write, redis_url, namespace, change, newer).result(60)
        assert cache.set("default", penny_state(0.1)) is False
        seen = pool.submit(dropin_workers.read_back, redis_url, namespace, ["default"])
        assert seen.result(60) == {"default": None if change == "invalidate" else newer}
    assert cache.set("default", penny_state(0.3)) is True  # no preceding miss: as before


def test_get_stats_exact_across_processes_and_stats_per_instance(
    redis_url: str, namespace: str, cache: PersonalityStateCache
) -> None:
    """Workers with two instances each make known lookups and close: ``get_stats()`` in
    this process equals the sum over every instance of every process, while each
    instance's ``.stats`` holds its own lookups only."""
    cache.reset_stats()
    plans = [(3 + n, n, n % 2) for n in range(WORKERS)]  # (hits, misses, invalidations)
    with _pool() as pool:
        futures = [
            pool.submit(dropin_workers.lookups, redis_url, namespace, *plan) for plan in plans
        ]
        results = [future.result(60) for future in futures]
    for (hits, misses, invalidations), (first, second) in zip(plans, results, strict=True):
        assert first == {"hits": hits, "misses": misses, "invalidations": invalidations}
        assert second == {"hits": 0, "misses": 1, "invalidations": 0}
    stats = cache.get_stats()
    assert stats["hits"] == sum(hits for hits, _, _ in plans)
    assert stats["misses"] == sum(misses + 1 for _, misses, _ in plans)
    assert stats["invalidations"] == sum(inv for _, _, inv in plans)
    assert cache.stats == {"hits": 0, "misses": 0, "invalidations": 0}


def test_no_stale_state_after_concurrent_updates(
    redis_url: str, namespace: str, cache: PersonalityStateCache
) -> None:
    """Four processes read (cache-aside: miss, read the database, set) and update
    (database, then invalidate) one key concurrently. No process ever reads less than its
    own last update, and once they stop the cache holds the database's final version or
    nothing; the shared counters equal the workers' lookups exactly."""
    db_key = f"{namespace}-database"
    cache.reset_stats()
    with _pool() as pool:
        futures = [
            pool.submit(dropin_workers.churn, redis_url, namespace, db_key, 300)
            for _ in range(WORKERS)
        ]
        results = [future.result(120) for future in futures]
    assert [r["violations"] for r in results] == [0] * WORKERS
    raw = redis.Redis.from_url(redis_url)
    try:
        final = int(raw.get(db_key) or 0)
        raw.delete(db_key)
    finally:
        raw.close()
    cached = cache.get("default")
    assert cached is None or cached["version"] == final
    if cached is not None:
        assert cached["dims"] == penny_state(final / 300)
    stats = cache.get_stats()
    assert stats["hits"] + stats["misses"] == sum(r["reads"] for r in results) + 1
    assert stats["hits"] == sum(r["hits"] for r in results) + (cached is not None)


def test_get_stats_sends_no_scan_among_many_keys(own_redis: RedisServerProcess) -> None:
    """With 50,000 unrelated keys in Redis, ``get_stats()`` (cache_size included) sends
    no SCAN or KEYS: it reads the counter hashes and the drop-in's index only."""
    raw = redis.Redis.from_url(own_redis.url)
    cache = PersonalityStateCache(redis_url=own_redis.url, namespace="scanless")
    try:
        pipe = raw.pipeline(transaction=False)
        for n in range(50_000):
            pipe.set(f"unrelated:{n}", n)
        pipe.execute()
        for user in ("a", "b", "c"):
            cache.set(user, {"user": user})
        raw.config_resetstat()
        assert cache.get_stats()["cache_size"] == 3
        commands = raw.info("commandstats")
        assert "cmdstat_scan" not in commands and "cmdstat_keys" not in commands
        assert "cmdstat_evalsha" in commands
    finally:
        cache.close()
        raw.close()
