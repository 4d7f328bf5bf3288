"""The drop-in's operations (``GetTicket``, ``SetTicketed``, ``DeleteIndexed``,
``CountIndexed``) on every backend: mixed into ``BackendContract``, so each transport and
topology runs these bodies too.

The property they pin together: a fill that presents the ticket of its miss lands only if
nothing wrote or invalidated the key since (memcache's leases), and the index counts the
entries that have not expired, without SCAN.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pytest

from penny_cache.keys import KeySchema, encode_user_id
from penny_cache.policy.ops import CountIndexed, DeleteIndexed, GetTicket, SetTicketed

if TYPE_CHECKING:
    from tests.contract.test_backend_contract import Harness

USER = "ann"
TTL_MS = 60_000


def _get(keys: KeySchema, token: str, user: str = USER) -> GetTicket:
    return GetTicket(
        keys.legacy(user),
        keys.legacy_ticket(user),
        keys.legacy_index(),
        encode_user_id(user),
        token,
        TTL_MS,
    )


def _set(
    keys: KeySchema, payload: bytes, ticket: str = "", user: str = USER, ttl_ms: int = TTL_MS
) -> SetTicketed:
    return SetTicketed(
        keys.legacy(user),
        keys.legacy_ticket(user),
        keys.legacy_index(),
        encode_user_id(user),
        payload,
        ttl_ms,
        ticket,
    )


def _delete(keys: KeySchema, user: str = USER) -> DeleteIndexed:
    return DeleteIndexed(
        keys.legacy(user), keys.legacy_ticket(user), keys.legacy_index(), encode_user_id(user)
    )


class DropInContract:
    """Contract tests of the drop-in's four operations (see the module docstring)."""

    def test_get_ticket_on_a_miss_hands_out_one_current_ticket(
        self, harness: Harness, keys: KeySchema
    ) -> None:
        """A miss answers (None, ticket): the first caller's token becomes the ticket (with
        its TTL) and a second miss before any write gets the same ticket, not its own."""
        assert harness.run(_get(keys, "tok-1")) == (None, "tok-1")
        assert harness.run(_get(keys, "tok-2")) == (None, "tok-1")
        assert 0 < harness.raw.pttl(keys.legacy_ticket(USER)) <= TTL_MS

    def test_get_ticket_on_a_hit_answers_the_bytes_and_no_ticket(
        self, harness: Harness, keys: KeySchema
    ) -> None:
        """A present entry answers (its bytes, "") and takes no ticket."""
        harness.raw.set(keys.legacy(USER), b"value")
        assert harness.run(_get(keys, "tok-1")) == (b"value", "")
        assert harness.raw.exists(keys.legacy_ticket(USER)) == 0

    def test_set_ticketed_with_the_ticket_of_its_miss_lands_once(
        self, harness: Harness, keys: KeySchema
    ) -> None:
        """SetTicketed with the current ticket writes (True) and ends the ticket: a second
        fill with that same ticket (another reader of the same miss) is refused."""
        _, ticket = harness.run(_get(keys, "tok-1"))
        assert harness.run(_set(keys, b"first", ticket)) is True
        assert harness.run(_set(keys, b"second", ticket)) is False
        assert harness.raw.get(keys.legacy(USER)) == b"first"
        assert harness.raw.exists(keys.legacy_ticket(USER)) == 0

    @pytest.mark.parametrize("meanwhile", ["invalidate", "plain-set"])
    def test_set_ticketed_loses_to_a_change_made_after_its_miss(
        self, harness: Harness, keys: KeySchema, meanwhile: str
    ) -> None:
        """After a miss, an invalidation or a plain set of the key ends the miss's ticket:
        the late fill answers False and what the change left stays. A later miss gets a
        new ticket, which works."""
        _, ticket = harness.run(_get(keys, "tok-1"))
        if meanwhile == "invalidate":
            harness.run(_delete(keys))
        else:
            assert harness.run(_set(keys, b"newer")) is True
        assert harness.run(_set(keys, b"stale", ticket)) is False
        left = None if meanwhile == "invalidate" else b"newer"
        assert harness.raw.get(keys.legacy(USER)) == left
        harness.run(_delete(keys))
        _, fresh = harness.run(_get(keys, "tok-2"))
        assert fresh == "tok-2"
        assert harness.run(_set(keys, b"fresh", fresh)) is True

    def test_set_ticketed_without_a_ticket_writes_and_indexes_the_expiry(
        self, harness: Harness, keys: KeySchema
    ) -> None:
        """SetTicketed without a ticket writes unconditionally (over an entry too) with the
        TTL, and scores the member by its expiry in server milliseconds."""
        harness.raw.set(keys.legacy(USER), b"old")
        before_ms = time.time() * 1000
        assert harness.run(_set(keys, b"new", ttl_ms=5_000)) is True
        assert harness.raw.get(keys.legacy(USER)) == b"new"
        assert 0 < harness.raw.pttl(keys.legacy(USER)) <= 5_000
        score = harness.raw.zscore(keys.legacy_index(), encode_user_id(USER))
        assert before_ms + 5_000 - 60_000 < score < before_ms + 5_000 + 60_000

    def test_delete_indexed_drops_entry_ticket_and_member(
        self, harness: Harness, keys: KeySchema
    ) -> None:
        """DeleteIndexed answers True when the entry existed (False otherwise) and leaves
        no entry, no ticket and no index member behind."""
        harness.run(_set(keys, b"v"))
        harness.run(_get(keys, "tok-1", user="bob"))  # a ticket of another user stays
        assert harness.run(_delete(keys)) is True
        assert harness.run(_delete(keys)) is False
        assert harness.raw.exists(keys.legacy(USER), keys.legacy_ticket(USER)) == 0
        assert harness.raw.zscore(keys.legacy_index(), encode_user_id(USER)) is None
        assert harness.raw.exists(keys.legacy_ticket("bob")) == 1

    def test_count_indexed_counts_live_entries_and_trims_expired_ones(
        self, harness: Harness, keys: KeySchema
    ) -> None:
        """CountIndexed counts members whose expiry is ahead and removes the others; a miss
        (GetTicket) of a member whose entry is gone removes it too."""
        for user in ("a", "b", "c"):
            harness.run(_set(keys, b"v", user=user))
        harness.raw.zadd(keys.legacy_index(), {"gone": 1_000})  # expired long ago
        assert harness.run(CountIndexed(keys.legacy_index())) == 3
        assert harness.raw.zscore(keys.legacy_index(), "gone") is None
        harness.raw.delete(keys.legacy("c"))  # what an eviction does
        assert harness.run(CountIndexed(keys.legacy_index())) == 3  # cannot see it ...
        harness.run(_get(keys, "tok", user="c"))
        assert harness.run(CountIndexed(keys.legacy_index())) == 2  # ... until a miss
