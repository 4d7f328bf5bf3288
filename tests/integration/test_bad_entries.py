"""One bad key stays one user's problem, on a real redis-server (issue #16, item 2).

Each test's docstring says what used to happen and what holds now. The caches here run
with the production Redis timeout (``Settings().redis_timeout``) and no near cache, so
every read below reaches Redis and the breaker sees every outcome.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from penny_cache.app.service import create_app
from penny_cache.cache import AsyncPersonalityCache, PersonalityCache
from penny_cache.codec import decode_state, version_prefix
from penny_cache.config import Settings
from penny_cache.personality_state_cache import PersonalityStateCache
from penny_cache.redis.breaker import CircuitBreaker
from penny_cache.store.database import PersonalityStore
from penny_cache.tracker import AsyncPersonalityTracker, PersonalityTracker

pytestmark = pytest.mark.integration

DIM = "communication_formality"
TIMEOUT = Settings().redis_timeout  # what production runs with
NESTED = b"[" * 1000 + b"]" * 1000
BIG = 50 * 1024 * 1024


def _nested(user: str) -> bytes:
    """About 2 KB nested 1,000 levels: past msgspec's recursion limit."""
    return version_prefix().encode() + b'1,"user":"' + user.encode() + b'","state":' + NESTED + b"}"


def _cache(url: str, namespace: str) -> PersonalityCache:
    return PersonalityCache.from_url(
        url, namespace=namespace, near_cache=False, timeout=TIMEOUT, stats_flush_interval=None
    )


def _breaker(cache: PersonalityCache | AsyncPersonalityCache) -> CircuitBreaker:
    breaker: CircuitBreaker = cache._sync_backend.breaker  # type: ignore[attr-defined]
    return breaker


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def tracker(redis_url: str, sqlite_url: str, namespace: str) -> Iterator[PersonalityTracker]:
    made = PersonalityTracker(
        PersonalityStore(sqlite_url), _cache(redis_url, namespace), outbox_interval=None
    )
    made.update_personality_dimension("ann", DIM, 0.6)  # binds the cache; SQL at v1
    yield made
    made.close()
    made.cache.close()
    made.store.close()


def _decode_errors(cache: PersonalityCache | AsyncPersonalityCache) -> int:
    return int(cache.local_stats()["decode_errors"])


def test_a_nested_entry_is_a_deleted_miss_for_the_trackers_and_the_cache(
    tracker: PersonalityTracker, raw: redis.Redis, redis_url: str, namespace: str
) -> None:
    """Used to happen: an entry nested 1,000 levels raised ``RecursionError`` past the
    decoder's guard: every read of that user raised (a 500) and the entry was never
    deleted. Now, on the sync tracker, the asyncio tracker, and both caches, the read is
    a miss (the trackers answer SQL's state and refill a valid entry; the caches answer
    None and delete it), counted as a decode error; the breaker stays closed."""
    key = tracker.cache.keys.state("ann")
    raw.set(key, _nested("ann"))
    assert tracker.get_current_personality_state("ann").version == 1
    assert decode_state(_bytes(raw.get(key)), "ann").version == 1  # refilled from SQL
    raw.set(key, _nested("ann"))
    assert tracker.cache.get("ann") is None
    assert raw.exists(key) == 0
    assert _decode_errors(tracker.cache) == 2

    async def asyncio_faces() -> tuple[int, bool, int]:
        cache = AsyncPersonalityCache.from_url(
            redis_url, namespace=namespace, near_cache=False, stats_flush_interval=None
        )
        other = AsyncPersonalityTracker(tracker.store, cache, outbox_interval=None)
        raw.set(key, _nested("ann"))
        version = (await other.get_current_personality_state("ann")).version
        raw.set(key, _nested("ann"))
        missed = await cache.get("ann") is None
        errors = _decode_errors(cache)
        other.close()
        await cache.aclose()
        return version, missed, errors

    assert asyncio.run(asyncio_faces()) == (1, True, 2)
    assert raw.exists(key) == 0
    assert _breaker(tracker.cache).opened == 0


def test_a_nested_entry_is_a_deleted_miss_for_the_drop_in(
    raw: redis.Redis, redis_url: str, namespace: str
) -> None:
    """The issue reports the drop-in raising too; on this branch's base its value codec
    already turned the ``RecursionError`` into a decode error (this test passes there).
    Pinned so it stays: ``get`` is a miss, the entry is deleted and counted as a decode
    error (nesting in the value or in its type description), and ``set``/``get`` work."""
    dropin = PersonalityStateCache(core=_cache(redis_url, namespace))
    key = dropin.core.keys.legacy("ann")
    envelope = b'{"schema":1,"version":0,"user":"ann","value":' + NESTED + b',"types":null}'
    raw.set(key, envelope)
    assert dropin.get("ann") is None
    assert raw.exists(key) == 0
    assert _decode_errors(dropin.core) == 1
    raw.set(key, b'{"schema":1,"version":0,"user":"ann","value":1,"types":' + NESTED + b"}")
    assert dropin.get("ann") is None
    assert raw.exists(key) == 0
    assert dropin.set("ann", {"v": 1}) is True
    assert dropin.get("ann") == {"v": 1}
    dropin.close()


def test_a_nested_entry_over_http_is_a_200_from_sql(
    raw: redis.Redis, redis_url: str, sqlite_url: str, namespace: str
) -> None:
    """Used to happen: every GET of the user was a 500. Now it answers 200 with SQL's
    state, and Redis holds a valid entry again."""
    settings = Settings(redis_url=redis_url, database_url=sqlite_url, namespace=namespace)
    app = create_app(settings)
    with TestClient(app) as client:
        put = client.put(f"/personality/ann/dimensions/{DIM}", json={"value": 0.6})
        assert put.status_code == 200
        key = app.state.service.tracker.cache.keys.state("ann")
        raw.set(key, _nested("ann"))
        app.state.service.tracker.cache.near.flush()
        answer = client.get("/personality/ann")
        assert answer.status_code == 200
        assert answer.json()["version"] == 1
        assert decode_state(_bytes(raw.get(key)), "ann").version == 1


def test_a_50_mb_entry_costs_its_user_a_miss_and_nobody_a_breaker(
    tracker: PersonalityTracker, raw: redis.Redis
) -> None:
    """Used to happen: each read of a user with a 50 MB entry timed out (the whole value
    was sent, then the cap checked); the timeouts opened the worker's breaker, so other
    users' reads fell to SQL, and the entry was never deleted. Now Redis checks the size
    before sending (``STRLEN`` in the read script) and unlinks it: with the production
    timeout, 40 reads of it (the entry put back before each) are misses answered from
    SQL, the breaker never opens, and every read of another user is a Redis hit."""
    others = [f"user-{n}" for n in range(8)]
    for user in others:
        tracker.update_personality_dimension(user, DIM, 0.5)
    cache, big_key = tracker.cache, tracker.cache.keys.state("ann")
    hits_before = cache.local_stats()["hits"]
    for _ in range(40):
        raw.setrange(big_key, BIG - 1, b"x")  # 50 MB made in Redis, never sent over
        assert tracker.get_current_personality_state("ann").version == 1
        for user in others:
            assert tracker.get_current_personality_state(user).version == 1
    stats = cache.local_stats()
    assert _breaker(cache).opened == 0
    assert stats["redis_errors"] == 0
    assert stats["hits"] - hits_before == 40 * len(others)
    assert stats["decode_errors"] == 40
    assert len(_bytes(raw.get(big_key))) < 4096  # a valid entry refilled from SQL


@pytest.mark.parametrize("kind", ["list", "hash"])
def test_a_wrong_type_entry_or_lease_is_repaired_for_its_user(
    tracker: PersonalityTracker, raw: redis.Redis, kind: str
) -> None:
    """Used to happen: a LIST or HASH at a user's entry (or lease) key answered WRONGTYPE
    on every read and write of that user. Now the read is a miss answered from SQL, the
    entry is refilled; a write over it goes through; a lease key of the wrong type is
    replaced; nothing counts as a Redis failure and the breaker stays closed."""
    cache = tracker.cache
    entry, lease = cache.keys.state("ann"), cache.keys.lease("ann")

    def spoil(key: str) -> None:
        raw.delete(key)
        (raw.rpush(key, "x") if kind == "list" else raw.hset(key, "f", "x"))

    spoil(entry)
    assert tracker.get_current_personality_state("ann").version == 1
    assert decode_state(_bytes(raw.get(entry)), "ann").version == 1
    raw.delete(entry)
    spoil(lease)
    assert tracker.get_current_personality_state("ann").version == 1
    assert raw.type(lease) == b"none"  # taken, then given back by the fill
    assert decode_state(_bytes(raw.get(entry)), "ann").version == 1
    spoil(entry)
    assert tracker.update_personality_dimension("ann", DIM, 0.7).version == 2
    assert decode_state(_bytes(raw.get(entry)), "ann").version == 2
    assert cache.local_stats()["redis_errors"] == 0
    assert _breaker(cache).opened == 0


def test_the_asyncio_tracker_repairs_a_wrong_type_entry(
    tracker: PersonalityTracker, raw: redis.Redis, redis_url: str, namespace: str
) -> None:
    """The asyncio face (the HTTP service's) over a LIST entry and a LIST lease: a read
    answered from SQL that refills the entry, then an update written through over a
    LIST again; no Redis error counted, the breaker closed."""
    entry, lease = tracker.cache.keys.state("ann"), tracker.cache.keys.lease("ann")

    async def scenario() -> tuple[int, int, int, int]:
        cache = AsyncPersonalityCache.from_url(
            redis_url, namespace=namespace, near_cache=False, stats_flush_interval=None
        )
        other = AsyncPersonalityTracker(tracker.store, cache, outbox_interval=None)
        for key in (entry, lease):
            raw.delete(key)
            raw.rpush(key, "x")
        read = (await other.get_current_personality_state("ann")).version
        raw.delete(entry)
        raw.rpush(entry, "x")
        written = (await other.update_personality_dimension("ann", DIM, 0.9)).version
        errors, opened = cache.local_stats()["redis_errors"], _breaker(cache).opened
        other.close()
        await cache.aclose()
        return read, written, errors, opened

    assert asyncio.run(scenario()) == (1, 2, 0, 0)
    assert decode_state(_bytes(raw.get(entry)), "ann").version == 2


def test_wrong_type_drop_in_keys_are_repaired_and_block_nobody(
    raw: redis.Redis, redis_url: str, namespace: str
) -> None:
    """Used to happen: a LIST at a drop-in entry, ticket or at the namespace's index key
    answered WRONGTYPE (the index: for every drop-in user). Now each is repaired where
    it is met: reads are misses, writes land, other users keep working."""
    dropin = PersonalityStateCache(core=_cache(redis_url, namespace))
    keys = dropin.core.keys
    assert dropin.set("bob", {"v": 0}) is True
    for key in (keys.legacy("ann"), keys.legacy_ticket("ann"), keys.legacy_index()):
        raw.delete(key)
        raw.rpush(key, "x")
    assert dropin.get("ann") is None
    assert dropin.get("bob") == {"v": 0}
    assert dropin.set("ann", {"v": 1}) is True
    assert dropin.get("ann") == {"v": 1}
    raw.delete(keys.legacy_index())
    raw.hset(keys.legacy_index(), "f", "x")
    assert dropin.set("bob", {"v": 2}) is True
    assert dropin.get("bob") == {"v": 2}
    assert dropin.core.local_stats()["redis_errors"] == 0
    dropin.close()


def _bytes(value: Any) -> bytes:
    assert isinstance(value, bytes)
    return value
