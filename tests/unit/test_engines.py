"""SQLite engines: a fresh database opened by several processes at once switches to WAL
without failing anyone's first request."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from penny_cache.store import engines


def test_the_wal_switch_waits_for_a_lock_held_by_another_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While another connection holds a lock on a fresh file, switching to WAL fails with
    "database is locked" (used to fail the first request); the switch now retries, and
    succeeds once the lock is released."""
    path = tmp_path / "fresh.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO t VALUES (1)")
    waits: list[float] = []

    def release_then_wait(seconds: float) -> None:
        waits.append(seconds)
        holder.execute("COMMIT")  # the other process finishes its transaction

    monkeypatch.setattr("penny_cache.store.engines.time.sleep", release_then_wait)
    engine = engines.make_engine(f"sqlite:///{path}")
    with engine.connect() as conn:
        mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
    engine.dispose()
    holder.close()
    assert waits, "the first switch should have met the lock"
    assert mode == "wal"
