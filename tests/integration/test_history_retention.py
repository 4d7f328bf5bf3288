"""Issue #16, item 10: history retention (``PENNY_HISTORY_DAYS``) on SQLite and
PostgreSQL, through the store, the sweeper's settings path and ``penny-cache
history-sweep``."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from penny_cache.config import Settings
from penny_cache.store.database import PersonalityStore
from penny_cache.store.schema import history
from tests.conftest import FakeUTCClock

pytestmark = pytest.mark.integration

DIM = "communication_formality"


def _history_rows(url: str) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(history)).scalar_one())
    finally:
        engine.dispose()


def test_rows_older_than_the_setting_are_deleted_in_batches_states_kept(
    database_url: str, utc_clock: FakeUTCClock
) -> None:
    """What used to happen: history rows were never trimmed (up to 4 KB of context per
    PUT, forever). Now a sweep deletes exactly the rows older than N days, in batches of
    at most ``batch`` rows (so ``max_batches`` bounds one run), and a second sweep finds
    nothing: users' states and newer rows stay."""
    store = PersonalityStore(database_url, clock=utc_clock)
    for n in range(5):
        store.update_dimension("ann", DIM, n / 10, context="x" * 4096)
    store.update_dimension("bob", DIM, 0.3)
    utc_clock.advance(days=31)
    store.update_dimension("ann", DIM, 0.9)
    assert _history_rows(database_url) == 7
    assert store.sweep_history(30, batch=2, max_batches=2) == 4  # bounded: 2 batches of 2
    assert store.sweep_history(30, batch=2) == 2
    assert store.sweep_history(30, batch=2) == 0
    assert [r.version for r in store.history("ann", days=36500)] == [6]
    assert (store.load("ann").version, store.load("bob").version) == (6, 1)
    assert store.load("bob").dimensions[DIM].value == 0.3
    store.close()


def test_a_table_made_before_the_time_index_gets_it_from_the_sweep(
    database_url: str, utc_clock: FakeUTCClock
) -> None:
    """Existing deployments have the history table without the sweep's index (create_all
    makes missing tables only): the first sweep adds it, and a second process's sweep
    (IF NOT EXISTS) does not fail on it."""
    store = PersonalityStore(database_url, clock=utc_clock)
    store.update_dimension("ann", DIM, 0.1)
    engine = sa.create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP INDEX ix_penny_history_time"))
    utc_clock.advance(days=2)
    assert store.sweep_history(1) == 1
    other = PersonalityStore(database_url, clock=utc_clock)
    assert other.sweep_history(1) == 0
    with engine.connect() as conn:
        names = {ix["name"] for ix in sa.inspect(conn).get_indexes("penny_personality_history")}
    assert "ix_penny_history_time" in names
    engine.dispose()
    store.close()
    other.close()


def test_the_tracker_settings_carry_history_days_to_the_sweeper() -> None:
    """PENNY_HISTORY_DAYS reaches the trackers' options (and so their sweeper); unset, it
    is None: history is kept forever."""
    assert Settings().tracker_options()["history_days"] is None
    settings = Settings.from_env({"PENNY_HISTORY_DAYS": "90"})
    assert settings.tracker_options()["history_days"] == 90


def test_the_cli_history_sweep_deletes_old_rows_for_cron(database_url: str) -> None:
    """`penny-cache history-sweep` (cron) deletes rows older than PENNY_HISTORY_DAYS (or
    --days) until none is left and says how many; without either it refuses (exit 2)
    and deletes nothing."""
    old = FakeUTCClock(datetime.now(UTC) - timedelta(days=40))
    store = PersonalityStore(database_url, clock=old)
    for n in range(3):
        store.update_dimension("ann", DIM, n / 10)
    store.close()
    PersonalityStore(database_url).update_dimension("ann", DIM, 0.9)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PENNY_")}
    environ["PENNY_DATABASE_URL"] = database_url
    command = [sys.executable, "-m", "penny_cache.app.cli", "history-sweep"]
    refused = subprocess.run(command, capture_output=True, text=True, env=environ, check=False)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert _history_rows(database_url) == 4
    environ["PENNY_HISTORY_DAYS"] = "30"
    done = subprocess.run(
        [*command, "--batch", "2"], capture_output=True, text=True, env=environ, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "deleted 3 history rows older than 30 days" in done.stdout
    assert _history_rows(database_url) == 1
