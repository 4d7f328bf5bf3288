"""One SQLAlchemy engine per database URL per process, shared by every store on it.

Penny builds a store and a tracker per request. An engine is a connection pool, so one
engine per store opened pools without end; stores acquire their URL's engine here and
release it on ``close()`` (or when collected), and the last release disposes it. This
registry is the package's one other piece of process-wide state, named and resettable
like ``get_cache()``: a forked child forgets the parent's engines (their pooled
connections are the parent's sockets).
"""

from __future__ import annotations

import os
import sqlite3
import time
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from penny_cache.store.shared import Shared

__all__ = ["ENGINES", "WRITE", "make_engine"]

# execution option of a connection that will write (SQLite: BEGIN IMMEDIATE)
WRITE: Final = "penny_write"
_WAL_SWITCH_SECONDS: Final = 30.0  # as the busy timeout


def _dispose_in_child() -> None:
    """A forked child's stores keep their engines; the pools must not reuse the parent's
    connections (SQLAlchemy's recipe: ``dispose(close=False)``)."""
    for engine in ENGINES.values():
        engine.dispose(close=False)


# engines by (URL, echo), disposed by the last store that holds one
ENGINES: Final[Shared[Engine]] = Shared(Engine.dispose)
os.register_at_fork(after_in_child=_dispose_in_child)


def make_engine(url: str, *, echo: bool = False) -> Engine:
    """A pre-pinging engine; SQLite gets WAL and writers that lock at BEGIN. Its errors
    never quote bound parameters (a user's id and ``context``): the full exception goes
    to the server's log, which names users only by ``keys.LogIds``."""
    engine = sa.create_engine(url, echo=echo, pool_pre_ping=True, hide_parameters=True)
    if engine.dialect.name == "sqlite":
        _serialise_sqlite_writers(engine)
    return engine


def _serialise_sqlite_writers(engine: Engine) -> None:
    """SQLite: WAL for concurrent readers; writers take the lock at BEGIN IMMEDIATE.

    pysqlite's own BEGIN handling is switched off (the recipe in SQLAlchemy's SQLite
    dialect docs), so a writer never upgrades a read lock and dies with SQLITE_BUSY.
    """

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA busy_timeout=30000")
        _use_wal(cursor)
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get(WRITE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def _use_wal(cursor: Any) -> None:
    """Switch the file to WAL (it stays so). The switch takes an exclusive lock and does
    not wait through the busy handler: two processes opening a fresh database at once
    (``make run``'s workers) failed a first request with "database is locked"."""
    deadline = time.monotonic() + _WAL_SWITCH_SECONDS
    while cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)  # another connection holds the lock for a moment
