"""Versions from Redis are never believed over SQL for long, on a real redis-server
(issue #16, item 3).

Two trackers (or two HTTP services) with their own caches and near caches on one Redis
and one database stand for two workers. Each test forges what whoever holds the
service's Redis credential can write, then shows every worker serving SQL's version
within the staleness bound. Every wait polls for an outcome with a deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from penny_cache.app.embedded import wait_until
from penny_cache.app.service import create_app
from penny_cache.cache import AsyncPersonalityCache, PersonalityCache
from penny_cache.codec import decode_state, encode_state, encode_tombstone, version_prefix
from penny_cache.config import Settings
from penny_cache.state import PersonalityState
from penny_cache.store.database import PersonalityStore
from penny_cache.tracker import AsyncPersonalityTracker, PersonalityTracker

pytestmark = pytest.mark.integration

DIM = "communication_formality"
STALENESS = 0.5
BOUND = 2.0  # the staleness bound plus room for a loaded 2-core machine
AHEAD = 10**12  # a version Lua and the codec read alike: only SQL knows it is forged
Pair = tuple[PersonalityTracker, PersonalityTracker]


def _at(state: PersonalityState, version: int) -> PersonalityState:
    data = state.to_dict()
    data["version"] = version
    return PersonalityState.from_dict(data)


def _tracker(url: str, database_url: str, namespace: str, **options: Any) -> PersonalityTracker:
    cache = PersonalityCache.from_url(
        url, namespace=namespace, max_staleness=STALENESS, timeout=0.5
    )
    options.setdefault("outbox_interval", None)
    return PersonalityTracker(PersonalityStore(database_url), cache, **options)


def _close(*trackers: PersonalityTracker) -> None:
    for tracker in trackers:
        tracker.close()
        tracker.cache.close()
        tracker.store.close()


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def _serves(read: Callable[[], int], version: int, what: str) -> None:
    """``read`` answers exactly ``version`` within ``BOUND`` (an answer above it, the
    forged version, is as wrong as one below)."""
    wait_until(lambda: read() == version, BOUND, f"{what} to serve v{version}")


def _warm(tracker: PersonalityTracker, user: str) -> None:
    tracker.get_current_personality_state(user)
    wait_until(lambda: tracker.cache.near_trusted, 10, "the listener to vouch")
    tracker.get_current_personality_state(user)


@pytest.mark.parametrize("forged", [2**62, AHEAD], ids=["2^62", "10^12"])
def test_a_forged_future_version_is_replaced_by_the_next_update(
    redis_url: str, database_url: str, namespace: str, raw: redis.Redis, forged: int
) -> None:
    """Used to happen: an entry whose version is 2^62 (inside and out) refused every
    later write-through, so after the next update SQL was at version 4 and every worker
    served 2^62. Now 2^62 is unreadable (more digits than the scripts read exactly:
    overwritten, and a miss on read) and a readable forged version (10^12) is caught by
    the check against SQL and replaced: both workers serve SQL's version within the
    bound, on SQLite and PostgreSQL."""
    writer = _tracker(redis_url, database_url, namespace)
    reader = _tracker(redis_url, database_url, namespace)
    try:
        for value in (0.1, 0.2, 0.3):
            state = writer.update_personality_dimension("ann", DIM, value)
        _warm(reader, "ann")
        key = writer.cache.keys.state("ann")
        raw.set(key, encode_state(_at(state, forged)))  # no TTL: a forger need not set one
        updated = writer.update_personality_dimension("ann", DIM, 0.4)
        assert updated.version == 4
        assert decode_state(_bytes(raw.get(key)), "ann").version == 4
        for name, tracker in (("writer", writer), ("reader", reader)):
            _serves(_version_read(tracker), 4, name)
        assert writer.cache.local_stats()["version_ahead"] == (1 if forged == AHEAD else 0)
    finally:
        _close(writer, reader)


def test_the_asyncio_tracker_replaces_a_forged_version(
    redis_url: str, sqlite_url: str, namespace: str, raw: redis.Redis
) -> None:
    """The asyncio face (the HTTP service's): the same replacement, its SQL check run in
    a worker thread; a second asyncio cache on the same Redis serves SQL's version."""

    async def scenario() -> tuple[int, int, int]:
        def tracker() -> AsyncPersonalityTracker:
            cache = AsyncPersonalityCache.from_url(
                redis_url, namespace=namespace, max_staleness=STALENESS, timeout=0.5
            )
            return AsyncPersonalityTracker(
                PersonalityStore(sqlite_url), cache, outbox_interval=None
            )

        writer, reader = tracker(), tracker()
        state = await writer.update_personality_dimension("ann", DIM, 0.1)
        raw.set(writer.cache.keys.state("ann"), encode_state(_at(state, AHEAD)))
        await writer.update_personality_dimension("ann", DIM, 0.2)
        deadline = time.monotonic() + BOUND
        seen = (await reader.get_current_personality_state("ann")).version
        while seen != 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
            seen = (await reader.get_current_personality_state("ann")).version
        written = (await writer.get_current_personality_state("ann")).version
        ahead = writer.cache.local_stats()["version_ahead"]
        for made in (writer, reader):
            made.close()
            await made.cache.aclose()
            made.store.close()
        return written, seen, ahead

    assert asyncio.run(scenario()) == (2, 2, 1)


def test_a_duplicate_version_key_is_malformed_and_replaced(
    redis_url: str, sqlite_url: str, namespace: str, raw: redis.Redis
) -> None:
    """Used to happen: ``{"version":10^12, ..., "version":3}`` was read as 10^12 by the
    Lua check (refusing every write-through) and as 3 by msgspec (served), so after the
    next update every worker kept serving 3. Now the decoder refuses an envelope whose
    two readings differ: a read is a miss (SQL answers, counted as a decode error), and
    the next update replaces it; both workers serve SQL's version."""
    writer = _tracker(redis_url, sqlite_url, namespace)
    reader = _tracker(redis_url, sqlite_url, namespace)
    try:
        for value in (0.1, 0.2, 0.3):
            state = writer.update_personality_dimension("ann", DIM, value)
        key = writer.cache.keys.state("ann")
        body = encode_state(state)[len(version_prefix()) + 1 :]
        forged = version_prefix().encode() + str(AHEAD).encode() + body[:-1] + b',"version":3}'
        raw.set(key, forged)
        assert reader.get_current_personality_state("ann").version == 3
        assert reader.cache.local_stats()["decode_errors"] == 1
        raw.set(key, forged)
        writer.update_personality_dimension("ann", DIM, 0.4)
        assert decode_state(_bytes(raw.get(key)), "ann").version == 4
        for name, tracker in (("writer", writer), ("reader", reader)):
            _serves(_version_read(tracker), 4, name)
    finally:
        _close(writer, reader)


def test_the_outbox_replays_over_a_forged_version(
    redis_url: str, database_url: str, namespace: str, raw: redis.Redis
) -> None:
    """Used to happen: the outbox counted a refused replay as delivered, so a version
    whose writer died never reached Redis past a forged entry. Now a worker's sweeper
    checks the refusal against SQL and replaces the entry: the other worker serves SQL's
    version, and the outbox row is gone."""
    sweeping = _tracker(redis_url, database_url, namespace, outbox_interval=0.05)
    reader = _tracker(redis_url, database_url, namespace)
    try:
        state = sweeping.update_personality_dimension("ann", DIM, 0.1)
        _warm(reader, "ann")
        raw.set(sweeping.cache.keys.state("ann"), encode_state(_at(state, AHEAD)))
        sweeping.store.update_dimension("ann", DIM, 0.2)  # its writer died before Redis
        wait_until(lambda: _stored_version(raw, sweeping) == 2, 10, "the sweeper's replay")
        _serves(lambda: reader.get_current_personality_state("ann").version, 2, "reader")
        wait_until(lambda: not sweeping.store.outbox_due(-3600), 10, "the row to go")
        assert sweeping.cache.local_stats()["version_ahead"] == 1
    finally:
        _close(sweeping, reader)


@pytest.mark.parametrize("forged", ["tombstone", "state"])
def test_strict_mode_replaces_a_forged_tombstone_or_state(
    redis_url: str, sqlite_url: str, namespace: str, raw: redis.Redis, forged: str
) -> None:
    """Used to happen: in strict mode a forged tombstone (or state) at a huge version
    made the seal a no-op and refused the write-through, so the committed version never
    reached Redis. Now the refused write-through is checked and the entry replaced:
    both workers serve SQL's version within the bound."""
    writer = _tracker(redis_url, sqlite_url, namespace, write_mode="strict")
    reader = _tracker(redis_url, sqlite_url, namespace, write_mode="strict")
    try:
        state = writer.update_personality_dimension("ann", DIM, 0.1)
        _warm(reader, "ann")
        payload = (
            encode_tombstone(AHEAD) if forged == "tombstone" else encode_state(_at(state, AHEAD))
        )
        raw.set(writer.cache.keys.state("ann"), payload)
        assert writer.update_personality_dimension("ann", DIM, 0.2).version == 2
        assert _stored_version(raw, writer) == 2
        _serves(lambda: reader.get_current_personality_state("ann").version, 2, "reader")
    finally:
        _close(writer, reader)


def test_two_http_workers_serve_sql_after_a_forged_version(
    redis_url: str, sqlite_url: str, namespace: str, raw: redis.Redis
) -> None:
    """Used to happen: with a forged entry ahead of SQL, a PUT answered version 4 and
    both workers kept serving the forged version. Now both services (their own caches,
    near caches and listeners, one Redis and one database) serve SQL's version within
    the bound after the next PUT."""
    settings = Settings(redis_url=redis_url, database_url=sqlite_url, namespace=namespace)
    apps = [create_app(settings), create_app(settings)]
    with TestClient(apps[0]) as first, TestClient(apps[1]) as second:
        path = f"/personality/ann/dimensions/{DIM}"
        for value in (0.1, 0.2, 0.3):
            assert first.put(path, json={"value": value}).status_code == 200
        for client in (first, second):
            assert client.get("/personality/ann").json()["version"] == 3
        cache = apps[0].state.service.tracker.cache
        state = decode_state(_bytes(raw.get(cache.keys.state("ann"))), "ann")
        raw.set(cache.keys.state("ann"), encode_state(_at(state, AHEAD)))
        assert first.put(path, json={"value": 0.4}).json()["version"] == 4
        for name, client in (("first", first), ("second", second)):
            _serves(partial(_http_version, client), 4, name)


def _version_read(tracker: PersonalityTracker) -> Callable[[], int]:
    return lambda: tracker.get_current_personality_state("ann").version


def _http_version(client: TestClient) -> int:
    return int(client.get("/personality/ann").json()["version"])


def _stored_version(client: redis.Redis, tracker: PersonalityTracker) -> int:
    payload = client.get(tracker.cache.keys.state("ann"))
    return -1 if payload is None else decode_state(_bytes(payload), "ann").version


def _bytes(value: Any) -> bytes:
    assert isinstance(value, bytes)
    return value


def test_a_forged_entry_without_a_ttl_is_never_served_to_a_reader(
    redis_url: str, sqlite_url: str, namespace: str, raw: redis.Redis
) -> None:
    """Used to happen: a forged entry at a plausible future version (10^12) with no TTL
    (or one of years) was served by every worker that read Redis until that user's
    next write, which may never come: nothing else compared it with SQL. Now a read
    through the tracker (sync and asyncio, the HTTP service's) drops an entry whose TTL
    is missing or longer than ``PENNY_CACHE_TTL``, since no entry penny_cache writes has
    one: SQL's version is served and the refill carries a TTL again. With a TTL within
    ours a forged entry is served at most one cache TTL."""
    writer = _tracker(redis_url, sqlite_url, namespace)
    try:
        state = writer.update_personality_dimension("ann", DIM, 0.1)
        key = writer.cache.keys.state("ann")
        for lifetime in (None, 10 * 365 * 86400 * 1000):
            raw.set(key, encode_state(_at(state, AHEAD)), px=lifetime)
            fresh = _tracker(redis_url, sqlite_url, namespace)
            try:
                assert fresh.get_current_personality_state("ann").version == 1
            finally:
                _close(fresh)
            assert 0 < raw.pttl(key) <= writer.cache.ttl * 1000

        raw.set(key, encode_state(_at(state, AHEAD)))

        async def read_async() -> int:
            cache = AsyncPersonalityCache.from_url(
                redis_url, namespace=namespace, max_staleness=STALENESS, timeout=0.5
            )
            tracker = AsyncPersonalityTracker(
                PersonalityStore(sqlite_url), cache, outbox_interval=None
            )
            try:
                return (await tracker.get_current_personality_state("ann")).version
            finally:
                tracker.close()
                await cache.aclose()
                tracker.store.close()

        assert asyncio.run(read_async()) == 1
    finally:
        _close(writer)
