"""Issue 15, item 2: the shadow check's decisions (``penny_cache.policy.shadow``) with
injected versions and times: no sleep, no Redis, no thread."""

from __future__ import annotations

import time

from penny_cache.cache import PersonalityCache
from penny_cache.policy.shadow import CAPACITY, ShadowCheck
from penny_cache.redis.backend import RedisBackend
from penny_cache.state import EPOCH, PersonalityState, default_state


class Versions:
    """What Redis and SQL hold; a test changes them between ticks."""

    def __init__(self, redis: int | None, sql: int | None) -> None:
        self.redis, self.sql = redis, sql
        self.counted: list[str] = []

    def sql_version(self, _user: str) -> int | None:
        return self.sql

    def checker(self, share: float = 1.0, **options: object) -> ShadowCheck:
        return ShadowCheck(
            share=share,
            recheck_after=0.5,
            redis_version=lambda _user: self.redis,
            count=self.counted.append,
            **options,  # type: ignore[arg-type]
        )


def test_an_entry_behind_sql_after_the_bound_counts_older() -> None:
    """Finding: a lost invalidation (Redis behind SQL) was seen by nobody. Now it is
    counted as ``divergence_older``, but only at a tick after the staleness bound."""
    versions = Versions(redis=2, sql=3)
    checker = versions.checker()
    checker.offer("ann", 2, versions.sql_version)
    assert checker.run(now=10.0) == []  # first look: a suspect, not yet counted
    assert checker.run(now=10.4) == []  # within the bound
    assert checker.run(now=10.5) == ["older"]
    assert versions.counted == ["divergence_older"]


def test_an_update_in_flight_is_no_alarm() -> None:
    """An entry read just before its update's write-through looks older; the re-read
    after the bound sees the new version (or no entry) and counts nothing."""
    for after in ((3, 3), (None, 3)):
        versions = Versions(redis=2, sql=3)
        checker = versions.checker()
        checker.offer("ann", 2, versions.sql_version)
        checker.run(now=0.0)
        versions.redis, versions.sql = after
        assert checker.run(now=1.0) == []
        assert versions.counted == []


def test_an_entry_ahead_of_sql_or_without_a_row_counts_newer() -> None:
    """Redis ahead of SQL (forged, a restore) or an entry of a user SQL lacks: newer;
    an agreeing hit and a default (version 0) entry of a new user count nothing."""
    for redis_version, sql, counted in ((9, 3, ["newer"]), (4, None, ["newer"]),
                                        (3, 3, []), (0, None, [])):  # fmt: skip
        versions = Versions(redis=redis_version, sql=sql)
        checker = versions.checker()
        checker.offer("ann", redis_version, versions.sql_version)
        checker.run(now=0.0)
        assert checker.run(now=1.0) == counted


def test_sampling_share_zero_is_off_and_a_draw_above_the_share_skips() -> None:
    """``PENNY_SHADOW_SAMPLE=0`` queues nothing; a draw at or above the share skips."""
    versions = Versions(redis=2, sql=3)
    for checker in (versions.checker(share=0.0), versions.checker(share=0.5, rand=lambda: 0.7)):
        checker.offer("ann", 2, versions.sql_version)
        checker.run(now=0.0)
        assert checker.run(now=1.0) == []
    assert versions.counted == []


def test_a_full_queue_drops_samples_and_never_blocks() -> None:
    """A request never waits on the check: past the queue's capacity (nothing drains
    it between ticks) offers are dropped and counted, each returning at once."""
    versions = Versions(redis=2, sql=3)
    checker = versions.checker()
    started = time.perf_counter()
    for _ in range(CAPACITY + 50):
        checker.offer("ann", 2, versions.sql_version)
    assert time.perf_counter() - started < 0.5
    assert checker.dropped == 50


def test_the_cache_runs_the_check_on_its_counters_tick(fake_backend: RedisBackend) -> None:
    """The cache owns one check (not one per tracker) and its counters thread's tick
    runs it; its re-read is the cache's own uncounted read of Redis."""
    cache = PersonalityCache(fake_backend, namespace="shadow", stats_flush_interval=None,
                             shadow_sample=1.0, max_staleness=0.0)  # fmt: skip
    try:
        cache.shadow.offer("bob", 4, lambda _user: 7)
        cache._counters_tick()  # no entry at the re-read: dropped meanwhile, no count
        assert cache.local_stats()["divergence_older"] == 0
        data = default_state("ann", EPOCH).to_dict()
        data["version"] = 4
        assert cache.set("ann", PersonalityState.from_dict(data))
        cache.shadow.offer("ann", 4, lambda _user: 7)
        cache._counters_tick()  # bound 0: first look and re-read in one tick
        assert cache.local_stats()["divergence_older"] == 1
    finally:
        cache.close()
