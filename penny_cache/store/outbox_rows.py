"""The outbox's SQL (SQLAlchemy Core), used by ``database.PersonalityStore`` inside
its transactions.

One row per user: the newest committed version whose write-through is not yet known to
have reached Redis. The update's transaction upserts it; a delivered write-through
deletes it (version-checked, so a newer row is never deleted by an older delivery); a
sweeper replays the rows that stayed longer than a grace period.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from penny_cache.store.schema import outbox

__all__ = ["delete_delivered", "due_rows", "record"]


def record(conn: Connection, user_id: str, version: int, now: datetime) -> None:
    """Upsert the user's row in the update's transaction (the user's row is locked)."""
    values = {"user_id": user_id, "version": version, "created_at": now}
    update = {"version": version, "created_at": now}
    dialect = conn.dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        pg = pg_insert(outbox).values(values)
        conn.execute(pg.on_conflict_do_update(index_elements=[outbox.c.user_id], set_=update))
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        lite = sqlite_insert(outbox).values(values)
        conn.execute(lite.on_conflict_do_update(index_elements=[outbox.c.user_id], set_=update))
    else:
        conn.execute(sa.delete(outbox).where(outbox.c.user_id == user_id))
        conn.execute(sa.insert(outbox).values(values))


def due_rows(conn: Connection, older_than: datetime, limit: int) -> list[tuple[str, int]]:
    """Rows older than ``older_than``, oldest first: their writers did not confirm."""
    query = (
        sa.select(outbox.c.user_id, outbox.c.version)
        .where(outbox.c.created_at < older_than)
        .order_by(outbox.c.created_at)
        .limit(limit)
    )
    return [(str(row.user_id), int(row.version)) for row in conn.execute(query)]


def delete_delivered(conn: Connection, delivered: Iterable[tuple[str, int]]) -> int:
    """Delete each user's row if its version is at most the delivered one."""
    removed = 0
    for user_id, version in delivered:
        result = conn.execute(
            sa.delete(outbox).where(outbox.c.user_id == user_id, outbox.c.version <= version)
        )
        removed += result.rowcount
    return removed
