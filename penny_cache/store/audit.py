"""The read-only SQL an operator's audit needs (``penny_cache.admin``): committed
versions of many users in one query, and one user's outbox row. Kept apart from the
store's transactions: nothing here locks a row or writes."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from penny_cache.store.schema import outbox, users

__all__ = ["OutboxRow", "outbox_row", "versions"]


class OutboxRow(NamedTuple):
    """A committed version whose delivery to Redis is not yet confirmed, dated by the
    oldest unconfirmed commit."""

    version: int
    created_at: datetime


def versions(conn: Connection, user_ids: Sequence[str]) -> dict[str, int]:
    """SQL's committed version of each user that has a row (one query per call: the
    caller batches)."""
    if not user_ids:
        return {}
    query = sa.select(users.c.user_id, users.c.version).where(users.c.user_id.in_(user_ids))
    return {str(row.user_id): int(row.version) for row in conn.execute(query)}


def outbox_row(conn: Connection, user_id: str) -> OutboxRow | None:
    """The user's outbox row, or None when every commit is known delivered."""
    query = sa.select(outbox.c.version, outbox.c.created_at).where(outbox.c.user_id == user_id)
    row = conn.execute(query).first()
    return None if row is None else OutboxRow(int(row.version), row.created_at)
