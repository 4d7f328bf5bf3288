"""One SQLAlchemy engine per database URL per process, shared by every store on it.

Penny builds a store and a tracker per request. An engine is a connection pool, so one
engine per store opened pools without end; stores acquire their URL's engine here and
release it on ``close()`` (or when collected), and the last release disposes it. This
registry is the package's one other piece of process-wide state, named and resettable
like ``get_cache()``: a forked child forgets the parent's engines (their pooled
connections are the parent's sockets).
"""

from __future__ import annotations

import threading
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from penny_cache import forks

__all__ = ["ENGINES", "WRITE", "EngineRegistry"]

# execution option of a connection that will write (SQLite: BEGIN IMMEDIATE)
WRITE: Final = "penny_write"


class EngineRegistry:
    """Engines by (URL, echo), counted by the stores that hold them."""

    def __init__(self) -> None:
        # re-entrant: a store or tracker collected while this thread holds the lock
        # releases from its finalizer, inside acquire()
        self._lock = threading.RLock()
        self._engines: dict[tuple[str, bool], tuple[Engine, int]] = {}
        forks.track(self)

    def acquire(self, url: str, *, echo: bool = False) -> Engine:
        """The engine of ``url``, made on first use; release it once per acquire."""
        key = (url, echo)
        with self._lock:
            engine, holders = self._engines.get(key) or (_make_engine(url, echo=echo), 0)
            self._engines[key] = (engine, holders + 1)
            return engine

    def release(self, engine: Engine) -> None:
        """One holder fewer; the last one disposes the engine."""
        with self._lock:
            for key, (held, holders) in list(self._engines.items()):
                if held is engine:
                    if holders > 1:
                        self._engines[key] = (held, holders - 1)
                        return
                    del self._engines[key]
                    break
            else:
                return  # forgotten after a fork, or released twice
        engine.dispose()

    def __len__(self) -> int:
        return len(self._engines)

    def after_fork(self) -> None:
        """The child's stores keep their engines; their pools must not reuse the parent's
        connections (SQLAlchemy's recipe: ``dispose(close=False)``)."""
        self._lock = threading.RLock()
        for engine, _holders in self._engines.values():
            engine.dispose(close=False)


ENGINES: Final = EngineRegistry()


def _make_engine(url: str, *, echo: bool) -> Engine:
    engine = sa.create_engine(url, echo=echo, pool_pre_ping=True)
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
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get(WRITE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
