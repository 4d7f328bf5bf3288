"""The drop-in's fills cannot go back in time, and its counters are per instance and
shared (fakeredis; two instances stand for two processes: they share only Redis).

Across real processes on a real redis-server: ``tests/integration/test_dropin_processes.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest

from penny_cache.cache import PersonalityCache
from penny_cache.errors import CacheUnavailableError
from penny_cache.personality_state_cache import PersonalityStateCache
from penny_cache.policy.ops import CacheOp, GetTicket
from penny_cache.redis.backend import RedisBackend

OLD, NEW = {"formality": 0.1}, {"formality": 0.9}


def _instance(fake_redis: fakeredis.FakeRedis, namespace: str) -> PersonalityStateCache:
    core = PersonalityCache(
        RedisBackend(fake_redis), namespace=namespace, ttl=300, stats_flush_interval=None
    )
    return PersonalityStateCache(core=core)


@pytest.fixture
def pair(
    fake_redis: fakeredis.FakeRedis, namespace: str
) -> Iterator[tuple[PersonalityStateCache, PersonalityStateCache]]:
    reader, writer = _instance(fake_redis, namespace), _instance(fake_redis, namespace)
    yield reader, writer
    reader.close()
    writer.close()


Pair = tuple[PersonalityStateCache, PersonalityStateCache]


@pytest.mark.parametrize("change", ["invalidate", "set"])
def test_a_set_after_a_miss_loses_to_a_change_made_meanwhile(pair: Pair, change: str) -> None:
    """Reader misses; writer invalidates (or sets) the key; the reader's late set() is
    refused (False, counted in fills_refused) and the writer's outcome stays."""
    reader, writer = pair
    assert reader.get("default") is None
    if change == "invalidate":
        writer.invalidate("default")
    else:
        writer.set("default", NEW)
    assert reader.set("default", OLD) is False
    assert writer.get("default") == (None if change == "invalidate" else NEW)
    assert reader.core.get_stats()["fills_refused"] == 1


def test_a_set_after_a_miss_lands_when_nothing_changed(pair: Pair) -> None:
    """Miss then set with no change in between stores the value; the ticket is spent, so
    the instance's next set is a plain one."""
    reader, writer = pair
    assert reader.get("default") is None
    assert reader.set("default", OLD) is True
    assert writer.get("default") == OLD
    assert reader.set("default", NEW) is True  # no preceding miss: as before
    assert writer.get("default") == NEW


def test_two_readers_of_one_miss_fill_once(pair: Pair) -> None:
    """Two instances miss the same key; the first fill lands, the second (whose ticket
    the first write ended) is refused."""
    first, second = pair
    assert first.get("default") is None and second.get("default") is None
    assert first.set("default", NEW) is True
    assert second.set("default", OLD) is False
    assert second.get("default") == NEW


def test_a_hit_after_the_miss_does_not_revive_a_late_fill(pair: Pair) -> None:
    """Miss, another process's set, then a hit by the reader: the reader's set prepared
    after its miss is still refused (the hit proves a write came after the miss)."""
    reader, writer = pair
    assert reader.get("default") is None
    writer.set("default", NEW)
    assert reader.get("default") == NEW
    assert reader.set("default", OLD) is False
    assert writer.get("default") == NEW


def test_a_set_with_no_preceding_miss_writes_as_before(pair: Pair) -> None:
    """set() by an instance that never missed the key overwrites unconditionally."""
    reader, writer = pair
    writer.set("default", NEW)
    assert reader.set("default", OLD) is True
    assert writer.get("default") == OLD


def test_clear_ends_outstanding_tickets(pair: Pair) -> None:
    """clear() drops the tickets with the entries: a fill prepared before it is refused."""
    reader, writer = pair
    assert reader.get("default") is None
    writer.clear()
    assert reader.set("default", OLD) is False


def test_stats_are_per_instance_and_get_stats_shared(pair: Pair) -> None:
    """``.stats`` counts this instance's hits, misses and invalidations (as the original
    did); ``get_stats()`` sums every instance on the namespace (as published)."""
    reader, writer = pair
    reader.get("default")  # miss
    writer.set("default", NEW)
    reader.get("default")  # hit
    writer.get("default")  # hit
    writer.get("nobody")  # miss
    writer.invalidate("default")
    assert reader.stats == {"hits": 1, "misses": 1, "invalidations": 0}
    assert writer.stats == {"hits": 1, "misses": 1, "invalidations": 1}
    writer.core.flush_stats()  # what its flusher does each second, and close() at the end
    shared = reader.get_stats()
    assert (shared["hits"], shared["misses"], shared["invalidations"]) == (2, 2, 1)
    assert shared["hit_rate"] == 0.5


def test_cache_size_follows_sets_and_invalidations(pair: Pair) -> None:
    """cache_size is kept as entries come and go: sets add, invalidations remove, a
    re-set of the same user counts once, clear() empties it."""
    reader, writer = pair
    for user in ("a", "b", "c"):
        writer.set(user, NEW)
    writer.set("a", OLD)
    assert reader.get_stats()["cache_size"] == 3
    reader.invalidate("b")
    assert writer.get_stats()["cache_size"] == 2
    writer.clear()
    assert reader.get_stats()["cache_size"] == 0


def test_reset_stats_zeroes_the_instance_and_the_shared_totals(pair: Pair) -> None:
    """reset_stats() zeroes this instance's ``.stats`` and the namespace's shared totals
    (the counter hashes are deleted); counting starts again from zero."""
    reader, writer = pair
    reader.get("x")
    writer.get("x")
    writer.core.flush_stats()
    reader.reset_stats()
    writer.reset_stats()
    assert reader.stats == {"hits": 0, "misses": 0, "invalidations": 0}
    assert reader.get_stats()["misses"] == 0
    reader.get("x")
    assert reader.get_stats()["misses"] == 1


def test_a_set_after_a_read_that_could_not_reach_redis_is_refused(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the read could not reach Redis no ticket was taken, so whether the key
    changed meanwhile cannot be known: the fill that follows is refused (the next miss
    takes a real ticket and fills)."""
    reader, writer = pair
    run_op = reader.core.run_op

    def unreachable_reads(op: CacheOp) -> Any:
        if isinstance(op, GetTicket):
            raise CacheUnavailableError("Redis is down")
        return run_op(op)

    monkeypatch.setattr(reader.core, "run_op", unreachable_reads)
    assert reader.get("default") is None
    monkeypatch.setattr(reader.core, "run_op", run_op)
    assert reader.set("default", OLD) is False
    assert reader.get("default") is None
    assert reader.set("default", NEW) is True
    assert writer.get("default") == NEW
