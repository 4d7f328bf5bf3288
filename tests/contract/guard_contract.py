"""Bad keys on every backend (issue #16, item 2 and 3): mixed into ``BackendContract``,
so each transport and topology (fakeredis, redis-server, Cluster, Sentinel) runs these.

What used to happen: an entry over ``signing.MAX_STORED_BYTES`` was sent whole on every
read (a 50 MB one timed out and tripped the breaker every user shares) and never
deleted; a key of the wrong type answered WRONGTYPE on every operation of its user (a
wrong-type index: of every drop-in user). What holds now: Redis checks an entry's size
and type before sending it and unlinks a bad one (``ops.Dropped``); a lease, ticket or
index key of the wrong type is dropped and made anew; versions are read strictly from
the prefix; an entry ahead of SQL can be inspected and replaced only while unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from penny_cache.codec import Entry, version_prefix
from penny_cache.keys import KeySchema, encode_user_id
from penny_cache.policy.ops import (
    Dropped,
    Fill,
    Get,
    GetTicket,
    Held,
    Inspect,
    ReplacePublish,
    SetTicketed,
    TryLease,
)
from penny_cache.signing import MAX_STORED_BYTES
from tests.contract.samples import envelope

if TYPE_CHECKING:
    from tests.contract.test_backend_contract import Harness

USER = "ann"
TTL_MS = 60_000
_PREFIX = version_prefix()


def _wrong_type(harness: Harness, key: str) -> None:
    harness.raw.delete(key)
    harness.raw.rpush(key, "x")


def _entry(keys: KeySchema, version: int) -> Entry:
    return Entry(keys.state(USER), version, envelope(version, USER), TTL_MS)


def _replace(keys: KeySchema, version: int, found: bytes) -> ReplacePublish:
    entry = _entry(keys, version)
    return ReplacePublish(entry, found, keys.sequence(), keys.channel(), encode_user_id(USER))


class GuardContract:
    """Contract tests of the guarded reads, the strict version and the replacement."""

    def test_get_unlinks_an_oversized_entry_without_sending_it(
        self, harness: Harness, keys: KeySchema
    ) -> None:
        """An entry one byte over the cap answers ``Dropped("oversized")`` and is gone."""
        harness.raw.set(keys.state(USER), b"x" * (MAX_STORED_BYTES + 1))
        assert harness.run(Get(keys.state(USER))) == Dropped("oversized")
        assert harness.raw.exists(keys.state(USER)) == 0

    def test_get_unlinks_an_entry_of_the_wrong_type(
        self, harness: Harness, keys: KeySchema
    ) -> None:
        """A LIST where an entry belongs answers ``Dropped("wrong type")`` (it used to
        be WRONGTYPE on every read) and is gone."""
        _wrong_type(harness, keys.state(USER))
        assert harness.run(Get(keys.state(USER))) == Dropped("wrong type")
        assert harness.raw.exists(keys.state(USER)) == 0

    def test_try_lease_unlinks_a_bad_entry_and_repairs_a_bad_lease(
        self, harness: Harness, keys: KeySchema
    ) -> None:
        """The tracker's read drops an oversized entry (no lease taken: load without
        one), and a lease key of the wrong type no longer holds the lease forever."""
        harness.raw.set(keys.state(USER), b"x" * (MAX_STORED_BYTES + 1))
        op = TryLease(keys.state(USER), keys.lease(USER), "tok", TTL_MS)
        assert harness.run(op) == Dropped("oversized")
        _wrong_type(harness, keys.lease(USER))
        assert harness.run(op) is True
        assert harness.raw.get(keys.lease(USER)) == b"tok"

    def test_try_lease_drops_an_entry_that_outlives_any_of_ours(
        self, harness: Harness, keys: KeySchema
    ) -> None:
        """What used to happen: a forged entry with no TTL (or a TTL of years) and a
        plausible future version was served to every reader until that user's next
        write, which might never come. Now the tracker's read drops an entry with no TTL
        or with more left than the longest an entry of ours has (``max_entry_ttl_ms``):
        a miss, no lease taken, so a forged entry lives at most one cache TTL. An entry
        within that lifetime is a hit."""
        key, op = keys.state(USER), TryLease(keys.state(USER), keys.lease(USER), "tok", 250, 5_000)
        harness.raw.set(key, envelope(10**12, USER))
        assert harness.run(op) == Dropped("no TTL, or a longer one than PENNY_CACHE_TTL")
        assert harness.raw.exists(key) == 0
        harness.raw.set(key, envelope(10**12, USER), px=5_000_000)
        assert isinstance(harness.run(op), Dropped)
        harness.raw.set(key, envelope(4, USER), px=4_000)
        assert harness.run(op) == envelope(4, USER)

    def test_fill_overwrites_an_entry_of_the_wrong_type_or_size(
        self, harness: Harness, keys: KeySchema
    ) -> None:
        """A fill over a LIST or an oversized value writes (it used to be WRONGTYPE, or
        the oversized value's prefix refused it), and so does a fill whose lease key is
        of the wrong type."""
        _wrong_type(harness, keys.state(USER))
        _wrong_type(harness, keys.lease(USER))
        assert harness.run(Fill(_entry(keys, 2), keys.lease(USER), "tok")) is True
        big = envelope(9, USER)[:-1] + b" " * MAX_STORED_BYTES + b"}"
        harness.raw.set(keys.state(USER), big)
        assert harness.run(Fill(_entry(keys, 3), keys.lease(USER))) is True
        assert harness.raw.get(keys.state(USER)) == envelope(3, USER)

    @pytest.mark.parametrize(
        "digits", ["4611686018427387904", "0003", "1e3", "-1", "3.5", " 3"], ids=repr
    )
    def test_fill_reads_the_version_strictly(
        self, harness: Harness, keys: KeySchema, digits: str
    ) -> None:
        """A version that is not plain digits of at most 15, without a leading zero, is
        unreadable, and a fill replaces it: 2^62 is not a version a write must wait for."""
        harness.raw.set(keys.state(USER), f'{_PREFIX}{digits},"user":"ann","state":{{}}}}')
        assert harness.run(Fill(_entry(keys, 2), keys.lease(USER))) is True

    def test_inspect_answers_what_refused_a_write(self, harness: Harness, keys: KeySchema) -> None:
        """``Inspect`` answers the stored version, tombstone or not, and the entry; None
        for no entry or an unreadable version."""
        stored = envelope(70, USER)
        harness.raw.set(keys.state(USER), stored)
        assert harness.run(Inspect(keys.state(USER))) == Held(70, False, stored)
        harness.raw.set(keys.state(USER), f'{_PREFIX}71,"tombstone":1}}')
        held = harness.run(Inspect(keys.state(USER)))
        assert (held.version, held.tombstone) == (71, True)
        harness.raw.set(keys.state(USER), f'{_PREFIX}99999999999999999,"state":{{}}}}')
        assert harness.run(Inspect(keys.state(USER))) is None
        harness.raw.delete(keys.state(USER))
        assert harness.run(Inspect(keys.state(USER))) is None

    def test_replace_publish_replaces_only_the_entry_it_inspected(
        self, harness: Harness, keys: KeySchema
    ) -> None:
        """With the entry there, it is replaced (True) and the user is
        announced whatever its version; once the entry changed, nothing is replaced."""
        harness.raw.set(keys.state(USER), envelope(900, USER))
        held = harness.run(Inspect(keys.state(USER)))
        [(channel, _seq)] = harness.announced_on(keys, encode_user_id(USER))
        with harness.listening(channel) as receive:
            assert harness.run(_replace(keys, 3, held.found)) is True
            message = receive()
        assert (message.user_id, message.version) == (USER, None)
        assert harness.raw.get(keys.state(USER)) == envelope(3, USER)
        harness.raw.set(keys.state(USER), envelope(4, USER))
        assert harness.run(_replace(keys, 3, held.found)) is False
        assert harness.raw.get(keys.state(USER)) == envelope(4, USER)

    def test_get_ticket_repairs_a_wrong_type_ticket_index_and_entry(
        self, harness: Harness, keys: KeySchema
    ) -> None:
        """The drop-in's read over a LIST entry, ticket and index: a miss with a fresh
        ticket (it used to be WRONGTYPE for this user, and for every user when the
        index was bad); the next write and read work."""
        for key in (keys.legacy(USER), keys.legacy_ticket(USER), keys.legacy_index()):
            _wrong_type(harness, key)
        args = (keys.legacy(USER), keys.legacy_ticket(USER), keys.legacy_index(), USER)
        assert harness.run(GetTicket(*args, "tok", TTL_MS)) == (Dropped("wrong type"), "tok")
        assert harness.run(SetTicketed(*args, b"v", TTL_MS, "tok")) is True
        assert harness.run(GetTicket(*args, "tok2", TTL_MS)) == (b"v", "")
        _wrong_type(harness, keys.legacy_index())
        assert harness.run(SetTicketed(*args, b"w", TTL_MS, "")) is True

    def test_get_ticket_never_sends_back_a_ticket_it_did_not_make(
        self, harness: Harness, keys: KeySchema
    ) -> None:
        """A ticket key holding far more than a token (1 MB) used to be sent back on
        every miss of that user; now it is dropped and the caller's token becomes the
        ticket."""
        harness.raw.set(keys.legacy_ticket(USER), b"t" * (1 << 20))
        args = (keys.legacy(USER), keys.legacy_ticket(USER), keys.legacy_index(), USER)
        assert harness.run(GetTicket(*args, "tok", TTL_MS)) == (None, "tok")
        assert harness.raw.get(keys.legacy_ticket(USER)) == b"tok"

    def test_tombstone_overwrites_an_entry_of_the_wrong_type(
        self, harness: Harness, keys: KeySchema
    ) -> None:
        """Strict mode's tombstone over a HASH used to be WRONGTYPE (the update refused);
        now the HASH is replaced by the tombstone."""
        from penny_cache.codec import encode_tombstone
        from penny_cache.policy.ops import Tombstone

        harness.raw.delete(keys.state(USER))
        harness.raw.hset(keys.state(USER), "f", "x")
        entry = Entry(keys.state(USER), 4, encode_tombstone(4), TTL_MS)
        op = Tombstone(entry, keys.sequence(), keys.channel(), encode_user_id(USER))
        assert harness.run(op) is True
        assert harness.raw.get(keys.state(USER)) == encode_tombstone(4)
