"""The evolution history's SQL (SQLAlchemy Core), used by ``database.PersonalityStore``.

Every committed change leaves a row with up to 4 KB of context, so the table grows with
every PUT. ``delete_batch`` is the retention sweep's one step: a bounded DELETE in its
own short transaction, so a sweep never holds a lock over the whole table and several
processes sweeping at once only share the work (a row deleted twice is deleted once).
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, Final

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from penny_cache.errors import InvalidInputError
from penny_cache.state import DimensionValue, EvolutionRecord
from penny_cache.store.schema import history, history_time_index

__all__ = ["MAX_DAYS", "delete_batch", "ensure_time_index", "record", "since", "valid_days"]

_MAX_BATCH: Final = 10_000
MAX_DAYS: Final = 36_500  # a century: the furthest a datetime subtraction stays valid


def valid_days(days: object) -> float:
    """A retention in days, or ``InvalidInputError``: zero or a negative number would
    delete every row (or rows from the future), so they are refused, not clamped."""
    if isinstance(days, bool) or not isinstance(days, int | float):
        raise InvalidInputError(f"history days must be a number, got {days!r}")
    if not math.isfinite(days) or not 0 < days <= MAX_DAYS:
        raise InvalidInputError(f"history days must be in (0, {MAX_DAYS}], got {days!r}")
    return float(days)


def record(
    conn: Connection,
    user_id: str,
    dimension: str,
    change: tuple[DimensionValue, DimensionValue, float, str | None],
    stamp: tuple[datetime, int],
) -> None:
    """Insert one change: (old value, new value, confidence change, context) at
    (timestamp, version), in the update's transaction."""
    old_value, new_value, confidence_change, context = change
    timestamp, version = stamp
    conn.execute(
        sa.insert(history).values(
            user_id=user_id,
            dimension=dimension,
            old_value=_json(old_value),
            new_value=_json(new_value),
            confidence_change=confidence_change,
            trigger_context=context,
            timestamp=timestamp,
            version=version,
        )
    )


def since(
    conn: Connection, user_id: str, dimension: str | None, start: datetime
) -> list[EvolutionRecord]:
    """The user's changes from ``start`` on, oldest first."""
    query = (
        sa.select(history)
        .where(history.c.user_id == user_id, history.c.timestamp >= start)
        .order_by(history.c.version)
    )
    if dimension is not None:
        query = query.where(history.c.dimension == dimension)
    return [_evolution(row) for row in conn.execute(query).all()]


def ensure_time_index(conn: Connection) -> None:
    """The retention sweep's index, for tables created before it existed (``create_all``
    makes missing tables, never a missing index of an existing one). IF NOT EXISTS: two
    processes creating it at once do not fail."""
    conn.execute(sa.schema.CreateIndex(history_time_index, if_not_exists=True))


def delete_batch(conn: Connection, before: datetime, limit: int) -> int:
    """Delete at most ``limit`` history rows dated before ``before`` (oldest ids first);
    the number deleted. Only history: a user's state rows are never touched."""
    limit = max(1, min(limit, _MAX_BATCH))
    oldest = (
        sa.select(history.c.id)
        .where(history.c.timestamp < before)
        .order_by(history.c.timestamp)
        .limit(limit)
    )
    if conn.dialect.name == "mysql":  # no LIMIT inside IN: one more level of subquery
        oldest = sa.select(oldest.subquery().c.id)
    result = conn.execute(sa.delete(history).where(history.c.id.in_(oldest.scalar_subquery())))
    return int(result.rowcount or 0)


def _json(value: DimensionValue) -> str:
    return msgspec.json.encode(value).decode()


def _evolution(row: Row[Any]) -> EvolutionRecord:
    return EvolutionRecord(
        user_id=row.user_id,
        dimension=row.dimension,
        old_value=msgspec.json.decode(row.old_value),
        new_value=msgspec.json.decode(row.new_value),
        confidence_change=row.confidence_change,
        trigger_context=row.trigger_context,
        timestamp=row.timestamp,
        version=row.version,
    )
