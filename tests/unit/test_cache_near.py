"""PersonalityCache with a near cache: served only while the listener vouches for it."""

from __future__ import annotations

import pytest

from penny_cache.cache import PersonalityCache
from penny_cache.policy.near import NearCache
from penny_cache.redis.backend import RedisBackend
from tests.conftest import FakeClock
from tests.unit.test_cache import state_of


class FakeListener:
    """Stands in for the pub/sub listener: the test decides when it vouches."""

    def __init__(self) -> None:
        self.trusted_until = 0.0
        self.started = 0
        self.proven = False  # a test that lets trust lapse after proving it sets this

    @property
    def running(self) -> bool:
        return self.started > 0

    def start(self) -> None:
        self.started += 1

    def stop(self) -> None:
        self.trusted_until = 0.0

    def after_fork(self) -> None:
        self.trusted_until = 0.0


@pytest.fixture
def listener() -> FakeListener:
    return FakeListener()


@pytest.fixture
def near_cache(
    fake_backend: RedisBackend, namespace: str, clock: FakeClock, listener: FakeListener
) -> PersonalityCache:
    def factory(*_hooks: object) -> FakeListener:
        return listener

    return PersonalityCache(
        fake_backend,
        namespace=namespace,
        stats_flush_interval=None,
        near=NearCache(100, ttl=10, monotonic=clock),
        listener=factory,
        monotonic=clock,
    )


def test_trusted_near_hit_skips_redis_and_counts_as_a_hit(
    near_cache: PersonalityCache, listener: FakeListener, clock: FakeClock
) -> None:
    """A near hit is a hit (and a near hit); lookups still add up exactly."""
    listener.trusted_until = clock() + 100
    near_cache.set("a", state_of("a", 1))
    assert near_cache.get("a") is not None  # Redis hit, fills the near cache
    for _ in range(5):
        assert near_cache.get("a") is not None
    stats = near_cache.local_stats()
    assert (stats["hits"], stats["near_hits"], stats["misses"], stats["requests"]) == (6, 5, 0, 6)


def test_untrusted_near_cache_is_bypassed(
    near_cache: PersonalityCache, listener: FakeListener, clock: FakeClock
) -> None:
    """When the listener's vouching has lapsed, every read goes to Redis."""
    listener.trusted_until = clock() + 1
    near_cache.set("a", state_of("a", 1))
    near_cache.get("a")
    clock.advance(2)
    near_cache.get("a")
    near_cache.get("a")
    assert near_cache.local_stats()["near_hits"] == 0
    assert listener.started == 1, "the listener is started lazily, once"


def test_writer_sees_its_own_write_in_the_near_cache(
    near_cache: PersonalityCache, listener: FakeListener, clock: FakeClock
) -> None:
    """write_through puts the committed state in this process's near cache at once."""
    listener.trusted_until = clock() + 100
    near_cache.write_through(state_of("a", 3))
    cached = near_cache.get("a")
    assert cached is not None and cached.version == 3
    assert near_cache.local_stats()["near_hits"] == 1


def test_invalidate_drops_the_local_copy(
    near_cache: PersonalityCache, listener: FakeListener, clock: FakeClock
) -> None:
    """invalidate() empties this process's near entry and Redis's."""
    listener.trusted_until = clock() + 100
    near_cache.write_through(state_of("a", 3))
    assert near_cache.invalidate("a")
    assert near_cache.get("a") is None


def test_binding_a_store_flushes_the_near_cache(
    near_cache: PersonalityCache, listener: FakeListener, clock: FakeClock
) -> None:
    """Entries cached before a store was bound never answer for that store."""
    listener.trusted_until = clock() + 100
    near_cache.write_through(state_of("a", 3))
    near_cache.bind_store("0123456789abcdef")
    assert near_cache.get("a") is None
