"""The asyncio API on a real redis-server: same behaviour as the sync one, same policy."""

from __future__ import annotations

import asyncio

import pytest

from penny_cache import AsyncPersonalityCache, AsyncPersonalityTracker
from penny_cache.app.embedded import RedisServerProcess, wait_until
from penny_cache.cache import PersonalityCache
from penny_cache.errors import InvalidValueError
from penny_cache.state import PersonalityState
from penny_cache.store.database import PersonalityStore
from penny_cache.tracker import PersonalityTracker

pytestmark = pytest.mark.integration


class CountingStore(PersonalityStore):
    """A real store that counts SQL loads (from any thread)."""

    loads = 0

    def load(self, user_id: str) -> PersonalityState:
        self.loads += 1
        return super().load(user_id)


def test_async_read_update_and_history(redis_url: str, sqlite_url: str, namespace: str) -> None:
    """await-able reads miss then hit, updates commit and are read back, bad input raises."""

    async def scenario() -> None:
        async with AsyncPersonalityCache.from_url(redis_url, namespace=namespace) as cache:
            tracker = AsyncPersonalityTracker(PersonalityStore(sqlite_url), cache)
            first = await tracker.get_current_personality_state("alice")
            assert first.version == 0
            new = await tracker.update_personality_dimension(
                "alice", "communication_formality", 0.8, 0.1, "async"
            )
            assert await tracker.get_current_personality_state("alice") == new
            with pytest.raises(InvalidValueError):
                await tracker.update_personality_dimension("alice", "communication_formality", 2)
            history = await tracker.get_personality_evolution_history("alice")
            assert [r.version for r in history] == [1]
            stats = await tracker.get_cache_stats()
            assert (stats["hits"], stats["misses"]) == (1, 1)

    asyncio.run(scenario())


def test_concurrent_cold_reads_make_one_sql_load(
    redis_url: str, sqlite_url: str, namespace: str
) -> None:
    """200 concurrent coroutines missing one user share a single SQL read."""
    store = CountingStore(sqlite_url)

    async def scenario() -> list[PersonalityState]:
        async with AsyncPersonalityCache.from_url(redis_url, namespace=namespace) as cache:
            tracker = AsyncPersonalityTracker(store, cache)
            return await asyncio.gather(
                *(tracker.get_current_personality_state("cold") for _ in range(200))
            )

    states = asyncio.run(scenario())
    assert len({s.version for s in states}) == 1
    assert store.loads == 1


def test_async_update_reaches_a_sync_workers_near_cache(
    own_redis: RedisServerProcess, sqlite_url: str, namespace: str
) -> None:
    """An update from the asyncio API invalidates a sync cache's near copy, and back."""
    sync_cache = PersonalityCache.from_url(own_redis.url, namespace=namespace)
    sync = PersonalityTracker(PersonalityStore(sqlite_url), sync_cache)
    sync.get_current_personality_state("alice")
    wait_until(lambda: sync_cache.near_trusted, 10, "the sync listener")

    async def scenario() -> int:
        async with AsyncPersonalityCache.from_url(own_redis.url, namespace=namespace) as cache:
            tracker = AsyncPersonalityTracker(PersonalityStore(sqlite_url), cache)
            new = await tracker.update_personality_dimension("alice", "proactive_suggestions", 1)
            return new.version

    version = asyncio.run(scenario())
    wait_until(
        lambda: sync.get_current_personality_state("alice").version == version, 5, "the update"
    )
    sync_cache.close()


def test_async_near_hits_once_the_listener_vouches(
    redis_url: str, sqlite_url: str, namespace: str
) -> None:
    """The asyncio cache serves repeated reads from its near cache, counted as hits."""

    async def scenario() -> dict[str, int]:
        async with AsyncPersonalityCache.from_url(redis_url, namespace=namespace) as cache:
            tracker = AsyncPersonalityTracker(PersonalityStore(sqlite_url), cache)
            await tracker.get_current_personality_state("bob")
            for _ in range(200):
                if cache.near_trusted:
                    break
                await asyncio.sleep(0.01)
            for _ in range(10):
                await tracker.get_current_personality_state("bob")
            return cache.local_stats()

    stats = asyncio.run(scenario())
    assert stats["near_hits"] >= 9
    assert stats["requests"] == 11


def test_a_new_event_loop_per_call_works_and_counts_no_redis_error(
    redis_url: str, sqlite_url: str, namespace: str
) -> None:
    """Penny's sync callers run each call in a new event loop (``new_event_loop`` +
    ``run_until_complete`` + ``close``). Used to fail 15 of 30 write-throughs with "Event
    loop is closed" (connections bound to the first loop); now every call of every loop
    reaches Redis: no Redis error, nothing left undelivered, every update read back."""
    cache = AsyncPersonalityCache.from_url(redis_url, namespace=namespace)
    tracker = AsyncPersonalityTracker(PersonalityStore(sqlite_url), cache)
    for step in range(30):
        loop = asyncio.new_event_loop()
        try:
            value = round(0.1 + step / 100, 2)
            update = tracker.update_personality_dimension("pat", "communication_formality", value)
            state = loop.run_until_complete(update)
        finally:
            loop.close()
        assert state.version == step + 1
        read = asyncio.run(tracker.get_current_personality_state("pat"))
        assert read.version == step + 1
    assert cache.pending_writes == 0
    assert cache.local_stats()["redis_errors"] == 0
    asyncio.run(cache.aclose())
