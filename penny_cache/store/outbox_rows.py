"""The outbox's SQL (SQLAlchemy Core), used by ``database.PersonalityStore`` inside
its transactions.

One row per user: the newest committed version whose write-through is not yet known to
have reached Redis, dated by the oldest commit not known to have reached it. The
update's transaction upserts it, keeping that date (an update used to reset it, so a
user updated more often than the grace by a writer cut off from Redis was never due).
A delivered write-through deletes the row, or, when a newer version is waiting, restarts
its date at the confirmation (everything up to the delivered version is in Redis); a
sweeper replays the rows older than a grace period.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from penny_cache.store.schema import outbox

__all__ = ["Delivery", "DueRow", "delete_delivered", "due_page", "record"]


def record(conn: Connection, user_id: str, version: int, now: datetime) -> None:
    """Upsert the user's row in the update's transaction (the user's row is locked)."""
    values = {"user_id": user_id, "version": version, "created_at": now}
    update = {"version": version}  # the date stays: the oldest unconfirmed commit
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


class DueRow(NamedTuple):
    """An outbox row a sweep may replay; ``(created_at, user_id)`` is its place in the
    scan order (a page resumes after it)."""

    user_id: str
    version: int
    created_at: datetime


def due_page(
    conn: Connection, older_than: datetime, after: DueRow | None, limit: int
) -> list[DueRow]:
    """Up to ``limit`` rows older than ``older_than``, oldest first, after ``after``: a
    sweep pages past rows it will not retry yet instead of stopping at the first page
    (100 rows failing every time used to hide every later row)."""
    query = sa.select(outbox.c.user_id, outbox.c.version, outbox.c.created_at).where(
        outbox.c.created_at < older_than
    )
    if after is not None:
        query = query.where(
            sa.or_(
                outbox.c.created_at > after.created_at,
                sa.and_(outbox.c.created_at == after.created_at, outbox.c.user_id > after.user_id),
            )
        )
    query = query.order_by(outbox.c.created_at, outbox.c.user_id).limit(limit)
    return [
        DueRow(str(row.user_id), int(row.version), row.created_at) for row in conn.execute(query)
    ]


class Delivery(NamedTuple):
    """A version confirmed in Redis, and when it was confirmed."""

    user_id: str
    version: int
    confirmed_at: datetime


def delete_delivered(conn: Connection, delivered: Iterable[Delivery]) -> int:
    """Delete each user's row if its version is at most the delivered one; else a newer
    version waits, unconfirmed since at most the confirmation: its row takes that date
    (never a later one)."""
    removed = 0
    for user_id, version, confirmed_at in delivered:
        result = conn.execute(
            sa.delete(outbox).where(outbox.c.user_id == user_id, outbox.c.version <= version)
        )
        removed += result.rowcount
        if not result.rowcount:
            newer = sa.update(outbox).where(
                outbox.c.user_id == user_id,
                outbox.c.version > version,
                outbox.c.created_at < confirmed_at,
            )
            conn.execute(newer.values(created_at=confirmed_at))
    return removed
