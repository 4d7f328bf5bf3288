"""Authenticated entries and invalidation messages (``PENNY_VALUE_KEY``) on a real redis-server.

Issue #16, item 4. What used to happen: an entry in Redis was validated, never
authenticated, so a forged envelope (valid JSON, the right user, the right version) written
by anyone holding the Redis credential was served as the user's state; a well-formed
message on the invalidation channel was applied as a precise invalidation. With a value
key each test below shows the property that holds now. Trackers read SQLite (the findings
are about Redis, not the database); waits poll an outcome with a deadline.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
import redis

from penny_cache.app.embedded import wait_until
from penny_cache.cache import AsyncPersonalityCache, PersonalityCache
from penny_cache.codec import encode_state, is_tombstone
from penny_cache.keys import KeySchema, encode_user_id
from penny_cache.personality_state_cache import PersonalityStateCache
from penny_cache.redis.listener import format_message
from penny_cache.signing import Signer
from penny_cache.state import PersonalityState, default_state
from penny_cache.store.database import PersonalityStore
from penny_cache.tracker import AsyncPersonalityTracker, PersonalityTracker

pytestmark = pytest.mark.integration

KEY = "integration-value-key-0123456789abcdef"
OLD = "integration-value-key-rotated-out-0000"
OTHER = "a-key-this-deployment-never-configured"
DIM = "communication_formality"
AT = datetime(2026, 1, 1, tzinfo=UTC)
Forge = Callable[[str, bytes, str], bytes]
# A TTL an entry of ours could have: without one, the TTL guard drops a forgery first.
PLAUSIBLE_TTL_MS = 60_000


def _forged(state: PersonalityState) -> PersonalityState:
    """The same user and version with another value: what an attacker would serve."""
    dims = dict(state.dimensions)
    dims[DIM] = msgspec.structs.replace(dims[DIM], value=0.99)
    return msgspec.structs.replace(state, dimensions=dims)


FORGERIES: dict[str, Forge] = {
    "unsigned": lambda _key, body, _ns: body,
    "wrong-mac": lambda key, body, ns: Signer(KEY, namespace=ns).seal(key, body)[:-64] + b"0" * 64,
    "other-key": lambda key, body, ns: Signer(OTHER, namespace=ns).seal(key, body),
}


def _bytes(raw: redis.Redis, key: str) -> bytes:
    value = raw.get(key)
    assert isinstance(value, bytes), f"{key} holds {value!r}"
    return value


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def _tracker(url: str, sqlite_url: str, namespace: str, **options: Any) -> PersonalityTracker:
    cache = PersonalityCache.from_url(url, namespace=namespace, **options)
    return PersonalityTracker(PersonalityStore(sqlite_url), cache, outbox_interval=None)


def _close(*trackers: PersonalityTracker) -> None:
    for tracker in trackers:
        tracker.close()
        tracker.cache.close()
        tracker.store.close()


@pytest.mark.parametrize("forgery", list(FORGERIES))
def test_a_forged_entry_is_a_miss_and_replaced_from_sql(
    forgery: str, redis_url: str, sqlite_url: str, namespace: str, raw: redis.Redis
) -> None:
    """Used to: the forged envelope was served. Now (sync face) it fails verification,
    is counted as an integrity failure, deleted, and SQL's state is served and written
    back signed."""
    tracker = _tracker(redis_url, sqlite_url, namespace, value_key=KEY, near_cache=False)
    try:
        committed = tracker.update_personality_dimension("alice", DIM, 0.2)
        key = tracker.cache.keys.state("alice")
        signer = Signer(KEY, namespace=namespace)
        assert signer.open(key, _bytes(raw, key)) == encode_state(committed)
        raw.set(
            key,
            FORGERIES[forgery](key, encode_state(_forged(committed)), namespace),
            px=PLAUSIBLE_TTL_MS,
        )

        assert tracker.get_current_personality_state("alice") == committed
        assert tracker.cache.local_stats()["integrity_failures"] == 1
        assert signer.open(key, _bytes(raw, key)) == encode_state(committed)  # refilled
        assert tracker.get_current_personality_state("alice") == committed
        assert tracker.cache.local_stats()["hits"] == 1
    finally:
        _close(tracker)


@pytest.mark.parametrize("forgery", list(FORGERIES))
def test_a_forged_entry_is_a_miss_on_the_asyncio_face(
    forgery: str, redis_url: str, sqlite_url: str, namespace: str, raw: redis.Redis
) -> None:
    """As above, through ``AsyncPersonalityTracker`` and ``AsyncPersonalityCache`` (what
    the HTTP service runs): the forged entry is never served, SQL's state is."""

    async def scenario() -> None:
        cache = AsyncPersonalityCache.from_url(
            redis_url, namespace=namespace, value_key=KEY, near_cache=False
        )
        store = PersonalityStore(sqlite_url)
        async with AsyncPersonalityTracker(store, cache, outbox_interval=None) as tracker:
            committed = await tracker.update_personality_dimension("alice", DIM, 0.2)
            key = cache.keys.state("alice")
            raw.set(
                key,
                FORGERIES[forgery](key, encode_state(_forged(committed)), namespace),
                px=PLAUSIBLE_TTL_MS,
            )
            assert await tracker.get_current_personality_state("alice") == committed
            assert cache.local_stats()["integrity_failures"] == 1
            assert Signer(KEY, namespace=namespace).open(key, _bytes(raw, key)) == encode_state(
                committed
            )
        await cache.aclose()
        store.close()

    asyncio.run(scenario())


def test_an_entry_moved_to_another_users_key_is_a_miss(
    redis_url: str, sqlite_url: str, namespace: str, raw: redis.Redis
) -> None:
    """Used to: user A's genuine entry copied under user B's key was caught only by the
    envelope's user field (which a forger sets at will). Now the MAC covers the key name:
    the copy is a miss, and B gets B's own state from SQL."""
    tracker = _tracker(redis_url, sqlite_url, namespace, value_key=KEY, near_cache=False)
    try:
        alice = tracker.update_personality_dimension("alice", DIM, 0.9)
        bob = tracker.update_personality_dimension("bob", DIM, 0.1)
        keys = tracker.cache.keys
        raw.set(keys.state("bob"), _bytes(raw, keys.state("alice")), px=PLAUSIBLE_TTL_MS)
        assert tracker.get_current_personality_state("bob") == bob != alice
        assert tracker.cache.local_stats()["integrity_failures"] == 1
    finally:
        _close(tracker)


def test_a_forged_drop_in_entry_is_a_miss(redis_url: str, namespace: str, raw: redis.Redis) -> None:
    """Used to: the drop-in (``PersonalityStateCache``) served whatever its key held. Now an
    unsigned value (here written by a worker without the key) or a signed one moved from
    another user's key is a miss and deleted."""
    signed = PersonalityStateCache(
        core=PersonalityCache.from_url(redis_url, namespace=namespace, value_key=KEY)
    )
    unsigned = PersonalityStateCache(core=PersonalityCache.from_url(redis_url, namespace=namespace))
    try:
        signed.set("alice", {"mood": "calm"})
        assert signed.get("alice") == {"mood": "calm"}
        unsigned.set("alice", {"mood": "forged"})
        assert signed.get("alice") is None
        assert signed.core.local_stats()["integrity_failures"] == 1
        keys = signed.core.keys
        assert raw.get(keys.legacy("alice")) is None  # deleted
        signed.set("alice", {"mood": "calm"})
        raw.set(keys.legacy("bob"), _bytes(raw, keys.legacy("alice")))
        assert signed.get("bob") is None
        assert signed.core.local_stats()["integrity_failures"] == 2
    finally:
        signed.close()
        unsigned.close()


def _warm(cache: PersonalityCache, *users: str) -> None:
    """Until each user is a near hit under a vouching listener."""
    for user in users:
        cache.get(user)
    wait_until(lambda: cache.near_trusted, 10, "the listener to vouch")
    near = cache.near
    assert near is not None
    for user in users:
        wait_until(lambda u=user: cache.get(u) and near.lookup(u), 10, f"{user} in the near cache")


def test_a_forged_invalidation_message_flushes_instead_of_invalidating_one_user(
    redis_url: str, namespace: str, raw: redis.Redis
) -> None:
    """Used to: a well-formed message published by anyone holding the Redis credential was
    applied as a precise invalidation. Now a signed listener applies a signed message
    precisely (bob's copy stays) but treats an unsigned one, even with the right sequence
    number, as malformed: the whole near cache goes. The unsigned listener beside it, given
    the same message, drops alice only: the difference is the key."""
    signed = PersonalityCache.from_url(redis_url, namespace=namespace, value_key=KEY)
    writer = PersonalityCache.from_url(redis_url, namespace=namespace, value_key=KEY)
    control = PersonalityCache.from_url(redis_url, namespace=f"{namespace}-control")
    try:
        v0 = {u: default_state(u, AT) for u in ("alice", "bob")}
        for state in v0.values():
            writer.set(state.user_id, state)
            control.set(state.user_id, state)
        _warm(signed, "alice", "bob")
        signed_near = signed.near
        assert signed_near is not None
        v1 = msgspec.structs.replace(v0["alice"], version=1)
        writer.set("alice", v1)  # a genuine, signed announcement
        wait_until(lambda: signed_near.lookup("alice") is None, 10, "alice's precise drop")
        assert signed_near.lookup("bob") is not None
        assert signed.local_stats()["malformed_messages"] == 0

        _warm(signed, "alice")
        _warm(control, "alice", "bob")
        for cache in (signed, control):  # the same forgery, on each one's channel
            seq = int(raw.incr(cache.keys.sequence()))
            raw.publish(cache.keys.channel(), format_message(seq, 2, encode_user_id("alice")))
        wait_until(lambda: signed_near.lookup("bob") is None, 10, "the signed listener's flush")
        wait_until(lambda: signed.local_stats()["integrity_failures"] == 1, 10, "it counted")
        assert signed.local_stats()["malformed_messages"] == 1
        control_near = control.near
        assert control_near is not None
        wait_until(lambda: control_near.lookup("alice") is None, 10, "the control's drop")
        assert control_near.lookup("bob") is not None
    finally:
        for cache in (signed, control, writer):
            cache.close()


async def _eventually(predicate: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + 10
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def test_a_forged_message_flushes_the_asyncio_caches_near_cache(
    redis_url: str, namespace: str, raw: redis.Redis
) -> None:
    """As above for ``AsyncPersonalityCache`` (the HTTP service's): an unsigned message
    naming alice flushes bob's near-cache copy too, and is counted."""

    async def scenario() -> None:
        cache = AsyncPersonalityCache.from_url(redis_url, namespace=namespace, value_key=KEY)
        near = cache.near
        assert near is not None
        try:
            for user in ("alice", "bob"):
                await cache.set(user, default_state(user, AT))
            await cache.get("alice")  # starts the listener
            await _eventually(lambda: cache.near_trusted, "the listener to vouch")
            deadline = time.monotonic() + 10
            while not (near.lookup("alice") and near.lookup("bob")):  # re-read after a flush
                assert time.monotonic() < deadline, "alice and bob never both near"
                await cache.get("alice")
                await cache.get("bob")
            seq = int(raw.incr(cache.keys.sequence()))
            raw.publish(cache.keys.channel(), format_message(seq, 2, encode_user_id("alice")))
            await _eventually(lambda: near.lookup("bob") is None, "the flush")
            await _eventually(lambda: cache.local_stats()["integrity_failures"] == 1, "the count")
        finally:
            await cache.aclose()

    asyncio.run(scenario())


def test_rotation_keeps_entries_of_the_previous_key(
    redis_url: str, namespace: str, raw: redis.Redis
) -> None:
    """Mid-rotation (``PENNY_VALUE_KEY`` new, ``PENNY_VALUE_KEY_PREVIOUS`` old) an entry a
    not-yet-rolled worker signed with the old key is a hit; once the previous key is
    dropped, or for a key that was never configured, it is a miss (and deleted)."""
    old_worker = PersonalityCache.from_url(redis_url, namespace=namespace, value_key=OLD)
    rotating = PersonalityCache.from_url(
        redis_url, namespace=namespace, value_key=KEY, value_key_previous=OLD, near_cache=False
    )
    rolled = PersonalityCache.from_url(
        redis_url, namespace=namespace, value_key=KEY, near_cache=False
    )
    try:
        state = default_state("alice", AT)
        old_worker.set("alice", state)
        assert rotating.get("alice") == state
        assert (rotating.local_stats()["hits"], rotating.local_stats()["misses"]) == (1, 0)
        assert rolled.get("alice") is None
        assert rolled.local_stats()["integrity_failures"] == 1
        assert raw.get(rolled.keys.state("alice")) is None
        stranger = PersonalityCache.from_url(
            redis_url, namespace=namespace, value_key=OTHER, near_cache=False
        )
        try:
            stranger.set("alice", state)
            assert rotating.get("alice") is None
            assert rotating.local_stats()["integrity_failures"] == 1
        finally:
            stranger.close()
    finally:
        for cache in (old_worker, rotating, rolled):
            cache.close()


# sha256 of encode_state(default_state("alice", 2026-01-01 UTC)) by main's codec (e0406ca)
MAIN_ENVELOPE_SHA256 = "406f4764ba1fbd062fd14839909bf29f1d2df3e81869358fe53a32e0a7cdedb8"


def test_without_a_key_the_wire_format_is_unchanged(
    redis_url: str, namespace: str, raw: redis.Redis
) -> None:
    """Without ``PENNY_VALUE_KEY``, the bytes in Redis are main's envelope for a known state
    (pinned by hash) and messages keep their four fields, no tag."""
    pubsub = raw.pubsub()  # type: ignore[no-untyped-call]
    keys = KeySchema(namespace)
    pubsub.subscribe(keys.channel())
    wait_until(lambda: pubsub.get_message(timeout=0.1) is not None, 10, "the subscription")
    with PersonalityCache.from_url(redis_url, namespace=namespace) as cache:
        state = default_state("alice", AT)
        assert cache.set("alice", state)
        stored = _bytes(raw, cache.keys.state("alice"))
        assert hashlib.sha256(stored).hexdigest() == MAIN_ENVELOPE_SHA256
        message = None
        while message is None or message["type"] != "message":
            message = pubsub.get_message(timeout=5)
            assert message is not None, "no invalidation message"
        seq, version, _published, user = message["data"].split(b"|")
        assert (seq.isdigit(), version, user) == (True, b"0", b"alice")
    pubsub.close()


@pytest.mark.parametrize("first", ["unsigned", "signed"])
def test_turning_the_key_on_across_a_fleet_costs_sql_reads_never_wrong_data(
    first: str, redis_url: str, sqlite_url: str, namespace: str
) -> None:
    """During the roll that turns the key on (or off), signed and unsigned workers share
    Redis and the database. Each treats the other's entries as misses (a SQL read and a
    refill), so every read answers the latest committed state; none serves an entry it
    cannot authenticate or decode."""
    workers = {
        "unsigned": _tracker(redis_url, sqlite_url, namespace, near_cache=False),
        "signed": _tracker(redis_url, sqlite_url, namespace, value_key=KEY, near_cache=False),
    }
    try:
        order = [workers[first], workers["signed" if first == "unsigned" else "unsigned"]]
        latest = None
        for step in range(4):
            writer = order[step % 2]
            latest = writer.update_personality_dimension("alice", DIM, step / 10)
            for reader in order:
                assert reader.get_current_personality_state("alice") == latest
                assert reader.get_current_personality_state("alice") == latest
        assert latest is not None and latest.version == 4
        # each worker found the other's entries unreadable: a miss, never a wrong answer
        assert workers["signed"].cache.local_stats()["integrity_failures"] >= 1
        assert workers["unsigned"].cache.local_stats()["decode_errors"] >= 1
    finally:
        _close(*workers.values())


def test_strict_mode_commits_over_its_signed_tombstone(
    redis_url: str, sqlite_url: str, namespace: str, raw: redis.Redis
) -> None:
    """Strict mode writes a tombstone before each commit and the committed version
    replaces it. Signed, the tombstone ends with the signature: the Lua compare-and-set
    must still recognise it, or it would refuse every committed version (the entry would
    stay a tombstone, a miss for everyone)."""
    cache = PersonalityCache.from_url(redis_url, namespace=namespace, value_key=KEY)
    tracker = PersonalityTracker(
        PersonalityStore(sqlite_url), cache, outbox_interval=None, write_mode="strict"
    )
    try:
        signer = Signer(KEY, namespace=namespace)
        for step in range(3):
            state = tracker.update_personality_dimension("alice", DIM, step / 10)
            stored = signer.open(cache.keys.state("alice"), _bytes(raw, cache.keys.state("alice")))
            assert not is_tombstone(stored)
            assert stored == encode_state(state)
        assert cache.pending_writes == 0
        assert cache.local_stats()["fills_refused"] == 0
    finally:
        _close(tracker)
