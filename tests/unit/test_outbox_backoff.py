"""The outbox sweeper's per-row backoff, its paging past rows in backoff, and its
rate-limited history sweep (SQLite, injected clocks, a publish function for Redis)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from penny_cache.errors import InvalidInputError
from penny_cache.state import PersonalityState
from penny_cache.store.database import PersonalityStore
from penny_cache.store.outbox import HISTORY_EVERY, OutboxSweeper, SweepLimits
from penny_cache.store.outbox_backoff import RowBackoff
from tests.conftest import FakeClock, FakeUTCClock

DIM = "communication_formality"


class _Publisher:
    """Redis as the sweeper sees it: fails the chosen users, records every attempt."""

    def __init__(self, failing: set[str]) -> None:
        self.failing = failing
        self.attempts: list[str] = []

    def __call__(self, state: PersonalityState) -> bool:
        self.attempts.append(state.user_id)
        return state.user_id not in self.failing


def _sweeper(
    store: PersonalityStore, publish: _Publisher, clock: FakeClock, **kwargs: object
) -> OutboxSweeper:
    """Grace 1 s on the store's clock: the tests advance it past the commits."""
    return OutboxSweeper(store, publish, interval=0.5, grace=1.0, monotonic=clock, **kwargs)  # type: ignore[arg-type]


def test_backoff_doubles_from_the_base_up_to_the_cap() -> None:
    """A row failing every time waits 0.5, 1, 2, ... seconds, never more than the cap;
    a delivery starts it over; a retry time a whole cap in the past is pruned."""
    backoff = RowBackoff(0.5, 60.0)
    delays = [backoff.failed("u", 0.0) for _ in range(10)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
    assert backoff.waiting("u", 59.0) and not backoff.waiting("u", 60.0)
    backoff.forget("u")
    assert backoff.failed("u", 100.0) == 0.5
    backoff.prune(100.0 + 0.5 + 60.0 + 1)
    assert len(backoff) == 0
    with pytest.raises(ValueError, match="base"):
        RowBackoff(0.0, 1.0)


def test_a_failing_row_is_skipped_until_its_backoff_ends(
    store: PersonalityStore, clock: FakeClock, utc_clock: FakeUTCClock
) -> None:
    """What used to happen: every pass retried the same oldest rows first. Now a row
    whose replay failed is passed over (counted as skipped) until its backoff ends,
    then retried; the row stays in the outbox meanwhile."""
    store.update_dimension("bad", DIM, 0.1)
    utc_clock.advance(seconds=2)
    publish = _Publisher({"bad"})
    sweeper = _sweeper(store, publish, clock)
    assert sweeper.sweep() == 0
    assert (publish.attempts, sweeper.failures, sweeper.backing_off) == (["bad"], 1, 1)
    sweeper.sweep()
    assert (publish.attempts, sweeper.skipped) == (["bad"], 1)
    clock.advance(0.5)  # the first backoff is one interval
    sweeper.sweep()
    assert publish.attempts == ["bad", "bad"] and sweeper.failures == 2
    assert store.outbox_due(0.0) == [("bad", 1)]


def test_a_pass_pages_past_rows_in_backoff_and_resumes_where_it_stopped(
    store: PersonalityStore, clock: FakeClock, utc_clock: FakeUTCClock
) -> None:
    """Five failing rows older than a good one, pages of two rows, one page a pass: each
    pass goes on where the last stopped, so the good row is replayed at the third pass
    (the scan never starts over at the oldest rows while rows after them wait)."""
    failing = {f"bad-{n}" for n in range(5)}
    for user in sorted(failing):
        store.update_dimension(user, DIM, 0.1)
        utc_clock.advance(seconds=1)
    store.update_dimension("good", DIM, 0.9)
    utc_clock.advance(seconds=2)
    publish = _Publisher(failing)
    sweeper = _sweeper(store, publish, clock, limits=SweepLimits(replays=100, page=2, pages=1))
    assert [sweeper.sweep(), sweeper.sweep(), sweeper.sweep()] == [0, 0, 1]
    assert publish.attempts == [*sorted(failing), "good"]
    assert store.outbox_due(0.0, limit=10) == [(user, 1) for user in sorted(failing)]


def test_a_pass_attempts_at_most_its_replay_budget(
    store: PersonalityStore, clock: FakeClock, utc_clock: FakeUTCClock
) -> None:
    """Three failing rows, a budget of two replays a pass: the third and the good row
    wait one pass, not forever."""
    failing = {"bad-a", "bad-b", "bad-c"}
    for user in sorted(failing):
        store.update_dimension(user, DIM, 0.1)
        utc_clock.advance(seconds=1)
    store.update_dimension("good", DIM, 0.9)
    utc_clock.advance(seconds=2)
    publish = _Publisher(failing)
    sweeper = _sweeper(store, publish, clock, limits=SweepLimits(replays=2))
    assert sweeper.sweep() == 0
    assert publish.attempts == ["bad-a", "bad-b"]
    assert sweeper.sweep() == 1
    assert publish.attempts == ["bad-a", "bad-b", "bad-c", "good"]


def test_recovery_forgets_the_backoff(
    store: PersonalityStore, clock: FakeClock, utc_clock: FakeUTCClock
) -> None:
    """Failures while Redis was unreachable say nothing of the rows: the recovery step
    (after a lost proof) retries them at once instead of after their backoff."""
    store.update_dimension("ann", DIM, 0.1)
    utc_clock.advance(seconds=2)
    publish = _Publisher({"ann"})
    sweeper = _sweeper(store, publish, clock)
    sweeper.sweep()
    publish.failing.clear()  # Redis is back
    assert sweeper.sweep() == 0  # still backing off
    assert sweeper.recover()
    assert publish.attempts == ["ann", "ann"] and store.outbox_due(0.0) == []


def test_the_sweeper_trims_history_at_most_once_a_minute(
    store: PersonalityStore, clock: FakeClock, utc_clock: FakeUTCClock
) -> None:
    """With history_days, the sweeper thread's pass also deletes older history rows,
    at most once every HISTORY_EVERY seconds; the users' states are untouched."""
    store.update_dimension("ann", DIM, 0.1)
    utc_clock.advance(days=10)
    sweeper = _sweeper(store, _Publisher(set()), clock, history_days=7)
    sweeper.sweep_logged()
    assert sweeper.history_deleted == 1 and store.history("ann", days=36500) == []
    store.update_dimension("ann", DIM, 0.2)
    utc_clock.advance(days=10)
    sweeper.sweep_logged()
    assert sweeper.history_deleted == 1  # within the minute: not swept again
    clock.advance(HISTORY_EVERY)
    sweeper.sweep_logged()
    assert sweeper.history_deleted == 2
    assert store.load("ann").version == 2
    assert timedelta(days=7) < utc_clock.now - store.load("ann").updated_at


@pytest.mark.parametrize("days", [0, -1, float("nan"), float("inf"), 36501, True, "7"])
def test_a_retention_that_would_delete_everything_is_refused(
    store: PersonalityStore, clock: FakeClock, days: object
) -> None:
    """Zero or negative days would delete every history row (or rows from the future):
    the store and the sweeper refuse them instead of deleting anything."""
    store.update_dimension("ann", DIM, 0.1)
    with pytest.raises(InvalidInputError, match="history days"):
        store.sweep_history(days)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="history days"):
        _sweeper(store, _Publisher(set()), clock, history_days=days)
    assert len(store.history("ann")) == 1
