"""Entries ahead of SQL on fakeredis (issue #16, item 3): a refused write-through of a
committed version is checked against SQL, an entry ahead of it is replaced, and a
genuinely newer one never is. Both APIs; the outbox's replay too."""

from __future__ import annotations

import asyncio
from functools import partial

import fakeredis
import pytest

from penny_cache.cache import AsyncPersonalityCache, PersonalityCache
from penny_cache.codec import decode_state, encode_state, encode_tombstone
from penny_cache.redis.backend import AsyncRedisBackend, RedisBackend
from penny_cache.state import PersonalityState
from penny_cache.store.database import PersonalityStore
from penny_cache.store.outbox import OutboxSweeper
from penny_cache.tracker import AsyncPersonalityTracker, PersonalityTracker
from tests.conftest import FakeUTCClock

DIM = "communication_formality"
AHEAD = 10**12  # readable by Lua and the codec alike: only the SQL check catches it


def _at(state: PersonalityState, version: int) -> PersonalityState:
    data = state.to_dict()
    data["version"] = version
    return PersonalityState.from_dict(data)


def _tracker(
    server: fakeredis.FakeServer, namespace: str, store: PersonalityStore
) -> PersonalityTracker:
    backend = RedisBackend(fakeredis.FakeRedis(server=server))
    cache = PersonalityCache(backend, namespace=namespace, stats_flush_interval=None)
    return PersonalityTracker(store, cache, outbox_interval=None)


FORGED_TTL_MS = 60_000


def _forge(
    server: fakeredis.FakeServer, tracker: PersonalityTracker, payload: bytes
) -> fakeredis.FakeRedis:
    """Put ``payload`` under ann's entry key, as whoever holds the Redis credential can,
    with a TTL an entry of ours could have (one without is dropped on the next read)."""
    raw = fakeredis.FakeRedis(server=server)
    raw.set(tracker.cache.keys.state("ann"), payload, px=FORGED_TTL_MS)
    return raw


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


def test_an_update_replaces_an_entry_ahead_of_sql(
    server: fakeredis.FakeServer, namespace: str, store: PersonalityStore
) -> None:
    """Used to happen: an entry at a version SQL never committed refused every later
    write-through and was served until its TTL. Now the update's refused write-through
    is checked against SQL and the entry replaced by SQL's state, counted."""
    tracker = _tracker(server, namespace, store)
    first = tracker.update_personality_dimension("ann", DIM, 0.6)
    raw = _forge(server, tracker, encode_state(_at(first, AHEAD)))
    assert tracker.get_current_personality_state("ann").version == AHEAD  # the finding
    second = tracker.update_personality_dimension("ann", DIM, 0.7)
    stored = decode_state(_bytes(raw.get(tracker.cache.keys.state("ann"))), "ann")
    assert stored.version == second.version == 2
    assert tracker.get_current_personality_state("ann").version == 2
    assert tracker.cache.local_stats()["version_ahead"] == 1


def test_the_asyncio_tracker_replaces_an_entry_ahead_of_sql(
    server: fakeredis.FakeServer, namespace: str, store: PersonalityStore
) -> None:
    """The same on the asyncio face (its SQL check runs in a worker thread)."""

    async def scenario() -> tuple[int, int]:
        backend = AsyncRedisBackend(lambda: fakeredis.FakeAsyncRedis(server=server))
        sync = RedisBackend(fakeredis.FakeRedis(server=server))
        cache = AsyncPersonalityCache(
            backend, sync_backend=sync, namespace=namespace, stats_flush_interval=None
        )
        tracker = AsyncPersonalityTracker(store, cache, outbox_interval=None)
        first = await tracker.update_personality_dimension("ann", DIM, 0.6)
        raw = fakeredis.FakeRedis(server=server)
        raw.set(cache.keys.state("ann"), encode_state(_at(first, AHEAD)), px=FORGED_TTL_MS)
        await tracker.update_personality_dimension("ann", DIM, 0.7)
        read = await tracker.get_current_personality_state("ann")
        return read.version, cache.local_stats()["version_ahead"]

    assert asyncio.run(scenario()) == (2, 1)


def test_a_genuinely_newer_entry_is_never_replaced(
    server: fakeredis.FakeServer, namespace: str, store: PersonalityStore
) -> None:
    """A late write-through of v1 refused by v2 (committed in SQL) or by the tombstone
    of v3 in flight (SQL + 1) is settled without touching the entry."""
    tracker = _tracker(server, namespace, store)
    v1 = tracker.update_personality_dimension("ann", DIM, 0.6)
    v2 = tracker.update_personality_dimension("ann", DIM, 0.7)
    cache, key = tracker.cache, tracker.cache.keys.state("ann")
    raw = _forge(server, tracker, encode_state(v2))
    assert cache.publish_committed(v1, partial(store.load, "ann")) is True
    assert raw.get(key) == encode_state(v2)
    raw.set(key, encode_tombstone(3))
    assert cache.publish_committed(v1, partial(store.load, "ann")) is True
    assert raw.get(key) == encode_tombstone(3)
    raw.set(key, encode_tombstone(AHEAD))  # a forged tombstone is ahead like any entry
    assert cache.publish_committed(v1, partial(store.load, "ann")) is True
    assert decode_state(_bytes(raw.get(key)), "ann").version == 2
    assert cache.local_stats()["version_ahead"] == 1


def test_the_outbox_replay_checks_a_refusal_instead_of_counting_it_delivered(
    server: fakeredis.FakeServer, namespace: str, store: PersonalityStore, utc_clock: FakeUTCClock
) -> None:
    """Used to happen: the outbox counted a refused replay as delivered and deleted the
    row, so nothing repaired an entry ahead of SQL. Now the replay replaces it, and the
    row goes only once Redis holds SQL's version."""
    tracker = _tracker(server, namespace, store)
    tracker.get_current_personality_state("ann")  # binds the cache to the store
    committed = store.update_dimension("ann", DIM, 0.6)  # its writer died before Redis
    raw = _forge(server, tracker, encode_state(_at(committed, AHEAD)))
    utc_clock.advance(seconds=1)
    sweeper = OutboxSweeper(store, partial(_publish, tracker.cache, store))
    assert sweeper.sweep(grace=0.0) == 1
    assert decode_state(_bytes(raw.get(tracker.cache.keys.state("ann"))), "ann").version == 1
    assert store.outbox_due(0.0) == []


def _publish(cache: PersonalityCache, store: PersonalityStore, state: PersonalityState) -> bool:
    return cache.publish_committed(state, partial(store.load, state.user_id))


def _bytes(value: object) -> bytes:
    assert isinstance(value, bytes)
    return value
