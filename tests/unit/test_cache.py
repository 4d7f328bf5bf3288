"""PersonalityCache on fakeredis: the seven original behaviours and the new rules."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import fakeredis
import pytest

from penny_cache.cache import PersonalityCache
from penny_cache.errors import (
    CacheError,
    CacheUnavailableError,
    InvalidStateError,
    InvalidUserIdError,
)
from penny_cache.policy.flows import drive
from penny_cache.policy.ops import CacheOp, WritePublish
from penny_cache.redis.backend import RedisBackend
from penny_cache.state import PersonalityState, apply_update, default_state
from tests.conftest import FakeClock

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def state_of(user: str, version: int = 0) -> PersonalityState:
    state = default_state(user, T0)
    for _ in range(version):
        state = apply_update(state, "communication_formality", 0.6, 0.05, T0)
    return state


def test_hit_returns_the_stored_state(cache: PersonalityCache) -> None:
    """Original behaviour 1: a stored state comes back equal."""
    state = state_of("alice", 2)
    assert cache.set("alice", state)
    assert cache.get("alice") == state


def test_miss_returns_none(cache: PersonalityCache) -> None:
    """Original behaviour 2: an unknown user is a miss, not an error."""
    assert cache.get("nobody") is None


def test_entries_carry_the_ttl_with_jitter(
    fake_redis: fakeredis.FakeRedis, fake_backend: RedisBackend, namespace: str
) -> None:
    """Original behaviour 3 (expiry): every entry has a TTL in [ttl*(1-jitter), ttl]."""
    draws = iter([0.0, 1.0])
    with PersonalityCache(
        fake_backend,
        namespace=namespace,
        ttl=300,
        ttl_jitter=0.2,
        stats_flush_interval=None,
        rand=lambda: next(draws),
    ) as cache:
        cache.set("a", state_of("a"))
        cache.set("b", state_of("b"))
        assert fake_redis.pttl(cache.keys.state("a")) == pytest.approx(300_000, abs=50)
        assert fake_redis.pttl(cache.keys.state("b")) == pytest.approx(240_000, abs=50)


def test_expired_entry_is_a_miss(fake_redis: fakeredis.FakeRedis, cache: PersonalityCache) -> None:
    """Original behaviour 3: once Redis expires the key, the lookup misses."""
    cache.set("alice", state_of("alice"))
    fake_redis.pexpire(cache.keys.state("alice"), 1)
    fake_redis.delete(cache.keys.state("alice"))  # what expiry does, without waiting for it
    assert cache.get("alice") is None


def test_invalidate_drops_the_entry(cache: PersonalityCache) -> None:
    """Original behaviour 4: after invalidate the user misses and it is counted."""
    cache.set("alice", state_of("alice"))
    assert cache.invalidate("alice")
    assert cache.get("alice") is None
    assert cache.get_stats()["invalidations"] == 1


def test_statistics_count_each_lookup_once(cache: PersonalityCache) -> None:
    """Original behaviour 5: hits, misses and the 0..1 hit rate match the lookups made."""
    cache.get("alice")
    cache.set("alice", state_of("alice"))
    cache.get("alice")
    cache.get("alice")
    stats = cache.get_stats()
    assert (stats["hits"], stats["misses"], stats["requests"]) == (2, 1, 3)
    assert stats["hit_rate"] == pytest.approx(2 / 3)
    assert stats["sets"] == 1
    assert stats["shared"] is True


def test_clear_removes_only_this_namespace(
    fake_redis: fakeredis.FakeRedis, fake_backend: RedisBackend, cache: PersonalityCache
) -> None:
    """Original behaviour 6: clear empties this namespace and leaves every other key alone."""
    other = PersonalityCache(fake_backend, namespace="other", stats_flush_interval=None)
    for n in range(1200):  # more than one SCAN/UNLINK batch
        cache.set(f"u{n}", state_of(f"u{n}"))
    other.set("u1", state_of("u1"))
    fake_redis.set("unrelated", b"keep me")
    assert cache.clear() == 1200
    assert cache.size() == 0
    assert other.get("u1") is not None
    assert fake_redis.get("unrelated") == b"keep me"


def test_users_are_isolated(cache: PersonalityCache) -> None:
    """Original behaviour 7: one user's entry is never another's."""
    cache.set("alice", state_of("alice", 1))
    cache.set("bob", state_of("bob", 3))
    alice, bob = cache.get("alice"), cache.get("bob")
    assert alice is not None and alice.user_id == "alice" and alice.version == 1
    assert bob is not None and bob.user_id == "bob" and bob.version == 3


def test_fill_never_replaces_a_newer_version(cache: PersonalityCache) -> None:
    """A fill of version v is refused (and counted) when v+1 is already cached."""
    assert cache.write_through(state_of("alice", 2))
    assert not cache.set("alice", state_of("alice", 1))
    assert not cache.set("alice", state_of("alice", 2))
    cached = cache.get("alice")
    assert cached is not None and cached.version == 2
    assert cache.get_stats()["fills_refused"] == 2


def test_newer_version_replaces_older(cache: PersonalityCache) -> None:
    """A committed newer version replaces the cached one and counts as an invalidation."""
    cache.set("alice", state_of("alice", 1))
    assert cache.write_through(state_of("alice", 5))
    cached = cache.get("alice")
    assert cached is not None and cached.version == 5
    assert cache.get_stats()["invalidations"] == 1


@pytest.mark.parametrize(
    "garbage",
    [b"\x80\x04pickle", b"{not json", b'{"schema":0,"version":1,"user":"alice","state":{}}'],
)
def test_corrupted_entry_is_a_counted_miss_and_deleted(
    fake_redis: fakeredis.FakeRedis, cache: PersonalityCache, garbage: bytes
) -> None:
    """An undecodable or old-schema entry is a miss, is deleted and counted, never raised."""
    key = cache.keys.state("alice")
    fake_redis.set(key, garbage)
    assert cache.get("alice") is None
    assert fake_redis.exists(key) == 0
    stats = cache.get_stats()
    assert (stats["decode_errors"], stats["misses"], stats["hits"]) == (1, 1, 0)


def test_an_empty_entry_is_a_plain_miss_and_a_fill_replaces_it(
    fake_redis: fakeredis.FakeRedis, cache: PersonalityCache
) -> None:
    """A read is one bounded ``GETRANGE`` (no script on the hit path), which cannot tell
    an empty string from no key: an empty entry is a plain miss (not a decode error, not
    deleted by the read), and the next fill replaces it (its version is unreadable)."""
    key = cache.keys.state("alice")
    fake_redis.set(key, b"")
    assert cache.get("alice") is None
    stats = cache.get_stats()
    assert (stats["decode_errors"], stats["misses"], stats["hits"]) == (0, 1, 0)
    assert cache.fill(state_of("alice", 1), None)
    cached = cache.get("alice")
    assert cached is not None and cached.version == 1


def test_garbage_does_not_block_a_fill(
    fake_redis: fakeredis.FakeRedis, cache: PersonalityCache
) -> None:
    """A fill overwrites an entry the version check cannot read, instead of being refused."""
    fake_redis.set(cache.keys.state("alice"), b'{"schema":1,"version":999x')
    assert cache.set("alice", state_of("alice", 1))


def test_entry_under_another_users_key_is_never_served(
    fake_redis: fakeredis.FakeRedis, cache: PersonalityCache
) -> None:
    """A value copied to another user's key is an integrity miss, not a leak."""
    cache.set("alice", state_of("alice", 1))
    stolen = fake_redis.get(cache.keys.state("alice"))
    assert isinstance(stolen, bytes)
    fake_redis.set(cache.keys.state("mallory"), stolen)
    assert cache.get("mallory") is None
    assert cache.get_stats()["decode_errors"] == 1


def test_set_refuses_a_state_of_another_user(cache: PersonalityCache) -> None:
    """cache.set(user, state) with state.user_id != user is bad input: nothing written."""
    with pytest.raises(InvalidStateError):
        cache.set("alice", state_of("bob"))
    assert cache.size() == 0


@pytest.mark.parametrize("bad", ["", "a\nb", "x" * 257, 42])
def test_bad_user_ids_are_refused(cache: PersonalityCache, bad: object) -> None:
    """Every entry point validates the user id before touching Redis."""
    with pytest.raises(InvalidUserIdError):
        cache.get(bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidUserIdError):
        cache.invalidate(bad)  # type: ignore[arg-type]
    assert cache.get_stats()["requests"] == 0


def test_instances_share_counts_through_redis(
    fake_redis: fakeredis.FakeRedis, namespace: str
) -> None:
    """Two caches (as two processes would) see each other's hits and misses."""
    one = PersonalityCache(RedisBackend(fake_redis), namespace=namespace, stats_flush_interval=None)
    two = PersonalityCache(RedisBackend(fake_redis), namespace=namespace, stats_flush_interval=None)
    one.set("alice", state_of("alice"))
    one.get("alice")
    two.get("alice")
    two.get("bob")
    assert one.process_id != two.process_id
    two.flush_stats()
    stats = one.get_stats()
    assert (stats["hits"], stats["misses"]) == (2, 1)


class _DownBackend(RedisBackend):
    """A backend whose every call fails as an unreachable Redis does."""

    def __init__(self) -> None:
        super().__init__(fakeredis.FakeRedis())

    def run(self, op: CacheOp) -> Any:
        raise CacheUnavailableError("down")

    def get(self, key: str) -> bytes | None:
        raise CacheUnavailableError("down")

    def read_fields_many(self, keys: list[str]) -> list[dict[str, str] | None]:
        raise CacheUnavailableError("down")


def test_redis_down_is_a_miss_counted_and_logged_once_per_interval(
    caplog: pytest.LogCaptureFixture, clock: FakeClock
) -> None:
    """With Redis down, get misses, set/invalidate report False, and one log line per interval."""
    cache = PersonalityCache(
        _DownBackend(), stats_flush_interval=None, error_log_interval=60, monotonic=clock
    )
    with caplog.at_level(logging.WARNING, logger="penny_cache"):
        for _ in range(100):
            assert cache.get("alice") is None
        assert not cache.set("alice", state_of("alice"))
        assert not cache.invalidate("alice")
        clock.advance(61)
        cache.get("alice")
    redis_lines = [r for r in caplog.records if "redis get failed" in r.getMessage()]
    assert len(redis_lines) == 2
    assert "more since the last report" in redis_lines[1].getMessage()
    stats = cache.get_stats()
    assert stats["shared"] is False
    assert (stats["misses"], stats["redis_errors"]) == (101, 103)


class _FlakyBackend(RedisBackend):
    """A fakeredis backend whose writes fail while ``down`` is set."""

    down = False

    def run(self, op: CacheOp) -> Any:
        if self.down and isinstance(op, WritePublish):
            raise CacheUnavailableError("down")
        return super().run(op)


def test_undelivered_write_through_is_kept_and_delivered(
    fake_redis: fakeredis.FakeRedis, namespace: str
) -> None:
    """A committed state Redis refused is not forgotten: until delivered, this process
    does not trust Redis's older entry for that user; afterwards Redis holds the new one."""
    backend = _FlakyBackend(fake_redis)
    cache = PersonalityCache(backend, namespace=namespace, stats_flush_interval=None)
    cache.set("alice", state_of("alice", 1))
    backend.down = True
    assert not cache.write_through(state_of("alice", 3))
    assert not cache.write_through(state_of("alice", 2))
    assert cache.pending_writes == 1
    assert cache.get("alice") is None, "Redis still holds v1: it must not be served"
    backend.down = False
    cached = cache.get("alice")
    assert cached is not None and cached.version == 3
    assert cache.pending_writes == 0


def test_read_or_lease_elects_one_loader_and_hands_later_ones_the_fill(
    cache: PersonalityCache,
) -> None:
    """On a miss the first reader is elected loader (a token), the next is told to wait
    (None); once the loader's fill landed, a reader gets the entry as a hit instead of a
    fresh lease (no second SQL load). Every call counts one lookup."""

    def read() -> tuple[PersonalityState | None, str | None]:
        return drive(cache.read_or_lease_flow("alice", None), cache.run_op)

    state, first = read()
    assert state is None and first
    assert read() == (None, None)
    cache.fill(state_of("alice", 2), None, first)
    hit, _ = read()
    assert hit is not None and hit.version == 2
    stats = cache.local_stats()
    assert (stats["misses"], stats["hits"]) == (2, 1)


class _RefusingBackend(RedisBackend):
    """A fakeredis backend that refuses (an error reply, not an outage) every write of
    the users in ``refused`` and, while ``down`` is set, is out of reach for writes."""

    refused: frozenset[str] = frozenset()
    down = False

    def run(self, op: CacheOp) -> Any:
        if isinstance(op, WritePublish):
            if self.down:
                raise CacheUnavailableError("down")
            if any(op.entry.key.endswith(f"{{{user}}}") for user in self.refused):
                raise CacheError("NOPERM this user has no permissions to access that key")
        return super().run(op)


def test_one_refused_write_through_blocks_neither_others_nor_recovery(
    fake_redis: fakeredis.FakeRedis, namespace: str
) -> None:
    """What used to happen: the queue of undelivered write-throughs stopped at the first
    one Redis refused, so one user whose key Redis refuses forever kept every user queued
    after it undelivered, and ``recover()`` (which waited for an empty queue) never
    succeeded: after one lost proof the process never trusted Redis again. Now the
    refused one stays queued (its user reads SQL), the others are delivered, and
    recovery completes."""
    backend = _RefusingBackend(fake_redis)
    cache = PersonalityCache(backend, namespace=namespace, stats_flush_interval=None)
    backend.down = True
    assert not cache.write_through(state_of("mallory", 2))
    assert not cache.write_through(state_of("alice", 3))
    assert cache.pending_writes == 2
    backend.down, backend.refused = False, frozenset({"mallory"})
    assert cache.recover()
    assert cache.pending_writes == 1
    delivered = cache.get("alice")
    assert delivered is not None and delivered.version == 3
    assert cache.get("mallory") is None, "its write is still queued: SQL answers"
