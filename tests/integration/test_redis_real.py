"""Against a real redis-server: shared counters, expiry, and Redis dying under the tracker."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import redis

from penny_cache.app.embedded import RedisServerProcess, wait_until
from penny_cache.cache import PersonalityCache
from penny_cache.state import default_state
from penny_cache.store.database import PersonalityStore
from penny_cache.tracker import PersonalityTracker
from tests.integration import workers

pytestmark = pytest.mark.integration
SPAWN = multiprocessing.get_context("spawn")


@pytest.fixture
def real_cache(redis_url: str, namespace: str) -> Iterator[PersonalityCache]:
    with PersonalityCache.from_url(redis_url, namespace=namespace) as cache:
        yield cache


def test_entries_expire_on_the_server(redis_url: str, namespace: str) -> None:
    """An entry written with a 50 ms TTL is a miss once Redis expires it."""
    with PersonalityCache.from_url(
        redis_url, namespace=namespace, ttl=0.05, lease_ttl=0.01
    ) as cache:
        cache.set("alice", default_state("alice", datetime(2026, 1, 1, tzinfo=UTC)))
        assert cache.get("alice") is not None
        wait_until(lambda: cache.get("alice") is None, 5.0, "the entry to expire")


def test_processes_see_each_others_counts_while_alive(
    redis_url: str, namespace: str, real_cache: PersonalityCache
) -> None:
    """Counts from live worker processes reach every process's get_stats() exactly."""
    real_cache.set("shared-user", default_state("shared-user", datetime(2026, 1, 1, tzinfo=UTC)))
    linger = SPAWN.Event()
    procs = [
        SPAWN.Process(target=workers.lookups, args=(redis_url, namespace, 10 + i, i, linger))
        for i in range(3)
    ]
    for p in procs:
        p.start()
    try:
        expected = {"hits": 10 + 11 + 12, "misses": 0 + 1 + 2}

        def all_counted() -> bool:
            stats = real_cache.get_stats()
            return {k: stats[k] for k in expected} == expected

        wait_until(all_counted, 30.0, "the workers' counts to reach Redis")
    finally:
        linger.set()
        for p in procs:
            p.join(30)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    stats = real_cache.get_stats()
    assert (stats["hits"], stats["misses"]) == (33, 3), "closing must not change the totals"


def test_counts_survive_a_redis_restart(own_redis: RedisServerProcess, namespace: str) -> None:
    """After Redis restarts empty, a live process's next flush restores its totals."""
    with PersonalityCache.from_url(
        own_redis.url, namespace=namespace, stats_flush_interval=None, cooldown=0.01
    ) as cache:
        for _ in range(5):
            cache.get("nobody")
        assert cache.get_stats()["misses"] == 5
        own_redis.kill()
        own_redis.start()
        cache.get("nobody")
        wait_until(lambda: cache.get_stats()["shared"], 10.0, "redis to answer again")
        assert cache.get_stats()["misses"] >= 6


def test_tracker_answers_from_sql_while_redis_is_dead(
    own_redis: RedisServerProcess, sqlite_url: str, namespace: str
) -> None:
    """Redis killed mid-test: reads and updates still answer, from SQL, in bounded time."""
    cache = PersonalityCache.from_url(
        own_redis.url, namespace=namespace, timeout=0.1, cooldown=0.05
    )
    tracker = PersonalityTracker(PersonalityStore(sqlite_url), cache)
    tracker.update_personality_dimension("alice", "technical_depth_preference", 0.8)
    assert tracker.get_current_personality_state("alice").version == 1
    own_redis.kill()
    for n in range(20):
        started = time.monotonic()
        state = tracker.update_personality_dimension("alice", "technical_depth_preference", n / 20)
        assert tracker.get_current_personality_state("alice") == state
        assert time.monotonic() - started < 2.0
    assert cache.local_stats()["redis_errors"] >= 1
    own_redis.start()  # empty, scripts gone: the next script call reloads its Lua
    wait_until(  # the queued write-through, or a fill after a read: either runs a script
        lambda: (
            tracker.get_current_personality_state("alice").version == 21
            and cache.get("alice") is not None
        ),
        10.0,
        "version 21 back in Redis",
    )
    hits = cache.local_stats()["hits"]
    assert tracker.get_current_personality_state("alice").version == 21
    assert cache.local_stats()["hits"] == hits + 1
    cache.close()


def test_paused_redis_costs_a_timeout_not_a_hang(
    own_redis: RedisServerProcess, sqlite_url: str, namespace: str
) -> None:
    """SIGSTOPped Redis: reads return from SQL after about the socket timeout."""
    cache = PersonalityCache.from_url(own_redis.url, namespace=namespace, timeout=0.1)
    tracker = PersonalityTracker(PersonalityStore(sqlite_url), cache)
    tracker.get_current_personality_state("alice")
    own_redis.pause()
    try:
        started = time.monotonic()
        for _ in range(10):
            assert tracker.get_current_personality_state("alice").version == 0
        elapsed = time.monotonic() - started
    finally:
        own_redis.resume()
    assert elapsed < 2.0, "after one timeout the cooldown must skip Redis"
    assert cache.local_stats()["redis_errors"] >= 1
    cache.close()


def test_clear_uses_scan_and_leaves_other_keys(
    redis_url: str, real_cache: PersonalityCache
) -> None:
    """clear() removes this namespace's entries only, on a real server."""
    client = redis.Redis.from_url(redis_url)
    client.set("penny-test-unrelated", b"x")
    for n in range(50):
        real_cache.set(f"u{n}", default_state(f"u{n}", datetime(2026, 1, 1, tzinfo=UTC)))
    assert real_cache.clear() == 50
    assert real_cache.size() == 0
    assert client.get("penny-test-unrelated") == b"x"
    client.delete("penny-test-unrelated")


def _forked_child(cache: PersonalityCache) -> None:
    cache.get("child-miss-1")
    cache.get("child-miss-2")
    cache.close()


def test_forked_worker_does_not_inherit_the_parents_counts(redis_url: str, namespace: str) -> None:
    """Under a pre-fork server the child counts only its own lookups: no double count."""
    cache = PersonalityCache.from_url(redis_url, namespace=namespace, stats_flush_interval=0.05)
    for _ in range(5):
        cache.get("parent-miss")
    child = multiprocessing.get_context("fork").Process(target=_forked_child, args=(cache,))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    assert cache.get_stats()["misses"] == 7
    cache.close()


def test_drop_in_module_shares_entries_between_instances(redis_url: str, namespace: str) -> None:
    """Two PersonalityStateCache objects (two workers) share entries and counts via Redis."""
    from penny_cache.personality_state_cache import PersonalityStateCache

    one = PersonalityStateCache(ttl_seconds=300, redis_url=redis_url, namespace=namespace)
    two = PersonalityStateCache(ttl_seconds=300, redis_url=redis_url, namespace=namespace)
    one.set("default", {"formality": 0.46})
    assert two.get("default") == {"formality": 0.46}
    two.invalidate("default")
    assert one.get("default") is None
    two.close()  # publishes its counts
    assert one.get_stats() | {"cache_size": 0} == {
        "hits": 1,
        "misses": 1,
        "invalidations": 1,
        "hit_rate": 0.5,
        "cache_size": 0,
        "ttl_seconds": 300,
    }
    one.close()
