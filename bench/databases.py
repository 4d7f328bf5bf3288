"""Where a workload run keeps its SQL: a fresh SQLite file, or a fresh PostgreSQL database.

SQLite (the default) has one writer at a time and syncs each commit, which bounds every
library's update rate and hides how the caches scale; ``PENNY_BENCH_DATABASE_URL`` (a
PostgreSQL server, e.g. ``postgresql+psycopg://postgres@127.0.0.1:5432/test``) gives each
run its own database there, created before and dropped after.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa

__all__ = ["database_kind", "fresh_database", "postgres_database"]

_ENV = "PENNY_BENCH_DATABASE_URL"


def database_kind() -> str:
    """ "postgresql" when runs use the server named by PENNY_BENCH_DATABASE_URL."""
    return "postgresql" if os.environ.get(_ENV) else "sqlite"


@contextmanager
def fresh_database(workdir: Path, label: str) -> Iterator[str]:
    """A database nobody else uses, for one run; dropped (PostgreSQL) when it ends."""
    base = os.environ.get(_ENV)
    if not base:
        yield f"sqlite:///{workdir}/{label}.db"
        return
    with postgres_database(base, "penny_bench") as url:
        yield url


@contextmanager
def postgres_database(base: str, prefix: str) -> Iterator[str]:
    """A new database on ``base``'s server (the tests use it too), dropped at the end.
    Raises ``sqlalchemy.exc.OperationalError`` when the server cannot be reached."""
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except BaseException:
        admin.dispose()
        raise
    try:
        yield sa.make_url(base).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
