"""Strict write mode on fakeredis: an update first makes the old version unusable in
Redis (a tombstone, announced) inside its transaction, or is refused and commits
nothing; reads stay available; fills below a tombstone are refused, the committed
version replaces it. Both APIs."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest

from penny_cache.cache import AsyncPersonalityCache, PersonalityCache
from penny_cache.codec import is_tombstone
from penny_cache.errors import CacheUnavailableError, ConfigurationError
from penny_cache.policy.ops import CacheOp, WritePublish
from penny_cache.redis.backend import AsyncRedisBackend, RedisBackend
from penny_cache.redis.breaker import CircuitBreaker
from penny_cache.state import PersonalityState
from penny_cache.store.database import PersonalityStore
from penny_cache.tracker import AsyncPersonalityTracker, PersonalityTracker

DIM = "communication_formality"


class _NoWriteThrough(RedisBackend):
    """Redis that takes the tombstone but loses every write-through (as a connection
    dropped between the commit and the write-through would)."""

    def run(self, op: CacheOp) -> Any:
        if isinstance(op, WritePublish):
            raise CacheUnavailableError("lost on the way")
        return super().run(op)


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


def _cache(server: fakeredis.FakeServer, namespace: str, **options: Any) -> PersonalityCache:
    backend = options.pop("backend", None) or RedisBackend(fakeredis.FakeRedis(server=server))
    return PersonalityCache(backend, namespace=namespace, stats_flush_interval=None, **options)


@pytest.fixture
def strict(
    server: fakeredis.FakeServer, namespace: str, store: PersonalityStore
) -> Iterator[PersonalityTracker]:
    tracker = PersonalityTracker(
        store, _cache(server, namespace), outbox_interval=None, write_mode="strict"
    )
    yield tracker
    tracker.close()


def _nothing_committed(store: PersonalityStore, user: str) -> None:
    assert store.load(user).version == 0
    assert store.history(user) == []
    assert store.outbox_due(grace=-3600) == []


def test_write_mode_is_validated_with_a_clear_error(store: PersonalityStore) -> None:
    """write_mode= accepts "available" and "strict" only; anything else is refused at
    construction, naming both choices."""
    cache = PersonalityCache(RedisBackend(fakeredis.FakeRedis()), stats_flush_interval=None)
    with pytest.raises(ConfigurationError, match="'available' or 'strict'"):
        PersonalityTracker(store, cache, outbox_interval=None, write_mode="safe")


def test_refused_when_redis_is_down_and_nothing_commits(
    server: fakeredis.FakeServer, namespace: str, store: PersonalityStore
) -> None:
    """Redis unreachable: the strict update raises CacheUnavailableError saying strict
    mode refused it and why; the version is unchanged, with no history and no outbox row.
    Reads stay available (SQL answers)."""
    server.connected = False
    tracker = PersonalityTracker(
        store, _cache(server, namespace), outbox_interval=None, write_mode="strict"
    )
    with pytest.raises(CacheUnavailableError, match="strict write mode refused") as caught:
        tracker.update_personality_dimension("ann", DIM, 0.9)
    assert "unreachable" in str(caught.value)
    _nothing_committed(store, "ann")
    assert tracker.get_current_personality_state("ann").version == 0
    tracker.close()


def test_refused_while_the_breaker_is_open(
    server: fakeredis.FakeServer, namespace: str, store: PersonalityStore
) -> None:
    """With the breaker open the update is refused without touching Redis (which is
    fine meanwhile), and nothing commits."""
    breaker = CircuitBreaker(1, 60.0)
    breaker.failure()
    backend = RedisBackend(fakeredis.FakeRedis(server=server), breaker=breaker)
    tracker = PersonalityTracker(
        store, _cache(server, namespace, backend=backend), outbox_interval=None, write_mode="strict"
    )
    with pytest.raises(CacheUnavailableError, match=r"strict write mode refused.*circuit open"):
        tracker.update_personality_dimension("ann", DIM, 0.9)
    _nothing_committed(store, "ann")
    tracker.close()


def test_refused_when_redis_answers_with_an_error(
    server: fakeredis.FakeServer, strict: PersonalityTracker, store: PersonalityStore
) -> None:
    """Redis up but refusing (the sequence key is not a number): refused, nothing
    committed."""
    fakeredis.FakeRedis(server=server).set(strict.cache.keys.sequence(), b"x")
    with pytest.raises(CacheUnavailableError, match="strict write mode refused"):
        strict.update_personality_dimension("ann", DIM, 0.9)
    _nothing_committed(store, "ann")


def test_accepted_when_up_and_redis_holds_the_new_version(
    server: fakeredis.FakeServer, strict: PersonalityTracker, store: PersonalityStore
) -> None:
    """Redis up: the update commits; the write-through replaced the tombstone, so the
    next read in another cache is a Redis hit of the new version."""
    state = strict.update_personality_dimension("ann", DIM, 0.9)
    assert state.version == 1 == store.load("ann").version
    other = PersonalityTracker(store, _cache(server, strict.cache.namespace), outbox_interval=None)
    assert other.get_current_personality_state("ann") == state
    assert other.cache.local_stats()["hits"] == 1
    other.close()


def test_the_hook_sees_the_locked_state_and_the_next_version(store: PersonalityStore) -> None:
    """The store calls before_commit with the current state and the version about to be
    committed; what it raises rolls the whole update back and goes up unchanged."""
    seen: list[tuple[int, int]] = []

    def hook(current: PersonalityState, version: int) -> None:
        seen.append((current.version, version))
        if version == 2:
            raise CacheUnavailableError("no")

    store.update_dimension("ann", DIM, 0.6, before_commit=hook)
    with pytest.raises(CacheUnavailableError, match="no"):
        store.update_dimension("ann", DIM, 0.7, before_commit=hook)
    assert seen == [(0, 1), (1, 2)]
    assert store.load("ann").version == 1
    assert [r.version for r in store.history("ann")] == [1]


def test_a_fill_below_the_tombstone_is_refused_and_the_committed_version_replaces_it(
    server: fakeredis.FakeServer, namespace: str, store: PersonalityStore
) -> None:
    """The write-through after COMMIT is lost: the tombstone (which replaced the cached
    v0) stays. A reader's fill of the version it read before the commit is refused (no
    stale entry), a read misses and loads the committed version from SQL, and that fill
    replaces the tombstone: the next read is a Redis hit of the new version."""
    writer = PersonalityTracker(
        store,
        _cache(server, namespace, backend=_NoWriteThrough(fakeredis.FakeRedis(server=server))),
        outbox_interval=None,
        write_mode="strict",
    )
    reader_cache = _cache(server, namespace)
    reader = PersonalityTracker(store, reader_cache, outbox_interval=None)
    old = reader.get_current_personality_state("ann")  # v0, now cached in Redis too
    assert writer.update_personality_dimension("ann", DIM, 0.9).version == 1
    raw = fakeredis.FakeRedis(server=server)

    def cached() -> bytes:
        value = raw.get(key)
        assert isinstance(value, bytes)
        return value

    key = reader_cache.keys.state("ann")
    assert is_tombstone(cached())
    assert reader_cache.set("ann", old) is False  # the slow fill: refused
    assert reader.get_current_personality_state("ann").version == 1  # a miss: SQL
    assert not is_tombstone(cached())
    assert reader.get_current_personality_state("ann").version == 1
    assert reader_cache.local_stats()["hits"] == 1
    writer.close()
    reader.close()


def test_async_api_refuses_when_down_and_accepts_when_up(
    server: fakeredis.FakeServer, namespace: str, store: PersonalityStore
) -> None:
    """The asyncio tracker: refused (nothing committed) while Redis is unreachable,
    committed once it is back."""

    async def scenario() -> int:
        sync_backend = RedisBackend(fakeredis.FakeRedis(server=server))
        cache = AsyncPersonalityCache(
            AsyncRedisBackend(lambda: fakeredis.FakeAsyncRedis(server=server)),
            sync_backend,
            namespace=namespace,
            stats_flush_interval=None,
        )
        tracker = AsyncPersonalityTracker(store, cache, outbox_interval=None, write_mode="strict")
        server.connected = False
        with pytest.raises(CacheUnavailableError, match="strict write mode refused"):
            await tracker.update_personality_dimension("ann", DIM, 0.9)
        _nothing_committed(store, "ann")
        server.connected = True
        sync_backend.breaker.success()  # the probe's job, done here at once
        state = await tracker.update_personality_dimension("ann", DIM, 0.9)
        await tracker.aclose()
        await cache.aclose()
        return state.version

    assert asyncio.run(scenario()) == 1
