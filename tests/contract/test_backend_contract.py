"""The backend contract: every ``CacheOp``'s documented answer and effect on Redis, the
same test bodies run against every transport and topology.

Modelled on dogpile.cache's ``_GenericBackendTestSuite``: ``BackendContract`` holds the
tests; each ``Test*`` subclass only says how its backend is built, by providing the
``harness`` fixture (the backend's ``run``, a plain client to look at Redis behind it,
and where announcements travel). The asyncio transport runs the same bodies through a
per-test event loop (``loop.run_until_complete(backend.run(op))``).

Backends: the sync ``RedisBackend`` and the asyncio ``AsyncRedisBackend`` on fakeredis
(unit speed), on a real redis-server (``integration``), on a real 3-primary Redis Cluster
with ``ClusterCommands`` and through the sentinels of a primary/replica group with
``Commands(wait_replicas=1)`` (both ``scaleout``), built through ``penny_cache.wiring`` as
the cache builds them.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import fakeredis
import pytest
import redis
from redis.cluster import RedisCluster

from penny_cache.codec import Entry, encode_tombstone, is_tombstone
from penny_cache.config import Settings
from penny_cache.errors import CacheError, CacheTimeoutError, CacheUnavailableError
from penny_cache.keys import (
    INVALIDATION_SHARDS,
    KeySchema,
    encode_user_id,
    invalidation_shard,
    shard_channel,
    shard_sequence,
)
from penny_cache.policy.ops import (
    CacheOp,
    CountMatching,
    Delete,
    Describe,
    Described,
    Dropped,
    DropPublish,
    Fill,
    Get,
    InvalidatePublish,
    ListMatching,
    PublishFlush,
    Set,
    Tombstone,
    TryLease,
    UnlinkMatching,
    WritePublish,
)
from penny_cache.redis.backend import AsyncRedisBackend, RedisBackend
from penny_cache.redis.commands import SCAN_BATCH
from penny_cache.redis.listener import Message, parse_message
from penny_cache.wiring import async_backend, sync_backend
from tests.contract.dropin_contract import DropInContract
from tests.contract.guard_contract import GuardContract
from tests.contract.samples import CACHE_OPS, envelope
from tests.topologies import RedisClusterProcesses, SentinelGroup, running

USER = "ann"
TTL_MS = 60_000
# Generous: these tests check answers and effects, not latency, on a 2-core machine
# shared with other test runs (the default 0.1 s deadline gives 45 ms socket timeouts).
DEADLINE = 2.0
RECEIVE_WITHIN = 5.0


@dataclass
class Harness:
    """One backend under test and a view of the Redis behind it.

    ``run`` carries out an op (sync, or an asyncio backend driven on its own loop);
    ``raw`` is a plain sync client of the same data (``redis.Redis`` on the server or on
    the Sentinel primary, ``FakeRedis``, or ``RedisCluster``: typed ``Any`` for that
    reason); ``subscriber_for(channel)`` is a client that can subscribe to ``channel``;
    ``cluster`` says announcements travel on sharded channels (``SSUBSCRIBE``), one per
    user shard, each with its own sequence key.
    """

    run: Callable[[CacheOp], Any]
    raw: Any
    subscriber_for: Callable[[str], Any]
    cluster: bool = False

    def announced_on(self, keys: KeySchema, encoded_user: str | None) -> list[tuple[str, str]]:
        """(channel, sequence key) pairs an announcement about ``encoded_user`` (None: a
        flush) travels on: the namespace's channel, or on a Cluster the user's shard (a
        flush: every shard)."""
        if not self.cluster:
            return [(keys.channel(), keys.sequence())]
        base = keys.channel()
        shards = (
            range(INVALIDATION_SHARDS)
            if encoded_user is None
            else [invalidation_shard(encoded_user)]
        )
        return [(shard_channel(base, k), shard_sequence(base, k)) for k in shards]

    def sequence(self, key: str) -> int:
        value = self.raw.get(key)
        return int(value) if value is not None else 0

    @contextlib.contextmanager
    def listening(self, channel: str) -> Iterator[Callable[[], Message]]:
        """Subscribed to ``channel`` (confirmed by the server before this yields): a
        function that returns the next message, parsed as the listener parses it."""
        client = self.subscriber_for(channel)
        pubsub = client.pubsub()
        kind = "smessage" if self.cluster else "message"
        try:
            if self.cluster:
                pubsub.ssubscribe(channel)
            else:
                pubsub.subscribe(channel)
            _await_message(pubsub, {"subscribe", "ssubscribe"})

            def receive() -> Message:
                return parse_message(_await_message(pubsub, {kind})["data"])

            yield receive
        finally:
            pubsub.close()
            if client is not self.raw:
                client.close()


def _await_message(pubsub: Any, kinds: set[str]) -> dict[str, Any]:
    deadline = time.monotonic() + RECEIVE_WITHIN
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.1)
        if message is not None and message["type"] in kinds:
            return dict(message)
    raise AssertionError(f"no {sorted(kinds)} within {RECEIVE_WITHIN}s")


def _env(version: int) -> bytes:
    return envelope(version, USER)


def _entry(keys: KeySchema, version: int, *, ttl_ms: int = TTL_MS) -> Entry:
    return Entry(keys.state(USER), version, _env(version), ttl_ms)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


@pytest.fixture
def keys(namespace: str) -> KeySchema:
    return KeySchema(namespace, "s")


class BackendContract(DropInContract, GuardContract):
    """The tests every backend must pass (the drop-in's: ``DropInContract``). Subclasses
    provide the ``harness`` fixture."""

    # -- Get ------------------------------------------------------------------------------

    def test_get_answers_the_stored_bytes(self, harness: Harness, keys: KeySchema) -> None:
        """Get of a present key answers its bytes, unchanged."""
        harness.raw.set(keys.state(USER), _env(3))
        assert harness.run(Get(keys.state(USER))) == _env(3)

    def test_get_answers_none_on_a_miss(self, harness: Harness, keys: KeySchema) -> None:
        """Get of an absent key answers None."""
        assert harness.run(Get(keys.state(USER))) is None

    # -- Set ------------------------------------------------------------------------------

    def test_set_stores_the_payload_with_its_ttl(self, harness: Harness, keys: KeySchema) -> None:
        """Set writes the payload unconditionally (over a newer version too) with the given
        TTL, and answers truthy."""
        key = keys.legacy(USER)
        harness.raw.set(key, _env(9))
        assert harness.run(Set(key, b"plain", 5_000))
        assert harness.raw.get(key) == b"plain"
        assert 0 < harness.raw.pttl(key) <= 5_000

    # -- Fill -----------------------------------------------------------------------------

    def test_fill_writes_where_nothing_is_cached(self, harness: Harness, keys: KeySchema) -> None:
        """Fill of an absent entry writes it with its TTL and answers True."""
        entry = _entry(keys, 1, ttl_ms=7_000)
        assert harness.run(Fill(entry, keys.lease(USER))) is True
        assert harness.raw.get(entry.key) == entry.payload
        assert 0 < harness.raw.pttl(entry.key) <= 7_000

    @pytest.mark.parametrize(("cached", "newer"), [(4, 5), (0, 1), (9, 10), (99, 1000)])
    def test_fill_newer_version_replaces_the_older(
        self, harness: Harness, keys: KeySchema, cached: int, newer: int
    ) -> None:
        """Fill of a version newer than the cached one replaces it and answers True; the
        comparison is numeric (10 is newer than 9), not on the digits as text."""
        harness.raw.set(keys.state(USER), _env(cached))
        assert harness.run(Fill(_entry(keys, newer), keys.lease(USER))) is True
        assert harness.raw.get(keys.state(USER)) == _env(newer)

    @pytest.mark.parametrize("version", [7, 6, 0], ids=["same", "older", "zero"])
    def test_fill_same_or_older_version_is_refused(
        self, harness: Harness, keys: KeySchema, version: int
    ) -> None:
        """Fill of the cached version or an older one answers False and leaves the cached
        entry (bytes and TTL) as it was."""
        harness.raw.set(keys.state(USER), _env(7), px=TTL_MS)
        assert harness.run(Fill(_entry(keys, version, ttl_ms=1_000), keys.lease(USER))) is False
        assert harness.raw.get(keys.state(USER)) == _env(7)
        assert harness.raw.pttl(keys.state(USER)) > 1_000

    def test_fill_overwrites_an_entry_whose_version_cannot_be_read(
        self, harness: Harness, keys: KeySchema
    ) -> None:
        """A cached value that is not a current envelope never blocks a fill."""
        harness.raw.set(keys.state(USER), b"\x80not an envelope")
        assert harness.run(Fill(_entry(keys, 1), keys.lease(USER))) is True
        assert harness.raw.get(keys.state(USER)) == _env(1)

    @pytest.mark.parametrize(
        ("held", "given", "left"),
        [("tok-1", "tok-1", None), ("tok-1", "tok-2", b"tok-1"), ("tok-1", "", b"tok-1")],
        ids=["holder-releases", "other-token-keeps", "no-token-keeps"],
    )
    def test_fill_releases_the_lease_only_for_its_holder(
        self, harness: Harness, keys: KeySchema, held: str, given: str, left: bytes | None
    ) -> None:
        """Fill deletes the lease key only when its token is the one held; another token
        or none leaves the other loader's lease in place."""
        harness.raw.set(keys.lease(USER), held, px=TTL_MS)
        assert harness.run(Fill(_entry(keys, 1), keys.lease(USER), given)) is True
        assert harness.raw.get(keys.lease(USER)) == left

    def test_fill_refused_still_releases_the_holders_lease(
        self, harness: Harness, keys: KeySchema
    ) -> None:
        """A loader whose fill is refused (a newer version is cached) still gives its
        lease back: it is done loading either way."""
        harness.raw.set(keys.state(USER), _env(8))
        harness.raw.set(keys.lease(USER), "tok-1", px=TTL_MS)
        assert harness.run(Fill(_entry(keys, 2), keys.lease(USER), "tok-1")) is False
        assert harness.raw.get(keys.lease(USER)) is None
        assert harness.raw.get(keys.state(USER)) == _env(8)

    # -- WritePublish ---------------------------------------------------------------------

    def _write_publish(self, keys: KeySchema, version: int) -> WritePublish:
        return WritePublish(
            _entry(keys, version), keys.sequence(), keys.channel(), encode_user_id(USER)
        )

    def test_write_publish_writes_a_newer_version_and_announces_it(
        self, harness: Harness, keys: KeySchema
    ) -> None:
        """WritePublish of a newer version writes it, answers True, bumps the sequence key
        by one and publishes ``<seq>|<version>|<publish us>|<user>`` carrying that new
        sequence number, which a subscriber receives."""
        harness.raw.set(keys.state(USER), _env(1))
        [(channel, seq_key)] = harness.announced_on(keys, encode_user_id(USER))
        before = harness.sequence(seq_key)
        with harness.listening(channel) as receive:
            assert harness.run(self._write_publish(keys, 2)) is True
            message = receive()
        assert harness.raw.get(keys.state(USER)) == _env(2)
        assert 0 < harness.raw.pttl(keys.state(USER)) <= TTL_MS
        assert harness.sequence(seq_key) == before + 1
        assert (message.seq, message.user_id, message.version) == (before + 1, USER, 2)
        assert abs(message.published_us / 1e6 - time.time()) < 60

    def test_write_publish_announces_a_user_id_that_decodes_back(
        self, harness: Harness, keys: KeySchema
    ) -> None:
        """A user id that needs percent-encoding (space, non-ASCII, '|', braces) travels in
        the announcement encoded and parses back to the same id, on its own shard."""
        user = "Zoë {a|b} 7"
        entry = Entry(keys.state(user), 1, envelope(1, user), TTL_MS)
        encoded = encode_user_id(user)
        [(channel, _seq_key)] = harness.announced_on(keys, encoded)
        with harness.listening(channel) as receive:
            assert harness.run(WritePublish(entry, keys.sequence(), keys.channel(), encoded))
            message = receive()
        assert (message.user_id, message.version) == (user, 1)

    @pytest.mark.parametrize("version", [3, 2], ids=["same", "older"])
    def test_write_publish_refuses_same_or_older_but_still_announces(
        self, harness: Harness, keys: KeySchema, version: int
    ) -> None:
        """WritePublish of the cached or an older version answers False and leaves the
        entry; it still publishes (an announcement only ever makes caches drop more)."""
        harness.raw.set(keys.state(USER), _env(3))
        [(channel, seq_key)] = harness.announced_on(keys, encode_user_id(USER))
        before = harness.sequence(seq_key)
        with harness.listening(channel) as receive:
            assert harness.run(self._write_publish(keys, version)) is False
            message = receive()
        assert harness.raw.get(keys.state(USER)) == _env(3)
        assert harness.sequence(seq_key) == before + 1
        assert (message.seq, message.user_id, message.version) == (before + 1, USER, version)

    def test_write_publish_numbers_announcements_consecutively(
        self, harness: Harness, keys: KeySchema
    ) -> None:
        """Each announcement on a channel carries the previous sequence number plus one
        (the listener treats a gap as a lost message)."""
        [(channel, _seq_key)] = harness.announced_on(keys, encode_user_id(USER))
        with harness.listening(channel) as receive:
            for version in (1, 2, 3):
                harness.run(self._write_publish(keys, version))
            seqs = [receive().seq for _ in range(3)]
        assert seqs == [seqs[0], seqs[0] + 1, seqs[0] + 2]

    # -- InvalidatePublish ----------------------------------------------------------------

    def test_invalidate_publish_deletes_and_announces_any_version(
        self, harness: Harness, keys: KeySchema
    ) -> None:
        """InvalidatePublish deletes the entry, answers None, bumps the sequence key and
        publishes ``<seq>|*|<publish us>|<user>`` (drop the user whatever the version)."""
        harness.raw.set(keys.state(USER), _env(5))
        [(channel, seq_key)] = harness.announced_on(keys, encode_user_id(USER))
        before = harness.sequence(seq_key)
        op = InvalidatePublish(
            keys.state(USER), keys.sequence(), keys.channel(), encode_user_id(USER)
        )
        with harness.listening(channel) as receive:
            assert harness.run(op) is None
            message = receive()
        assert harness.raw.exists(keys.state(USER)) == 0
        assert harness.sequence(seq_key) == before + 1
        assert (message.seq, message.user_id, message.version) == (before + 1, USER, None)

    # -- Tombstone ------------------------------------------------------------------------

    def _tombstone(self, keys: KeySchema, version: int) -> Tombstone:
        entry = Entry(keys.state(USER), version, encode_tombstone(version), TTL_MS)
        return Tombstone(entry, keys.sequence(), keys.channel(), encode_user_id(USER))

    def test_tombstone_replaces_an_older_entry_and_announces_its_version(
        self, harness: Harness, keys: KeySchema
    ) -> None:
        """Tombstone of version 5 over version 4 answers True, leaves a tombstone (a
        read of it is a miss) with the cache TTL, and publishes ``<seq>|5|<us>|<user>``
        with the next sequence number: every near cache drops versions below 5."""
        harness.raw.set(keys.state(USER), _env(4))
        [(channel, seq_key)] = harness.announced_on(keys, encode_user_id(USER))
        before = harness.sequence(seq_key)
        with harness.listening(channel) as receive:
            assert harness.run(self._tombstone(keys, 5)) is True
            message = receive()
        assert is_tombstone(harness.raw.get(keys.state(USER)))
        assert 0 < harness.raw.pttl(keys.state(USER)) <= TTL_MS
        assert harness.sequence(seq_key) == before + 1
        assert (message.seq, message.user_id, message.version) == (before + 1, USER, 5)

    def test_tombstone_refuses_older_writes_and_yields_to_its_own_version(
        self, harness: Harness, keys: KeySchema
    ) -> None:
        """Below a tombstone of version 5, a fill and a write-through of 4 are refused and
        leave it; a fill of 5 (the committed version, read from SQL after the commit)
        replaces it, and then a second fill of 5 is refused as usual."""
        harness.run(self._tombstone(keys, 5))
        assert harness.run(Fill(_entry(keys, 4), keys.lease(USER))) is False
        write_4 = WritePublish(_entry(keys, 4), keys.sequence(), keys.channel(), "ann")
        assert harness.run(write_4) is False
        assert is_tombstone(harness.raw.get(keys.state(USER)))
        assert harness.run(Fill(_entry(keys, 5), keys.lease(USER))) is True
        assert harness.raw.get(keys.state(USER)) == _env(5)
        assert harness.run(Fill(_entry(keys, 5), keys.lease(USER))) is False

    @pytest.mark.parametrize("cached", [5, 6], ids=["same", "newer"])
    def test_tombstone_leaves_a_same_or_newer_entry(
        self, harness: Harness, keys: KeySchema, cached: int
    ) -> None:
        """Tombstone over an entry of the same or a newer version answers False and leaves
        it (it is not older than the version being committed), still announcing."""
        harness.raw.set(keys.state(USER), _env(cached))
        assert harness.run(self._tombstone(keys, 5)) is False
        assert harness.raw.get(keys.state(USER)) == _env(cached)

    # -- DropPublish ----------------------------------------------------------------------

    def test_drop_publish_unlinks_and_announces_a_gap_without_the_sequence(
        self, harness: Harness, keys: KeySchema
    ) -> None:
        """DropPublish (a refused write-through's fallback) deletes the entry, answers
        None and publishes ``0|*|<us>|<user>`` even when the sequence key is not a number,
        which it leaves as it was: sequence 0 is never the one a listener expects next, so
        every listener flushes (or, before its first message, drops the user)."""
        harness.raw.set(keys.state(USER), _env(3))
        [(channel, seq_key)] = harness.announced_on(keys, encode_user_id(USER))
        harness.raw.set(seq_key, b"not-a-number")
        op = DropPublish(keys.state(USER), keys.channel(), encode_user_id(USER))
        try:
            with harness.listening(channel) as receive:
                assert harness.run(op) is None
                message = receive()
            assert harness.raw.exists(keys.state(USER)) == 0
            assert harness.raw.get(seq_key) == b"not-a-number"
            assert (message.seq, message.user_id, message.version) == (0, USER, None)
        finally:
            harness.raw.delete(seq_key)

    # -- PublishFlush ---------------------------------------------------------------------

    def test_publish_flush_announces_a_flush_everywhere(
        self, harness: Harness, keys: KeySchema
    ) -> None:
        """PublishFlush answers None, bumps every sequence key the namespace announces on
        (one, or all 16 shards on a Cluster) and publishes ``<seq>|flush|<us>|``, which a
        subscriber receives as a flush (no user, no version)."""
        points = harness.announced_on(keys, None)
        before = [harness.sequence(seq_key) for _channel, seq_key in points]
        first_channel = points[0][0]
        with harness.listening(first_channel) as receive:
            assert harness.run(PublishFlush(keys.sequence(), keys.channel())) is None
            message = receive()
        assert [harness.sequence(seq_key) for _channel, seq_key in points] == [
            n + 1 for n in before
        ]
        assert (message.seq, message.user_id, message.version) == (before[0] + 1, None, None)

    # -- TryLease -------------------------------------------------------------------------

    def _try_lease(self, keys: KeySchema, token: str = "tok-1") -> TryLease:
        return TryLease(keys.state(USER), keys.lease(USER), token, 5_000)

    def test_try_lease_answers_the_entry_when_present(
        self, harness: Harness, keys: KeySchema
    ) -> None:
        """TryLease on a cached entry answers its bytes and takes no lease."""
        harness.raw.set(keys.state(USER), _env(2))
        assert harness.run(self._try_lease(keys)) == _env(2)
        assert harness.raw.exists(keys.lease(USER)) == 0

    def test_try_lease_takes_a_free_lease(self, harness: Harness, keys: KeySchema) -> None:
        """TryLease on a miss with no lease held answers True and holds the lease under
        the caller's token, expiring within its TTL."""
        assert harness.run(self._try_lease(keys)) is True
        assert harness.raw.get(keys.lease(USER)) == b"tok-1"
        assert 0 < harness.raw.pttl(keys.lease(USER)) <= 5_000

    def test_try_lease_refuses_a_held_lease(self, harness: Harness, keys: KeySchema) -> None:
        """TryLease on a miss while another token holds the lease answers False and leaves
        that lease untouched."""
        assert harness.run(self._try_lease(keys, "tok-1")) is True
        assert harness.run(self._try_lease(keys, "tok-2")) is False
        assert harness.raw.get(keys.lease(USER)) == b"tok-1"

    # -- Delete ---------------------------------------------------------------------------

    def test_delete_answers_whether_the_key_existed(
        self, harness: Harness, keys: KeySchema
    ) -> None:
        """Delete removes the key and answers True; again, with nothing there, False."""
        harness.raw.set(keys.state(USER), _env(1))
        assert harness.run(Delete(keys.state(USER))) is True
        assert harness.raw.exists(keys.state(USER)) == 0
        assert harness.run(Delete(keys.state(USER))) is False

    # -- UnlinkMatching / CountMatching ---------------------------------------------------

    def _populate(self, harness: Harness, keys: KeySchema, matching: int) -> list[str]:
        """``matching`` entries of scope ``s`` plus keys the pattern must not match: the
        same users in another scope, legacy entries, a lease, and a key outside the
        namespace whose name starts like it. Returns the non-matching keys."""
        other_scope = keys.with_scope("t")
        others = [
            other_scope.state("u0"),
            other_scope.state("u1"),
            keys.legacy("u0"),
            keys.lease("u0"),
            keys.sequence(),
            f"{keys.namespace}x:v1:s:state:{{u0}}",
        ]
        pipe = harness.raw.pipeline()
        for n in range(matching):
            pipe.set(keys.state(f"u{n}"), envelope(1, f"u{n}"))
        for key in others:
            pipe.set(key, b"keep")
        pipe.execute()
        return others

    def test_unlink_matching_removes_exactly_the_matching_keys(
        self, harness: Harness, keys: KeySchema
    ) -> None:
        """UnlinkMatching removes every key of the pattern, in several SCAN_BATCH-sized
        UNLINKs, answers how many went, and leaves every other key."""
        matching = 2 * SCAN_BATCH + 7
        others = self._populate(harness, keys, matching)
        try:
            assert harness.run(UnlinkMatching(keys.state_pattern())) == matching
            assert list(harness.raw.scan_iter(match=keys.state_pattern(), count=1000)) == []
            assert all(harness.raw.get(key) == b"keep" for key in others)
            assert harness.run(UnlinkMatching(keys.state_pattern())) == 0
        finally:
            harness.raw.delete(*others)

    def test_count_matching_counts_without_removing(
        self, harness: Harness, keys: KeySchema
    ) -> None:
        """CountMatching answers the number of keys of the pattern and removes nothing."""
        others = self._populate(harness, keys, SCAN_BATCH + 3)
        try:
            assert harness.run(CountMatching(keys.state_pattern())) == SCAN_BATCH + 3
            assert harness.run(CountMatching(keys.with_scope("t").state_pattern())) == 2
            assert harness.run(CountMatching(keys.state_pattern())) == SCAN_BATCH + 3
        finally:
            harness.run(UnlinkMatching(keys.state_pattern()))
            harness.raw.delete(*others)

    # -- ListMatching / Describe (the admin commands) --------------------------------------

    def test_list_matching_lists_each_key_once_as_text(
        self, harness: Harness, keys: KeySchema
    ) -> None:
        """ListMatching answers every key of the pattern once, as text (SCAN may return
        a key twice), past one SCAN batch, and removes nothing."""
        others = self._populate(harness, keys, SCAN_BATCH + 3)
        try:
            listed = harness.run(ListMatching(keys.state_pattern()))
            assert sorted(listed) == sorted(keys.state(f"u{n}") for n in range(SCAN_BATCH + 3))
            assert harness.run(CountMatching(keys.state_pattern())) == SCAN_BATCH + 3
        finally:
            harness.run(UnlinkMatching(keys.state_pattern()))
            harness.raw.delete(*others)

    def test_describe_reads_bytes_and_lifetimes_without_changing_them(
        self, harness: Harness, keys: KeySchema
    ) -> None:
        """Describe answers each key's bytes and remaining lifetime in one round trip: a
        key of another type is ``Dropped("wrong type")`` (not an error for the others),
        an absent key None and -2, a key without TTL -1; nothing is deleted."""
        live, bare, wrong, gone = (keys.state(f"u{n}") for n in range(4))
        harness.raw.set(live, envelope(1, "u0"), px=60_000)
        harness.raw.set(bare, b"x")
        harness.raw.hset(wrong, "f", "v")
        try:
            found = harness.run(Describe((live, bare, wrong, gone)))
            assert found[0].payload == envelope(1, "u0") and 0 < found[0].ttl_ms <= 60_000
            assert found[1:] == [
                Described(b"x", -1), Described(Dropped("wrong type"), -1), Described(None, -2),
            ]  # fmt: skip
            assert harness.raw.exists(live, bare, wrong) == 3
        finally:
            harness.raw.delete(live, bare, wrong)

    # -- errors ---------------------------------------------------------------------------

    def test_error_reply_becomes_a_cache_error_and_keeps_the_breaker_closed(
        self, harness: Harness, keys: KeySchema
    ) -> None:
        """A Redis error reply (a sequence key that is not a number) is a plain
        ``CacheError``, not an outage: Redis answered, so it is neither Unavailable nor
        Timeout. (A key of the wrong type is no longer one: ``GuardContract``.)"""
        for _channel, seq_key in harness.announced_on(keys, encode_user_id(USER)):
            harness.raw.set(seq_key, "not a number")
        with pytest.raises(CacheError) as caught:
            harness.run(self._write_publish(keys, 1))
        assert not isinstance(caught.value, CacheUnavailableError | CacheTimeoutError)


def test_every_cache_op_has_a_contract_test() -> None:
    """Each member of ``CacheOp`` is named by at least one ``BackendContract`` test
    (``test_<op in snake case>_...``): a new operation needs its contract written."""
    tests = [name for name in dir(BackendContract) if name.startswith("test_")]
    missing = [
        op.__name__
        for op in CACHE_OPS
        if not any(t.startswith(f"test_{_snake(op.__name__)}_") for t in tests)
    ]
    assert missing == []


# -- the backends ---------------------------------------------------------------------------


def _settings(url: str, namespace: str, *, cluster: bool = False, **options: Any) -> Settings:
    return Settings(
        redis_url=url,
        namespace=namespace,
        redis_timeout=DEADLINE,
        redis_cluster=cluster,
        **options,
    )


def _delete_namespace(raw: Any, namespace: str) -> None:
    """Leave a shared Redis as it was found (the namespace is this test's own)."""
    found = list(raw.scan_iter(match=f"{namespace}*", count=1000))
    for start in range(0, len(found), SCAN_BATCH):
        raw.delete(*found[start : start + SCAN_BATCH])


@contextlib.contextmanager
def _on_own_loop(backend: AsyncRedisBackend) -> Iterator[Callable[[CacheOp], Any]]:
    """``run`` for the asyncio backend: each op awaited on one event loop kept for the
    test (the client's connections belong to the loop that opened them)."""
    loop = asyncio.new_event_loop()
    try:
        yield lambda op: loop.run_until_complete(backend.run(op))
    finally:
        loop.run_until_complete(backend.close())
        loop.close()


class TestSyncOnFakeRedis(BackendContract):
    """``RedisBackend`` (redis-py API) on fakeredis."""

    @pytest.fixture
    def harness(self, fake_redis: fakeredis.FakeRedis) -> Harness:
        backend = RedisBackend(fake_redis)
        return Harness(backend.run, fake_redis, lambda _channel: fake_redis)


class TestAsyncOnFakeRedis(BackendContract):
    """``AsyncRedisBackend`` on fakeredis' asyncio client, sharing the fake server."""

    @pytest.fixture
    def harness(self, fake_redis: fakeredis.FakeRedis) -> Iterator[Harness]:
        server = fake_redis.connection_pool.connection_kwargs["server"]
        backend = AsyncRedisBackend(lambda: fakeredis.FakeAsyncRedis(server=server))
        with _on_own_loop(backend) as run:
            yield Harness(run, fake_redis, lambda _channel: fake_redis)


@pytest.fixture
def real_raw(redis_url: str, namespace: str) -> Iterator[redis.Redis]:
    raw = redis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        yield raw
    finally:
        _delete_namespace(raw, namespace)
        raw.close()


@pytest.mark.integration
class TestSyncOnRedis(BackendContract):
    """``RedisBackend`` on a real redis-server, as ``wiring.sync_backend`` builds it."""

    @pytest.fixture
    def harness(self, redis_url: str, namespace: str, real_raw: redis.Redis) -> Iterator[Harness]:
        backend = sync_backend(_settings(redis_url, namespace))
        try:
            yield Harness(backend.run, real_raw, lambda _channel: real_raw)
        finally:
            backend.close()


@pytest.mark.integration
class TestAsyncOnRedis(BackendContract):
    """``AsyncRedisBackend`` on a real redis-server, as ``wiring.async_backend`` builds it."""

    @pytest.fixture
    def harness(self, redis_url: str, namespace: str, real_raw: redis.Redis) -> Iterator[Harness]:
        with _on_own_loop(async_backend(_settings(redis_url, namespace))) as run:
            yield Harness(run, real_raw, lambda _channel: real_raw)


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterProcesses]:
    """Three primaries on free loopback ports, shared by this module's cluster tests."""
    with running(RedisClusterProcesses(), "a Redis Cluster") as servers:
        yield servers


@pytest.fixture
def cluster_raw(cluster: RedisClusterProcesses, namespace: str) -> Iterator[RedisCluster]:
    raw = RedisCluster.from_url(cluster.url, socket_timeout=5)
    try:
        yield raw
    finally:
        _delete_namespace(raw, namespace)
        raw.close()


def _node_client(raw: RedisCluster) -> Callable[[str], redis.Redis]:
    """A client on the node owning a (sharded) channel's slot: SSUBSCRIBE must go there."""

    def connect(channel: str) -> redis.Redis:
        node = raw.get_node_from_key(channel)  # type: ignore[no-untyped-call]
        return redis.Redis(host=node.host, port=node.port, socket_timeout=5)

    return connect


@pytest.mark.integration
@pytest.mark.scaleout
class TestSyncOnCluster(BackendContract):
    """``RedisBackend`` with ``ClusterCommands`` on a real 3-primary Redis Cluster."""

    @pytest.fixture
    def harness(
        self, cluster: RedisClusterProcesses, namespace: str, cluster_raw: RedisCluster
    ) -> Iterator[Harness]:
        backend = sync_backend(_settings(cluster.url, namespace, cluster=True))
        try:
            yield Harness(backend.run, cluster_raw, _node_client(cluster_raw), cluster=True)
        finally:
            backend.close()


@pytest.mark.integration
@pytest.mark.scaleout
class TestAsyncOnCluster(BackendContract):
    """``AsyncRedisBackend`` with ``ClusterCommands`` on a real 3-primary Redis Cluster."""

    @pytest.fixture
    def harness(
        self, cluster: RedisClusterProcesses, namespace: str, cluster_raw: RedisCluster
    ) -> Iterator[Harness]:
        backend = async_backend(_settings(cluster.url, namespace, cluster=True))
        with _on_own_loop(backend) as run:
            yield Harness(run, cluster_raw, _node_client(cluster_raw), cluster=True)


@pytest.fixture(scope="module")
def sentinel_group() -> Iterator[SentinelGroup]:
    """A primary, a replica and three sentinels, shared by this module's Sentinel tests
    (none of them fails the primary over)."""
    with running(SentinelGroup(), "a Sentinel group") as servers:
        yield servers


@pytest.fixture
def sentinel_settings(sentinel_group: SentinelGroup, namespace: str) -> Settings:
    return _settings(sentinel_group.url, namespace, **sentinel_group.settings_options())


@pytest.fixture
def sentinel_raw(sentinel_group: SentinelGroup, namespace: str) -> Iterator[redis.Redis]:
    raw = redis.Redis(port=sentinel_group.master_port(), socket_timeout=5)
    try:
        yield raw
    finally:
        _delete_namespace(raw, namespace)
        raw.close()


@pytest.mark.integration
@pytest.mark.scaleout
class TestSyncOnSentinel(BackendContract):
    """``RedisBackend`` through the sentinels, with ``Commands(wait_replicas=1)``: every
    announcement also waits for the replica (``WAIT``)."""

    @pytest.fixture
    def harness(self, sentinel_settings: Settings, sentinel_raw: redis.Redis) -> Iterator[Harness]:
        backend = sync_backend(sentinel_settings)
        try:
            yield Harness(backend.run, sentinel_raw, lambda _c: sentinel_raw)
        finally:
            backend.close()


@pytest.mark.integration
@pytest.mark.scaleout
class TestAsyncOnSentinel(BackendContract):
    """``AsyncRedisBackend`` through the sentinels, with ``Commands(wait_replicas=1)``."""

    @pytest.fixture
    def harness(self, sentinel_settings: Settings, sentinel_raw: redis.Redis) -> Iterator[Harness]:
        with _on_own_loop(async_backend(sentinel_settings)) as run:
            yield Harness(run, sentinel_raw, lambda _c: sentinel_raw)
