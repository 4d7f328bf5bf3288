"""The transactional outbox: a committed version whose write-through never happened is
found in SQL and published by a sweeper (fakeredis, SQLite, injected clocks)."""

from __future__ import annotations

from typing import Any

import pytest

from penny_cache.cache import PersonalityCache
from penny_cache.errors import StoreUnavailableError
from penny_cache.policy.near import NearCache
from penny_cache.policy.ops import Delete
from penny_cache.redis.backend import RedisBackend
from penny_cache.store.database import PersonalityStore
from penny_cache.store.outbox_rows import Delivery
from penny_cache.tracker import PersonalityTracker
from tests.conftest import FakeClock, FakeUTCClock
from tests.unit.test_cache import _DownBackend

DIM = "communication_formality"


def _tracker(store: PersonalityStore, cache: PersonalityCache) -> PersonalityTracker:
    """A tracker whose sweeper thread never fires during a test: they call sweep()."""
    return PersonalityTracker(store, cache, outbox_interval=3600, outbox_grace=2.0)


def test_an_update_commits_its_outbox_row_in_the_same_transaction(
    store: PersonalityStore, utc_clock: FakeUTCClock
) -> None:
    """Every committed version leaves a row, newest version per user, found once it is
    older than the grace period."""
    store.update_dimension("ann", DIM, 0.1)
    store.update_dimension("ann", DIM, 0.2)
    assert store.outbox_due(grace=2.0) == []
    utc_clock.advance(seconds=3)
    assert store.outbox_due(grace=2.0) == [("ann", 2)]


def test_a_version_committed_but_never_written_through_is_published_by_the_sweep(
    store: PersonalityStore, cache: PersonalityCache, utc_clock: FakeUTCClock
) -> None:
    """A writer that died right after COMMIT (simulated: the store alone, no
    write-through) leaves Redis on the old version; after the grace period a sweep loads
    the committed version and writes it through, and the row is gone."""
    tracker = _tracker(store, cache)
    assert tracker.get_current_personality_state("bob").version == 0  # cached: version 0
    store.update_dimension("bob", DIM, 0.9)  # committed; the writer "dies" here
    assert cache.get("bob").version == 0  # type: ignore[union-attr]
    assert tracker.outbox is not None
    assert tracker.outbox.sweep() == 0  # within the grace period: its writer may still
    utc_clock.advance(seconds=3)
    assert tracker.outbox.sweep() == 1
    assert cache.get("bob").version == 1  # type: ignore[union-attr]
    assert store.outbox_due(grace=0) == []


def test_delivered_versions_are_forgotten_without_a_replay(
    store: PersonalityStore, cache: PersonalityCache, utc_clock: FakeUTCClock
) -> None:
    """An update whose write-through reached Redis is removed at the next sweep and
    never replayed; a newer row is not removed by an older delivery."""
    tracker = _tracker(store, cache)
    tracker.update_personality_dimension("cy", DIM, 0.3)
    store.update_dimension("cy", DIM, 0.4)  # version 2: committed, not delivered
    utc_clock.advance(seconds=3)
    assert tracker.outbox is not None
    assert tracker.outbox.sweep() == 1  # version 1's delivery did not hide version 2
    assert cache.get("cy").version == 2  # type: ignore[union-attr]
    tracker.update_personality_dimension("cy", DIM, 0.5)
    utc_clock.advance(seconds=3)
    assert tracker.outbox.sweep() == 0
    assert store.outbox_due(grace=0) == []


def test_a_write_through_redis_refused_stays_in_the_outbox(
    store: PersonalityStore, utc_clock: FakeUTCClock
) -> None:
    """With Redis down the update commits and its row stays (to be replayed), and the
    sweep reports nothing delivered rather than failing."""
    cache = PersonalityCache(_DownBackend(), stats_flush_interval=None)
    tracker = _tracker(store, cache)
    assert tracker.update_personality_dimension("dee", DIM, 0.6).version == 1
    utc_clock.advance(seconds=3)
    assert tracker.outbox is not None
    assert tracker.outbox.sweep() == 0
    assert store.outbox_due(grace=2.0) == [("dee", 1)]
    cache.close()


class _SqlDown(PersonalityStore):
    """A store whose reads fail as if the database were unreachable."""

    down = False

    def load(self, user_id: str) -> Any:
        if self.down:
            raise StoreUnavailableError("database is down")
        return super().load(user_id)


def test_fail_safe_reads_serve_the_last_known_state_only_when_asked(
    sqlite_url: str, utc_clock: FakeUTCClock, clock: FakeClock, fake_backend: RedisBackend
) -> None:
    """With SQL down and the entry gone from Redis, a read raises by default; with
    serve_stale it answers this process's last known state, counted as stale_served.
    A write still raises: it never pretends to succeed."""
    store = _SqlDown(sqlite_url, clock=utc_clock)
    near = NearCache(10, 1.0, monotonic=clock)
    cache = PersonalityCache(fake_backend, stats_flush_interval=None, near=near, monotonic=clock)
    strict = PersonalityTracker(store, cache, outbox_interval=None)
    lenient = PersonalityTracker(store, cache, outbox_interval=None, serve_stale=True)
    version = strict.update_personality_dimension("eve", DIM, 0.8).version
    fake_backend.run(Delete(cache.keys.state("eve")))
    clock.advance(5)  # the near entry has expired: only a fail-safe read may use it
    store.down = True
    with pytest.raises(StoreUnavailableError):
        strict.get_current_personality_state("eve")
    assert lenient.get_current_personality_state("eve").version == version
    assert cache.local_stats()["stale_served"] == 1
    with pytest.raises(StoreUnavailableError):
        store.update_dimension = _raise_down  # type: ignore[method-assign]
        lenient.update_personality_dimension("eve", DIM, 0.1)
    cache.close()
    store.close()


def _raise_down(*_args: object, **_kwargs: object) -> Any:
    raise StoreUnavailableError("database is down")


def test_a_user_updated_faster_than_the_grace_still_becomes_due(
    store: PersonalityStore, utc_clock: FakeUTCClock
) -> None:
    """Updates every 0.6 s by a writer that cannot reach Redis, with a 1 s grace: the
    row keeps the date of the oldest unconfirmed commit, so it is due 1 s after the
    first (each update used to re-date it: never due while the writer kept writing)."""
    cache = PersonalityCache(_DownBackend(), stats_flush_interval=None)
    tracker = _tracker(store, cache)
    for value in (0.1, 0.2, 0.3):
        tracker.update_personality_dimension("eli", DIM, value)
        utc_clock.advance(seconds=0.6)
    assert store.outbox_due(grace=1.0) == [("eli", 3)]
    cache.close()


def test_an_older_confirmation_dates_the_newer_row_from_that_confirmation(
    store: PersonalityStore, utc_clock: FakeUTCClock
) -> None:
    """Version 1 confirmed in Redis while version 2 waits: version 2's row is due one
    grace after that confirmation, never sooner (everything up to 1 is in Redis) and
    never later."""
    store.update_dimension("fay", DIM, 0.1)
    utc_clock.advance(seconds=5)
    store.update_dimension("fay", DIM, 0.2)
    store.outbox_delivered([Delivery("fay", 1, store.now())])
    utc_clock.advance(seconds=0.9)
    assert store.outbox_due(grace=1.0) == []
    utc_clock.advance(seconds=0.2)
    assert store.outbox_due(grace=1.0) == [("fay", 2)]
