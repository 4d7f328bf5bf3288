"""The SQL source of truth (SQLAlchemy 2.x): the store's queries and transactions.

With its tables (``store.schema``) and the outbox's queries (``store.outbox_rows``), the
only code that imports SQLAlchemy.

An update locks the user's row (``SELECT ... FOR UPDATE`` on PostgreSQL, ``BEGIN
IMMEDIATE`` on SQLite), writes the dimension and the history, and bumps ``version``
with a compare-and-set, all in one transaction; a lost race is retried, never lost.
A read is one joined ``SELECT``, so it sees one committed version, never a mix.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from typing import Any, Final, NamedTuple, Self

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Row

from penny_cache.catalogue import PENNY, Catalogue
from penny_cache.errors import (
    InvalidInputError,
    StoreConflictError,
    StoreError,
    StoreUnavailableError,
)
from penny_cache.state import (
    EPOCH,
    DimensionValue,
    EvolutionRecord,
    PersonalityDimension,
    PersonalityState,
    apply_update,
    default_state,
)
from penny_cache.store import audit, history_rows, outbox_rows
from penny_cache.store.engines import ENGINES, WRITE, make_engine
from penny_cache.store.schema import dimensions, meta, metadata, users

__all__ = ["EPOCH", "BeforeCommit", "PersonalityStore"]

_MAX_ATTEMPTS: Final = 50


class _Change(NamedTuple):
    """One validated update, as the retry loop passes it around."""

    dimension: str
    value: DimensionValue
    confidence_change: float
    context: str | None
    confidence: float | None


BeforeCommit = Callable[[PersonalityState, int], None]
"""Called inside an update's transaction with the locked current state and the version
about to be committed; raising rolls the transaction back (nothing is committed)."""


class _LostRaceError(Exception):
    """Another writer moved the version between our read and our compare-and-set."""


def _utc_now() -> datetime:
    return datetime.now(UTC)


class PersonalityStore:
    """Reads and commits personality states; tables are created on first use.

    ``catalogue`` (default ``Catalogue.penny()``) says which dimensions exist: a state
    read holds each of them (its default when never written) and every dimension row the
    user has, declared here or not, so that a process on another catalogue (a rolling
    deploy) loses nothing it writes through. Adding a dimension migrates nothing.
    """

    def __init__(
        self,
        url: str = "sqlite:///penny.db",
        *,
        catalogue: Catalogue | None = None,
        clock: Callable[[], datetime] = _utc_now,
        echo: bool = False,
    ) -> None:
        self._catalogue = catalogue if catalogue is not None else PENNY
        if not isinstance(self._catalogue, Catalogue):
            raise InvalidInputError(f"catalogue must be a Catalogue, got {catalogue!r}")
        self._defaults = default_state("defaults", EPOCH, self._catalogue).dimensions
        try:
            self._engine = ENGINES.acquire((url, echo), lambda: make_engine(url, echo=echo))
        except (sa_exc.ArgumentError, ImportError) as exc:
            raise InvalidInputError(f"not a usable database URL: {exc}") from exc
        # an unclosed store (Penny builds one per request) gives its engine back when
        # collected; close() does it at once
        self._release = weakref.finalize(self, ENGINES.release, self._engine)
        self._clock = clock
        self._schema_lock = threading.Lock()
        self._identity: str | None = None
        self._history_indexed = False

    @property
    def catalogue(self) -> Catalogue:
        """The dimensions this store tracks (validation, defaults, learning rates)."""
        return self._catalogue

    @property
    def url(self) -> str:
        """The database URL with any password masked."""
        return self._engine.url.render_as_string(hide_password=True)

    @property
    def identity(self) -> str:
        """A random id stored in the database itself: equal for every URL that reaches it.

        Caches key their entries by it, so two databases never share entries.
        """
        self._ensure_schema()
        assert self._identity is not None
        return self._identity

    def _ensure_schema(self) -> None:
        if self._identity is not None:
            return
        with self._schema_lock, _translated():
            if self._identity is None:
                self._identity = self._create_schema()

    def _create_schema(self) -> str:
        for attempt in range(3):
            try:  # in a write transaction: on SQLite, BEGIN IMMEDIATE waits its turn
                with self._write() as conn:
                    metadata.create_all(conn, checkfirst=True)
                break
            except (sa_exc.IntegrityError, sa_exc.ProgrammingError):
                if attempt == 2:  # another process kept racing us to CREATE TABLE
                    raise
        with self._write() as conn:
            _insert_ignore(conn, meta, {"key": "store_id", "value": uuid.uuid4().hex[:16]})
            found = conn.execute(sa.select(meta.c.value).where(meta.c.key == "store_id"))
            return str(found.scalar_one())

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self._engine.connect() as conn:
            conn.execution_options(**{WRITE: True})
            with conn.begin():
                yield conn

    def load(self, user_id: str) -> PersonalityState:
        """The committed state of ``user_id`` (version 0 defaults for an unknown user)."""
        self._ensure_schema()
        with _translated(), self._engine.connect() as conn, conn.begin():
            rows = _load_rows(conn, user_id)
        return self._state_from_rows(user_id, rows)

    def update_dimension(
        self,
        user_id: str,
        dimension: str,
        value: DimensionValue,
        confidence_change: float = 0.0,
        context: str | None = None,
        *,
        confidence: float | None = None,
        before_commit: BeforeCommit | None = None,
    ) -> PersonalityState:
        """Commit one change as the next version and return the committed state.

        ``confidence``, when given, replaces the stored confidence (the history records
        the resulting change). Arguments must already be validated (the tracker does it).
        ``before_commit(current, next_version)`` runs under the row lock, after every
        write and before COMMIT; whatever it raises rolls everything back and goes up.
        """
        change = _Change(dimension, value, confidence_change, context, confidence)
        self._ensure_schema()
        for attempt in range(_MAX_ATTEMPTS):
            try:
                with _translated():
                    return self._try_update(user_id, change, before_commit)
            except _LostRaceError:
                pass
            time.sleep(random.uniform(0, 0.002 * (attempt + 1)))  # jitter, not security
        raise StoreConflictError(f"update of {dimension} lost its race {_MAX_ATTEMPTS} times")

    def _try_update(
        self, user_id: str, change: _Change, before_commit: BeforeCommit | None
    ) -> PersonalityState:
        dimension, value = change.dimension, change.value
        with self._write() as conn:
            _insert_ignore(conn, users, {"user_id": user_id, "version": 0, "updated_at": EPOCH})
            locked = sa.select(users.c.version).where(users.c.user_id == user_id)
            conn.execute(locked.with_for_update())
            current = self._state_from_rows(user_id, _load_rows(conn, user_id))
            # stamped under the row lock, and never before the version it follows (another
            # host's clock may run behind): a later version never has an earlier time
            now = max(self._clock(), current.updated_at)
            new = apply_update(
                current,
                dimension,
                value,
                change.confidence_change,
                now,
                confidence=change.confidence,
            )
            bumped = conn.execute(
                sa.update(users)
                .where(users.c.user_id == user_id, users.c.version == current.version)
                .values(version=new.version, updated_at=now)
            )
            if bumped.rowcount != 1:
                raise _LostRaceError  # rolls the transaction back; the caller retries
            _upsert_dimension(conn, user_id, dimension, new.dimensions[dimension])
            outbox_rows.record(conn, user_id, new.version, now)
            _record_history(conn, change, current, new)
            if before_commit is not None:
                before_commit(current, new.version)
        return new

    def history(
        self, user_id: str, dimension: str | None = None, days: float = 30
    ) -> list[EvolutionRecord]:
        """Committed changes of the last ``days`` days, oldest first."""
        self._ensure_schema()
        start = self._clock() - timedelta(days=days)
        with _translated(), self._engine.connect() as conn:
            return history_rows.since(conn, user_id, dimension, start)

    def sweep_history(self, days: float, *, batch: int = 1000, max_batches: int = 0) -> int:
        """Delete history rows older than ``days`` days (``PENNY_HISTORY_DAYS``), in
        transactions of at most ``batch`` rows, at most ``max_batches`` of them (0: until
        none is left); the number deleted. State rows are never touched. Idempotent:
        processes sweeping at once only share the work."""
        before = self._clock() - timedelta(days=history_rows.valid_days(days))
        self._ensure_schema()
        deleted = batches = 0
        with _translated():
            if not self._history_indexed:
                with self._write() as conn:
                    history_rows.ensure_time_index(conn)
                self._history_indexed = True
            while not max_batches or batches < max_batches:
                with self._write() as conn:
                    removed = history_rows.delete_batch(conn, before, batch)
                deleted, batches = deleted + removed, batches + 1
                if removed < batch:
                    break
        return deleted

    def outbox_due(self, grace: float, limit: int = 100) -> list[tuple[str, int]]:
        """Committed versions older than ``grace`` seconds whose delivery to the cache
        was not confirmed: (user, version), oldest first."""
        rows = self.outbox_page(self._clock() - timedelta(seconds=grace), None, limit)
        return [(row.user_id, row.version) for row in rows]

    def outbox_page(
        self, older_than: datetime, after: outbox_rows.DueRow | None, limit: int
    ) -> list[outbox_rows.DueRow]:
        """Unconfirmed rows dated before ``older_than``, oldest first, resuming after
        ``after`` (a sweep's scan past rows in backoff)."""
        self._ensure_schema()
        with _translated(), self._engine.connect() as conn, conn.begin():
            return outbox_rows.due_page(conn, older_than, after, limit)

    def versions(self, user_ids: Sequence[str]) -> dict[str, int]:
        """Committed versions of those of ``user_ids`` SQL has (one read-only query)."""
        self._ensure_schema()
        with _translated(), self._engine.connect() as conn, conn.begin():
            return audit.versions(conn, user_ids)

    def outbox_row(self, user_id: str) -> audit.OutboxRow | None:
        """The user's unconfirmed delivery (see ``store.outbox_rows``), if any."""
        self._ensure_schema()
        with _translated(), self._engine.connect() as conn, conn.begin():
            return audit.outbox_row(conn, user_id)

    def now(self) -> datetime:
        """This store's clock (UTC): the outbox dates confirmations with it."""
        return self._clock()

    def outbox_delivered(self, delivered: list[outbox_rows.Delivery]) -> int:
        """Forget the outbox rows of these delivered versions (older rows only)."""
        if not delivered:
            return 0
        self._ensure_schema()
        with _translated(), self._write() as conn:
            return outbox_rows.delete_delivered(conn, delivered)

    def _state_from_rows(self, user_id: str, rows: Sequence[Row[Any]]) -> PersonalityState:
        """The catalogue's defaults, overlaid with every row the user has; a declared
        dimension takes the catalogue's learning rate (a row stored as another kind is
        shown as the default until written again)."""
        if not rows:
            return default_state(user_id, EPOCH, self._catalogue)
        dims = dict(self._defaults)
        specs = self._catalogue.specs
        for row in rows:
            if row.dimension is None:  # the outer join of a user without dimension rows
                continue
            spec = specs.get(row.dimension)
            if spec is not None and spec.value_type != row.value_type:
                continue
            value = row.numeric_value if row.value_type == "continuous" else row.category_value
            dims[row.dimension] = PersonalityDimension(
                value=value,
                confidence=row.confidence,
                learning_rate=row.learning_rate if spec is None else spec.learning_rate,
                value_type=row.value_type,
                last_updated=row.last_updated,
            )
        first = rows[0]
        return PersonalityState(
            user_id=user_id, version=first.version, updated_at=first.updated_at, dimensions=dims
        )

    def ping(self) -> None:
        """Raise ``StoreError`` unless the database answers."""
        with _translated(), self._engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    def close(self) -> None:
        """Give the engine back (the last store of its URL in this process disposes it)."""
        self._release()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _insert_ignore(conn: Connection, table: sa.Table, values: dict[str, Any]) -> None:
    dialect = conn.dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        conn.execute(pg_insert(table).values(values).on_conflict_do_nothing())
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        conn.execute(sqlite_insert(table).values(values).on_conflict_do_nothing())
    else:
        with conn.begin_nested(), suppress(sa_exc.IntegrityError):
            conn.execute(sa.insert(table).values(values))


def _upsert_dimension(conn: Connection, user_id: str, name: str, dim: PersonalityDimension) -> None:
    numeric = dim.value if isinstance(dim.value, float) else None
    category = dim.value if isinstance(dim.value, str) else None
    values = {
        "numeric_value": numeric,
        "category_value": category,
        "confidence": dim.confidence,
        "learning_rate": dim.learning_rate,
        "value_type": dim.value_type,
        "last_updated": dim.last_updated,
    }
    where = (dimensions.c.user_id == user_id, dimensions.c.dimension == name)
    updated = conn.execute(sa.update(dimensions).where(*where).values(values))
    if updated.rowcount == 0:  # safe: the user's row lock serialises writers
        conn.execute(sa.insert(dimensions).values(user_id=user_id, dimension=name, **values))


# Built once: constructing a Select costs more Python time than SQLite takes to run it.
_STATE_QUERY: Final = (
    sa.select(users.c.version, users.c.updated_at, *dimensions.c)
    .select_from(users.outerjoin(dimensions, dimensions.c.user_id == users.c.user_id))
    .where(users.c.user_id == sa.bindparam("user_id"))
)


def _load_rows(conn: Connection, user_id: str) -> Sequence[Row[Any]]:
    return conn.execute(_STATE_QUERY, {"user_id": user_id}).all()


def _record_history(
    conn: Connection, change: _Change, current: PersonalityState, new: PersonalityState
) -> None:
    name = change.dimension
    recorded = _recorded_change(change, current, new)
    values = (current.dimensions[name].value, change.value, recorded, change.context)
    history_rows.record(conn, new.user_id, name, values, (new.updated_at, new.version))


def _recorded_change(change: _Change, old: PersonalityState, new: PersonalityState) -> float:
    """The history's confidence change: as asked, or the effect of an absolute confidence."""
    if change.confidence is None:
        return change.confidence_change
    name = change.dimension
    return new.dimensions[name].confidence - old.dimensions[name].confidence


@contextmanager
def _translated() -> Iterator[None]:
    """The one boundary where SQLAlchemy errors become ours."""
    try:
        yield
    except (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError) as exc:
        origin = getattr(exc, "orig", None) or exc
        reason = (str(origin).strip().splitlines() or [type(exc).__name__])[0]
        raise StoreUnavailableError(f"database unavailable: {reason}") from exc
    except sa_exc.SQLAlchemyError as exc:
        raise StoreError(f"database error: {exc.__class__.__name__}: {exc}") from exc
