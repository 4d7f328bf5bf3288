"""Strict write mode and refused write-throughs on a real, private redis-server.

Two trackers with their own caches and near caches on one Redis and one database stand
for two workers. Every wait below polls for an outcome with a deadline; none sleeps
hoping for the best.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import pytest
import redis

from penny_cache.app.embedded import RedisServerProcess, wait_until
from penny_cache.cache import AsyncPersonalityCache, PersonalityCache
from penny_cache.errors import CacheUnavailableError
from penny_cache.store.database import PersonalityStore
from penny_cache.tracker import AsyncPersonalityTracker, PersonalityTracker

pytestmark = pytest.mark.integration

DIM = "communication_formality"
STALENESS = 0.5
Pair = tuple[PersonalityTracker, PersonalityTracker]


def _pair(url: str, sqlite_url: str, namespace: str, write_mode: str) -> Pair:
    def tracker() -> PersonalityTracker:
        cache = PersonalityCache.from_url(
            url, namespace=namespace, max_staleness=STALENESS, timeout=0.5
        )
        store = PersonalityStore(sqlite_url)
        return PersonalityTracker(store, cache, outbox_interval=None, write_mode=write_mode)

    return tracker(), tracker()


@pytest.fixture
def pair(
    request: pytest.FixtureRequest, own_redis: RedisServerProcess, sqlite_url: str, namespace: str
) -> Iterator[Pair]:
    """(writer, reader); the write mode is the test's parameter (default strict)."""
    mode = getattr(request, "param", "strict")
    writer, reader = _pair(own_redis.url, sqlite_url, namespace, mode)
    yield writer, reader
    for tracker in (writer, reader):
        tracker.close()
        tracker.cache.close()
        tracker.store.close()


def _warm(tracker: PersonalityTracker, user: str) -> int:
    """Read ``user`` until it is a near hit (the listener vouches): its version."""
    version = tracker.get_current_personality_state(user).version
    wait_until(lambda: tracker.cache.near_trusted, 10, "the listener to vouch")
    assert tracker.get_current_personality_state(user).version == version
    return version


def _seen_within(read: Callable[[], int], version: int, bound: float) -> float:
    """Poll ``read`` until it answers ``version`` or newer; the seconds it took, which
    must stay within ``bound`` (failing as soon as the bound has passed)."""
    began = time.monotonic()
    while read() < version:
        assert time.monotonic() - began <= bound, f"v{version} not seen within {bound}s"
    return time.monotonic() - began


def test_strict_update_is_refused_while_redis_is_down(
    own_redis: RedisServerProcess, pair: Pair
) -> None:
    """Redis killed: a strict update raises CacheUnavailableError naming strict mode,
    and commits nothing (version, history and outbox unchanged); reads still answer
    from SQL."""
    writer, _reader = pair
    writer.update_personality_dimension("ann", DIM, 0.6)
    own_redis.stop()
    with pytest.raises(CacheUnavailableError, match="strict write mode refused"):
        writer.update_personality_dimension("ann", DIM, 0.9)
    store = writer.store
    assert store.load("ann").version == 1
    assert [r.version for r in store.history("ann")] == [1]
    assert all(version == 1 for _user, version in store.outbox_due(grace=-3600))
    assert writer.get_current_personality_state("ann").version == 1


def test_after_a_strict_update_returns_redis_never_has_the_old_version(
    own_redis: RedisServerProcess, pair: Pair
) -> None:
    """The reader's near cache holds each old version when the writer's strict update
    returns: Redis already holds the new one (never the old: the tombstone replaced it
    before COMMIT), and the reader's near cache has dropped the old one within the
    staleness bound (the announcement is asynchronous: a read right after the return
    may still be a near hit of the old version; 8 of 200 were in one measured run, 35
    of 200 in available mode); 20 rounds."""
    writer, reader = pair
    raw = redis.Redis.from_url(own_redis.url)
    for round_ in range(20):
        before = _warm(reader, "ann")
        state = writer.update_personality_dimension("ann", DIM, round_ / 20)
        assert state.version == before + 1
        cached = raw.get(writer.cache.keys.state("ann"))
        assert cached is not None and f'"version":{state.version},'.encode() in cached
        _seen_within(
            lambda: reader.get_current_personality_state("ann").version, state.version, STALENESS
        )


def _exhaust_memory(client: redis.Redis) -> None:
    """``maxmemory`` just above what is used, ``noeviction``, then fill up to it; then
    ``maxmemory`` back to what was used before the fill (client buffers come and go, so
    at the limit itself Redis takes some writes and refuses others: a retried
    write-through got through 0.25 s later): from here on every command that needs
    memory is refused (OOM), while PING, GET, UNLINK and PUBLISH still work."""
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", used + 256 * 1024)
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        for n in range(10_000):
            client.set(f"filler:{n}", b"x" * 4096)
    client.config_set("maxmemory", used)


@pytest.mark.parametrize("pair", ["available"], indirect=True)
@pytest.mark.parametrize("refusal", ["out-of-memory", "sequence-not-a-number"])
def test_a_refused_write_through_still_reaches_other_near_caches(
    own_redis: RedisServerProcess, pair: Pair, refusal: str
) -> None:
    """Redis up but refusing the write-through (out of memory under noeviction, or the
    sequence key not a number): the writer unlinks the entry and announces it anyway,
    so another cache's reader (near cache warm with the old version, listener healthy)
    sees the new version within the staleness bound, not after the near-cache TTL."""
    writer, reader = pair
    client = redis.Redis.from_url(own_redis.url)
    assert _warm(reader, "ann") == 0
    _warm(writer, "ann")
    if refusal == "out-of-memory":
        _exhaust_memory(client)
    else:
        client.set(writer.cache.keys.sequence(), b"not-a-number")
    state = writer.update_personality_dimension("ann", DIM, 0.9)
    assert writer.cache.pending_writes == 1  # refused, and queued as any failed one
    _seen_within(
        lambda: reader.get_current_personality_state("ann").version, state.version, STALENESS
    )


def test_the_asyncio_tracker_refuses_while_down_and_commits_once_back(
    own_redis: RedisServerProcess, sqlite_url: str, namespace: str
) -> None:
    """The asyncio API on a real server: a strict update while redis-server is down is
    refused and commits nothing; once it is back (restarted, the breaker's cooldown
    passed: polled for), the same update commits and Redis holds the new version."""

    async def scenario() -> int:
        cache = AsyncPersonalityCache.from_url(
            own_redis.url, namespace=namespace, redis_cooldown=0.05, timeout=0.5
        )
        store = PersonalityStore(sqlite_url)
        tracker = AsyncPersonalityTracker(store, cache, outbox_interval=None, write_mode="strict")
        try:
            await tracker.get_current_personality_state("ann")
            own_redis.kill()
            with pytest.raises(CacheUnavailableError, match="strict write mode refused"):
                await tracker.update_personality_dimension("ann", DIM, 0.9)
            assert store.load("ann").version == 0 and store.history("ann") == []
            own_redis.start()
            deadline = time.monotonic() + 10
            while True:
                try:
                    state = await tracker.update_personality_dimension("ann", DIM, 0.9)
                    raw = redis.Redis.from_url(own_redis.url).get(cache.keys.state("ann"))
                    assert raw is not None and b'"version":1,' in raw
                    return state.version
                except CacheUnavailableError:
                    assert time.monotonic() < deadline, "Redis back, strict updates still refused"
                    await asyncio.sleep(0.05)  # the breaker's cooldown, then a trial call
        finally:
            await tracker.aclose()
            await cache.aclose()
            store.close()

    assert asyncio.run(scenario()) == 1
