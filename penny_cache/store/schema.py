"""The SQL tables of the source of truth (SQLAlchemy Core), kept apart from the queries."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

__all__ = [
    "UTCDateTime",
    "dimensions",
    "history",
    "history_time_index",
    "meta",
    "metadata",
    "outbox",
    "users",
]

_USER_ID_CHARS = 256  # a valid id is at most 256 UTF-8 bytes, so at most 256 characters


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Stores naive UTC, returns aware UTC, on every dialect (SQLite has no time zones)."""

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are refused; use UTC")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        moment: datetime = value
        if moment.tzinfo is None:
            return moment.replace(tzinfo=UTC)
        return moment.astimezone(UTC)


metadata = sa.MetaData()

meta = sa.Table(
    "penny_meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(256), nullable=False),
)

users = sa.Table(
    "penny_personality_users",
    metadata,
    sa.Column("user_id", sa.String(_USER_ID_CHARS), primary_key=True),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
)

dimensions = sa.Table(
    "penny_personality_dimensions",
    metadata,
    sa.Column(
        "user_id",
        sa.String(_USER_ID_CHARS),
        sa.ForeignKey("penny_personality_users.user_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("dimension", sa.String(64), primary_key=True),
    sa.Column("numeric_value", sa.Double, nullable=True),
    sa.Column("category_value", sa.String(64), nullable=True),
    sa.Column("confidence", sa.Double, nullable=False),
    sa.Column("learning_rate", sa.Double, nullable=False),
    sa.Column("value_type", sa.String(16), nullable=False),
    sa.Column("last_updated", UTCDateTime(), nullable=False),
)

history = sa.Table(
    "penny_personality_history",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("user_id", sa.String(_USER_ID_CHARS), nullable=False),
    sa.Column("dimension", sa.String(64), nullable=False),
    sa.Column("old_value", sa.Text, nullable=False),
    sa.Column("new_value", sa.Text, nullable=False),
    sa.Column("confidence_change", sa.Double, nullable=False),
    sa.Column("trigger_context", sa.Text, nullable=True),
    sa.Column("timestamp", UTCDateTime(), nullable=False),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Index("ix_penny_history_user_time", "user_id", "timestamp"),
)

# The retention sweep's (``PENNY_HISTORY_DAYS``): without it, each sweep of a table with
# nothing to delete reads every row. Tables made before it existed get it from the
# sweep itself (``history_rows.ensure_time_index``).
history_time_index = sa.Index("ix_penny_history_time", history.c.timestamp)

# The transactional outbox: written in the update's transaction, so a committed version
# whose write-through never happened (the process died right after COMMIT) is still
# known, and a sweeper in any process publishes it.
outbox = sa.Table(
    "penny_outbox",
    metadata,
    sa.Column("user_id", sa.String(_USER_ID_CHARS), primary_key=True),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Index("ix_penny_outbox_created", "created_at"),
)
