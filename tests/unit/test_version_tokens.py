"""Version tokens: a read with ``min_version=N`` answers version N or newer on both APIs,
passing by a near-cache or Redis entry that is older (read-your-writes across processes)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import fakeredis
import pytest

from penny_cache.cache import AsyncPersonalityCache, PersonalityCache
from penny_cache.errors import InvalidInputError
from penny_cache.policy.near import NearCache
from penny_cache.redis.backend import AsyncRedisBackend, RedisBackend
from penny_cache.store.database import PersonalityStore
from penny_cache.tracker import AsyncPersonalityTracker, PersonalityTracker
from tests.conftest import FakeClock
from tests.unit.test_cache_near import FakeListener

DIM = "communication_formality"


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


def _near_cache(
    server: fakeredis.FakeServer, namespace: str, clock: FakeClock, listener: FakeListener
) -> PersonalityCache:
    """A cache whose near cache is trusted, with a listener that delivers nothing: as a
    reader's is while the writer's invalidation is still in flight."""
    return PersonalityCache(
        RedisBackend(fakeredis.FakeRedis(server=server)),
        namespace=namespace,
        stats_flush_interval=None,
        near=NearCache(100, ttl=10, monotonic=clock),
        listener=lambda *_hooks: listener,
        monotonic=clock,
    )


@pytest.fixture
def writer(
    server: fakeredis.FakeServer, namespace: str, store: PersonalityStore
) -> Iterator[PersonalityTracker]:
    cache = PersonalityCache(
        RedisBackend(fakeredis.FakeRedis(server=server)),
        namespace=namespace,
        stats_flush_interval=None,
    )
    tracker = PersonalityTracker(store, cache, outbox_interval=None)
    yield tracker
    tracker.close()


def test_sync_read_with_a_token_passes_an_older_near_entry(
    server: fakeredis.FakeServer,
    namespace: str,
    clock: FakeClock,
    store: PersonalityStore,
    writer: PersonalityTracker,
) -> None:
    """The reader's trusted near cache still holds v1 after another process committed v2:
    a plain read may answer v1 (within the staleness bound), one with min_version=2
    answers v2, and each lookup is counted once (the passed-by near entry as a miss)."""
    listener = FakeListener()
    listener.trusted_until = clock() + 100
    reader = PersonalityTracker(
        store, _near_cache(server, namespace, clock, listener), outbox_interval=None
    )
    writer.update_personality_dimension("ann", DIM, 0.6)
    assert reader.get_current_personality_state("ann").version == 1  # now in its near cache
    token = writer.update_personality_dimension("ann", DIM, 0.7).version
    assert reader.get_current_personality_state("ann").version == 1
    assert reader.get_current_personality_state("ann", min_version=token).version == 2
    stats = reader.cache.local_stats()
    assert stats["requests"] == 3 and stats["near_hits"] == 1
    reader.close()


def test_sync_read_with_a_token_passes_an_older_redis_entry(
    server: fakeredis.FakeServer, namespace: str, store: PersonalityStore
) -> None:
    """Redis still holds v1 (the writer's write-through never arrived): min_version=2
    goes past it to SQL, counts a miss, and the fill replaces the old entry."""
    cache = PersonalityCache(
        RedisBackend(fakeredis.FakeRedis(server=server)),
        namespace=namespace,
        stats_flush_interval=None,
    )
    reader = PersonalityTracker(store, cache, outbox_interval=None)
    store.update_dimension("bob", DIM, 0.6)
    assert reader.get_current_personality_state("bob").version == 1  # cached in Redis
    store.update_dimension("bob", DIM, 0.7)  # committed without a write-through
    assert reader.get_current_personality_state("bob").version == 1
    assert reader.get_current_personality_state("bob", min_version=2).version == 2
    assert reader.get_current_personality_state("bob").version == 2  # the fill landed
    stats = cache.local_stats()
    assert (stats["hits"], stats["misses"]) == (2, 2)
    reader.close()


def test_async_read_with_a_token_passes_an_older_redis_entry(
    server: fakeredis.FakeServer, namespace: str, store: PersonalityStore
) -> None:
    """As on the sync API: the asyncio tracker honours min_version the same way."""

    async def scenario() -> list[int]:
        cache = AsyncPersonalityCache(
            AsyncRedisBackend(lambda: fakeredis.FakeAsyncRedis(server=server)),
            RedisBackend(fakeredis.FakeRedis(server=server)),
            namespace=namespace,
            stats_flush_interval=None,
        )
        reader = AsyncPersonalityTracker(store, cache, outbox_interval=None)
        store.update_dimension("cy", DIM, 0.6)
        seen = [(await reader.get_current_personality_state("cy")).version]
        store.update_dimension("cy", DIM, 0.7)
        seen.append((await reader.get_current_personality_state("cy")).version)
        seen.append((await reader.get_current_personality_state("cy", min_version=2)).version)
        await reader.aclose()
        await cache.aclose()
        return seen

    assert asyncio.run(scenario()) == [1, 1, 2]


@pytest.mark.parametrize("bad", [-1, 1.5, "2", True, None])
def test_a_bad_token_is_refused(writer: PersonalityTracker, bad: object) -> None:
    """min_version must be a whole number >= 0: anything else is InvalidInputError."""
    with pytest.raises(InvalidInputError, match="min_version"):
        writer.get_current_personality_state("dee", min_version=bad)  # type: ignore[arg-type]
