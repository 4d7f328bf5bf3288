"""Issue 15, item 2: the shadow check's decisions (``penny_cache.policy.shadow``) with
injected versions and waits: no sleep, no Redis."""

from __future__ import annotations

import threading
import time

from penny_cache.policy.shadow import ShadowCheck


class Versions:
    """What Redis and SQL hold, and what a wait lets happen meanwhile."""

    def __init__(self, redis: int | None, sql: int | None) -> None:
        self.redis, self.sql = redis, sql
        self.counted: list[str] = []
        self.waits: list[float] = []
        self.during_wait: tuple[int | None, int | None] | None = None

    def wait(self, seconds: float) -> None:
        self.waits.append(seconds)
        if self.during_wait is not None:
            self.redis, self.sql = self.during_wait

    def checker(self, share: float = 1.0, **options: object) -> ShadowCheck:
        return ShadowCheck(
            share=share,
            recheck_after=0.5,
            redis_version=lambda _user: self.redis,
            sql_version=lambda _user: self.sql,
            count=self.counted.append,
            wait=self.wait,
            **options,  # type: ignore[arg-type]
        )


def test_an_entry_behind_sql_after_the_bound_counts_older() -> None:
    """Finding: a lost invalidation (Redis behind SQL) was seen by nobody. Now it is
    counted as ``divergence_older``, but only after a re-read past the staleness bound."""
    versions = Versions(redis=2, sql=3)
    assert versions.checker().check("ann", 2) == "older"
    assert (versions.counted, versions.waits) == (["divergence_older"], [0.5])


def test_an_update_in_flight_is_no_alarm() -> None:
    """An entry read just before its update's write-through looks older; the re-read
    after the bound sees the new version (or no entry) and counts nothing."""
    versions = Versions(redis=2, sql=3)
    versions.during_wait = (3, 3)
    assert versions.checker().check("ann", 2) is None
    versions = Versions(redis=2, sql=3)
    versions.during_wait = (None, 3)
    assert versions.checker().check("ann", 2) is None
    assert versions.counted == []


def test_an_entry_ahead_of_sql_or_without_a_row_counts_newer() -> None:
    """Redis ahead of SQL (forged, a restore) or an entry of a user SQL lacks: newer."""
    assert Versions(redis=9, sql=3).checker().check("ann", 9) == "newer"
    assert Versions(redis=4, sql=None).checker().check("ghost", 4) == "newer"
    agreeing = Versions(redis=3, sql=3)
    assert agreeing.checker().check("ann", 3) is None
    assert agreeing.waits == []  # agreement costs one SQL read, no wait
    assert Versions(redis=0, sql=None).checker().check("new", 0) is None


def test_sampling_share_zero_is_off_and_one_samples_every_hit() -> None:
    """``PENNY_SHADOW_SAMPLE=0`` queues nothing (no thread either); a share below a
    draw is skipped."""
    versions = Versions(redis=2, sql=3)
    off = versions.checker(share=0.0)
    off.offer("ann", 2)
    assert not off.enabled and off._thread is None
    skipped = versions.checker(share=0.5, rand=lambda: 0.7)
    skipped.offer("ann", 2)
    assert skipped._thread is None


def test_a_full_queue_drops_samples_and_never_blocks() -> None:
    """A request never waits on the check: with the worker stuck on a slow SQL, offers
    beyond the queue's capacity are dropped, each returning at once."""
    release = threading.Event()

    def slow_sql(_user: str) -> int:
        release.wait(10)
        return 1

    checker = ShadowCheck(
        share=1.0, recheck_after=0.0, redis_version=lambda _u: 1, sql_version=slow_sql,
        count=lambda _n: None, capacity=2,
    )  # fmt: skip
    started = time.perf_counter()
    for _ in range(20):
        checker.offer("ann", 1)
    elapsed = time.perf_counter() - started
    release.set()
    checker.stop()
    assert checker.dropped >= 17  # one in the worker's hand, two queued
    assert elapsed < 0.5
