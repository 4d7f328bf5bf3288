"""The drop-in ``personality_state_cache`` module keeps the original's seven behaviours."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import fakeredis
import pytest

from penny_cache.cache import PersonalityCache
from penny_cache.errors import InvalidStateError
from penny_cache.personality_state_cache import PersonalityStateCache
from penny_cache.redis.backend import RedisBackend
from penny_cache.state import PersonalityState, default_state

STATE = {"formality": 0.46, "technical_depth": 0.47, "vocabulary": ["yo", "indeed"]}


@pytest.fixture
def legacy(fake_redis: fakeredis.FakeRedis, namespace: str) -> Iterator[PersonalityStateCache]:
    core = PersonalityCache(
        RedisBackend(fake_redis), namespace=namespace, ttl=300, stats_flush_interval=None
    )
    cache = PersonalityStateCache(ttl_seconds=300, core=core)
    yield cache
    cache.close()


def test_fresh_instance_starts_with_zero_counts(legacy: PersonalityStateCache) -> None:
    """A new cache on its namespace reports no hits, misses or invalidations."""
    assert legacy.stats == {"hits": 0, "misses": 0, "invalidations": 0}
    stats = legacy.get_stats()
    assert stats["hit_rate"] == 0.0 and stats["cache_size"] == 0 and stats["ttl_seconds"] == 300


def test_hit(legacy: PersonalityStateCache) -> None:
    """Behaviour 1: get returns what set stored."""
    legacy.set("default", STATE)
    assert legacy.get("default") == STATE


def test_miss(legacy: PersonalityStateCache) -> None:
    """Behaviour 2: get of an unknown key returns None."""
    assert legacy.get("nobody") is None


def test_expiry(fake_redis: fakeredis.FakeRedis, legacy: PersonalityStateCache) -> None:
    """Behaviour 3: entries carry the TTL and miss once Redis expires them."""
    legacy.set("default", STATE)
    key = legacy.core.keys.legacy("default")
    assert 0 < fake_redis.pttl(key) <= 300_000
    fake_redis.delete(key)  # what expiry does, without waiting for it
    assert legacy.get("default") is None


def test_invalidation(legacy: PersonalityStateCache) -> None:
    """Behaviour 4: invalidate clears one entry and counts it."""
    legacy.set("default", STATE)
    legacy.invalidate("default")
    assert legacy.get("default") is None
    assert legacy.stats["invalidations"] == 1


def test_statistics(legacy: PersonalityStateCache) -> None:
    """Behaviour 5: the report's sequence gives 1 miss then 2 hits: hit rate 2/3."""
    assert legacy.get("default") is None
    legacy.set("default", STATE)
    assert legacy.get("default") == STATE
    assert legacy.get("default") == STATE
    stats = legacy.get_stats()
    assert (stats["hits"], stats["misses"]) == (2, 1)
    assert stats["hit_rate"] == pytest.approx(0.667, abs=0.001)
    assert stats["cache_size"] == 1


def test_clear(legacy: PersonalityStateCache) -> None:
    """Behaviour 6: clear empties the cache entirely."""
    for n in range(5):
        legacy.set(f"u{n}", STATE)
    legacy.clear()
    assert legacy.get_stats()["cache_size"] == 0
    assert all(legacy.get(f"u{n}") is None for n in range(5))


def test_users_are_isolated(legacy: PersonalityStateCache) -> None:
    """Behaviour 7: each user id has its own entry."""
    legacy.set("alice", {"formality": 0.1})
    legacy.set("bob", {"formality": 0.9})
    assert legacy.get("alice") == {"formality": 0.1}
    assert legacy.get("bob") == {"formality": 0.9}


def test_accepts_a_personality_state(legacy: PersonalityStateCache) -> None:
    """A PersonalityState comes back as a PersonalityState, equal to the one stored."""
    state = default_state("alice", datetime(2026, 1, 1, tzinfo=UTC))
    legacy.set("alice", state)
    back = legacy.get("alice")
    assert type(back) is PersonalityState and back == state


def test_unserialisable_value_is_refused_and_nothing_written(
    fake_redis: fakeredis.FakeRedis, legacy: PersonalityStateCache
) -> None:
    """A value that would not come back raises UncacheableValueError: a TypeError, and an
    InvalidStateError for callers of the earlier drop-in; nothing is stored."""
    with pytest.raises(TypeError):
        legacy.set("alice", {"when": object()})
    with pytest.raises(InvalidStateError):
        legacy.set("alice", {"when": object()})
    assert legacy.get_stats()["cache_size"] == 0
    assert list(fake_redis.scan_iter(match=legacy.core.keys.legacy_pattern())) == []


def test_legacy_and_state_entries_never_mix(
    fake_redis: fakeredis.FakeRedis, namespace: str, legacy: PersonalityStateCache
) -> None:
    """A drop-in mapping under user X is not read as X's PersonalityState, nor the reverse."""
    legacy.set("alice", STATE)
    states = PersonalityCache(
        RedisBackend(fake_redis), namespace=namespace, stats_flush_interval=None
    )
    assert states.get("alice") is None
