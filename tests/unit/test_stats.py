"""SharedCounters: absolute, idempotent publication that sums exactly across processes."""

from __future__ import annotations

import fakeredis
import pytest

from penny_cache.keys import KeySchema
from penny_cache.observe.counters import (
    FIELDS_INVALID,
    KEYS_INVALID,
    SharedCounters,
    shared_totals,
    sum_counters,
)
from penny_cache.redis.backend import RedisBackend


def counters(fake_redis: fakeredis.FakeRedis, namespace: str) -> SharedCounters:
    return SharedCounters(RedisBackend(fake_redis), KeySchema(namespace), flush_interval=None)


def test_repeated_flushes_do_not_double_count(
    fake_redis: fakeredis.FakeRedis, namespace: str
) -> None:
    """Flushing absolute totals twice (as a retry would) leaves the sum unchanged."""
    c = counters(fake_redis, namespace)
    c.incr("hits", 5)
    assert c.flush()
    c._published = None  # force a second write of the same totals, as a retried command
    assert c.flush()
    assert c.totals()["hits"] == 5


def test_totals_survive_a_redis_data_loss(fake_redis: fakeredis.FakeRedis, namespace: str) -> None:
    """After Redis loses the hash, the next flush puts this process's totals back."""
    c = counters(fake_redis, namespace)
    c.incr("misses", 3)
    c.flush()
    fake_redis.flushall()
    c.incr("misses")
    assert c.totals()["misses"] == 4


def test_close_folds_into_retired_exactly_once(
    fake_redis: fakeredis.FakeRedis, namespace: str
) -> None:
    """A closed process's counts stay in the sum, under 'retired', and only once."""
    keys = KeySchema(namespace)
    a, b = counters(fake_redis, namespace), counters(fake_redis, namespace)
    a.incr("hits", 7)
    b.incr("hits", 1)
    a.flush()
    a.close()
    backend = RedisBackend(fake_redis)
    retried = backend.retire_counters(
        keys.counters(a.process_id), keys.retired_marker(a.process_id), a.process_id, {"hits": 7}
    )
    assert retried is False
    fields = {
        str(k, "utf-8") if isinstance(k, bytes) else k
        for key in keys.all_counters()
        for k in fake_redis.hkeys(key)
    }
    assert not any(f.startswith(a.process_id) for f in fields)
    assert b.totals()["hits"] == 8


def test_sum_ignores_unknown_fields() -> None:
    """Fields other than known counters (e.g. 'seen' timestamps) never enter the totals."""
    totals = sum_counters({"p1|hits": "2", "p2|hits": "3", "p1|seen": "1700000000.5"})
    assert totals["hits"] == 5
    assert "seen" not in totals


def test_after_fork_the_child_starts_from_zero(
    fake_redis: fakeredis.FakeRedis, namespace: str
) -> None:
    """A forked child gets a new process id and no inherited counts (no double count)."""
    c = counters(fake_redis, namespace)
    c.incr("hits", 4)
    parent_id = c.process_id
    c.after_fork()
    assert c.process_id != parent_id
    assert c.local.snapshot()["hits"] == 0


def test_a_reader_that_counted_nothing_leaves_no_fields(
    fake_redis: fakeredis.FakeRedis, namespace: str
) -> None:
    """A process that only reads the stats (a probe, `penny-cache stats`) writes nothing,
    so the hash does not grow with each probe."""
    c = counters(fake_redis, namespace)
    assert c.totals()["hits"] == 0
    c.close()
    assert all(fake_redis.hlen(key) == 0 for key in KeySchema(namespace).all_counters())


def test_published_fields_are_retired_on_close(
    fake_redis: fakeredis.FakeRedis, namespace: str
) -> None:
    """Whatever a process published is folded away on close: only 'retired' fields stay."""
    c = counters(fake_redis, namespace)
    c.incr("misses")
    c.flush()
    c.close()
    keys = fake_redis.hkeys(KeySchema(namespace).counters(c.process_id))
    fields = [k.decode() if isinstance(k, bytes) else k for k in keys]
    assert fields and all(f.startswith("retired|") for f in fields)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("x|hits", "abc"),
        ("x|hits", "-5"),
        ("x|hits", "1.5"),
        ("x|hits", "9" * 30),
        ("x|hits", str(2**53 + 1)),
        ("x|hits", "\ufffd"),
        ("x|bogus", "1"),
        ("nopipe", "1"),
        ("|hits", "1"),
        ("x|stats_fields_invalid", "1"),
    ],
)
def test_a_field_that_does_not_parse_is_skipped_and_counted(field: str, value: str) -> None:
    """Used to happen: ``int('abc')`` raised out of the sum, failing every reader of the
    totals. Now the field is skipped, the valid ones still sum, and the skip is counted."""
    totals = sum_counters({"p|hits": "2", field: value})
    assert totals["hits"] == 2
    assert totals[FIELDS_INVALID] == 1


def test_a_counter_shard_of_another_type_is_skipped_and_counted(
    fake_redis: fakeredis.FakeRedis, namespace: str
) -> None:
    """A shard that is not a hash (``SET`` over it) does not fail the read: the other
    shards sum, and ``stats_keys_invalid`` says how many were skipped."""
    keys = KeySchema(namespace)
    fake_redis.hset(keys.all_counters()[0], "p|hits", "4")
    fake_redis.set(keys.all_counters()[1], "not a hash")
    totals = shared_totals(RedisBackend(fake_redis), keys)
    assert totals["hits"] == 4
    assert totals[KEYS_INVALID] == 1


def test_a_reset_baseline_subtracts_and_a_forged_one_cannot_go_below_zero() -> None:
    """``baseline|<counter>`` fields (what ``stats --reset`` subtracted) may be zero or
    negative and are summed; a positive or non-integer baseline is invalid (skipped,
    counted), and a forged baseline larger than the counts leaves the total at 0, never
    negative."""
    fields = {"p1|hits": "10", "retired|hits": "5", "baseline|hits": "-12"}
    assert sum_counters(fields)["hits"] == 3
    bad = sum_counters({"baseline|hits": "7", "baseline|misses": "-1.5"})
    assert bad[FIELDS_INVALID] == 2
    server = fakeredis.FakeServer()
    client = fakeredis.FakeRedis(server=server)
    keys = KeySchema("rebase")
    client.hset(keys.all_counters()[0], mapping={"p1|hits": "4", "baseline|hits": "-40"})
    assert shared_totals(RedisBackend(client), keys)["hits"] == 0
