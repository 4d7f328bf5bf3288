"""The trackers' shared policy: validation at the edge and the read, update and history
flows that ``PersonalityTracker`` and ``AsyncPersonalityTracker`` (``penny_cache.tracker``)
both drive. Reads: cache, else SQL, then a version-checked fill. Writes: validate, commit
to SQL (the source of truth), and only then write the committed version through to the
cache; a fill that loaded an older version can no longer overwrite it. Redis trouble never
reaches the caller: the cache answers a miss and SQL answers.
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Callable
from functools import partial
from typing import Any, Final

from penny_cache.config import validate_write_mode
from penny_cache.errors import InvalidInputError, StoreUnavailableError
from penny_cache.policy.flows import TrackerFlow
from penny_cache.policy.near import Ticket
from penny_cache.policy.ops import Blocking, Shared, Sleep
from penny_cache.policy.reads import CachePolicy
from penny_cache.state import (
    EvolutionRecord,
    PersonalityState,
    conformer,
    validate_confidence,
    validate_confidence_change,
    validate_user_id,
)
from penny_cache.store.database import PersonalityStore
from penny_cache.store.outbox import SWEEPERS, OutboxSweeper, shared_sweeper

__all__ = ["MAX_CONTEXT_CHARS", "TrackerPolicy"]

MAX_CONTEXT_CHARS: Final = 4096
_RECENT_LOADS: Final = 1024
_MAX_DAYS: Final = 36_500  # a century: the furthest a datetime subtraction stays valid
_UPDATE_SIGNATURE: Final = "(user_id, dimension, value, confidence_change=0.0, context=None)"
_HISTORY_SIGNATURE: Final = "(user_id, dimension=None, days=30)"


def _validate_context(context: object) -> str | None:
    if context is None:
        return None
    if not isinstance(context, str):
        raise InvalidInputError(f"context must be a string, got {type(context).__name__}")
    if len(context) > MAX_CONTEXT_CHARS or "\x00" in context:
        raise InvalidInputError(
            f"context must be at most {MAX_CONTEXT_CHARS} characters without NUL"
        )
    return context


def _validate_days(days: object) -> float:
    if isinstance(days, bool) or not isinstance(days, int | float):
        raise InvalidInputError(f"days must be a number, got {days!r}")
    if not math.isfinite(days) or not 0 < days <= _MAX_DAYS:
        raise InvalidInputError(f"days must be in (0, {_MAX_DAYS}], got {days!r}")
    return float(days)


# single-flight keys no user id can take (user ids hold no control characters)
_BIND: Final = "\x00bind"
_READ: Final = "\x00read:"


def _blocking(call: Callable[[], object]) -> TrackerFlow[object]:
    return (yield Blocking(call))


def _publish_checked(cache: CachePolicy, store: PersonalityStore, state: PersonalityState) -> bool:
    """The outbox's replay: a refusal is checked against SQL's current state, never
    taken for a delivery (``policy.ahead``)."""
    return cache.publish_committed(state, partial(store.load, state.user_id))


def _checked_version(min_version: object) -> int:
    if min_version.__class__ is not int or min_version < 0:
        raise InvalidInputError(f"min_version must be a whole number >= 0, got {min_version!r}")
    return min_version


def _sql_version(store: PersonalityStore, user_id: str) -> int | None:
    return store.versions([user_id]).get(user_id)


class TrackerPolicy:
    """Validation and the read/update flows, shared by the sync and async trackers.

    Reads and updates are flows: they yield the cache's operations plus three of the
    tracker's own (``Blocking`` SQL calls, ``Sleep``, and ``Shared``: a load run once
    per process for every concurrent miss), which each tracker runs its own way (a call,
    or a worker thread and ``await``). Only the near-cache hit stays outside a flow.
    """

    def __init__(
        self,
        store: PersonalityStore,
        cache: CachePolicy,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        outbox_interval: float | None = 0.5,
        outbox_grace: float = 1.0,
        serve_stale: bool = False,
        write_mode: str = "available",
        history_days: float | None = None,
    ) -> None:
        """``outbox_interval``: seconds between outbox sweeps (None: no sweeper here);
        ``outbox_grace``: how old an undelivered version must be before it is replayed;
        ``serve_stale``: when SQL is down, answer reads with this process's last known
        state (counted as ``stale_served``) instead of raising. Writes always raise.
        ``write_mode``: ``"strict"`` refuses (``CacheUnavailableError``, nothing
        committed) an update whose old version cannot first be made unusable in Redis
        (see ``policy.strict``); ``"available"`` commits it anyway. ``history_days``:
        the outbox sweeper also deletes older history rows (None: kept forever)."""
        self._strict = validate_write_mode(write_mode) == "strict"
        self._store = store
        self._view = conformer(store.catalogue)  # states as the store's catalogue shows them
        self._policy = cache
        cache.serve_store(lambda: store.identity)  # the cache knows it before any call
        self._serve_stale = serve_stale
        self._bound = False
        self._outbox = None
        self._release_outbox: Callable[[], object] = lambda: None
        if outbox_interval is not None:
            self._outbox = shared_sweeper(
                store,
                cache,
                partial(_publish_checked, cache, store),
                interval=outbox_interval,
                grace=outbox_grace,
                history_days=history_days,
                metrics=cache.metrics,
            )
            # a tracker dropped without close() gives its share back when collected
            self._release_outbox = weakref.finalize(self, SWEEPERS.release, self._outbox)
            cache.add_recovery_step(self._outbox.recover)
        self._monotonic = monotonic
        self._recent: dict[str, tuple[float, PersonalityState]] = {}
        self._sql_version = partial(_sql_version, store)  # the shadow check's SQL read

    @property
    def store(self) -> PersonalityStore:
        return self._store

    def _bind(self) -> None:
        # Lazy: reading the store's identity touches the database, which a constructor
        # should not do (and the database may come up after the process).
        if not self._bound:
            self._policy.bind_store(self._store.identity)
            self._bound = True
            if self._outbox is not None:
                self._outbox.start()

    @property
    def outbox(self) -> OutboxSweeper | None:
        return self._outbox

    def _confirm_delivery(self, state: PersonalityState) -> None:
        """The write-through reached Redis: the outbox row may go (in the next sweep)."""
        if self._outbox is not None and not self._policy.is_pending(state.user_id):
            self._outbox.delivered(state.user_id, state.version)

    def close(self) -> None:
        """Give back this tracker's share of the outbox sweeper (the last one stops its
        thread); the store and cache belong to the caller. Idempotent."""
        self._release_outbox()

    def _load_flow(
        self, user_id: str, ticket: Ticket | None, lease: str | None
    ) -> TrackerFlow[PersonalityState]:
        """Load after a miss: with the lease (or none to be had), from SQL; without it,
        wait for the lease holder's fill, then read SQL ourselves if it is late."""
        if lease is None:
            state = yield from self._wait_flow(user_id)
            if state is not None:
                return state
            lease = ""  # the other loader is late: read SQL ourselves
        started = self._monotonic()
        state = yield Blocking(partial(self._store.load, user_id))
        yield from self._policy.fill_flow(state, ticket, lease)
        if len(self._recent) > _RECENT_LOADS:
            self._recent.clear()
        self._recent[user_id] = (started, state)
        return state  # type: ignore[no-any-return]

    def _fail_safe(self, user_id: str) -> PersonalityState:
        """SQL is down: with ``serve_stale``, the last state this process knew (counted
        as ``stale_served``); otherwise, or with none known, the error goes up."""
        state = self._policy.last_known(user_id) if self._serve_stale else None
        if state is None:
            raise  # noqa: PLE0704 - re-raise the StoreUnavailableError being handled
        return state

    def _recent_load(self, user_id: str, began: float, min_version: int) -> PersonalityState | None:
        """A load that started after this read began is as fresh as this read may be:
        a miss that raced a just-finished load returns its result, not a second load."""
        recent = self._recent.get(user_id)
        if recent is not None and recent[0] >= began and recent[1].version >= min_version:
            return recent[1]
        return None

    def _wait_flow(self, user_id: str) -> TrackerFlow[PersonalityState | None]:
        deadline = self._monotonic() + self._policy.lease_ttl
        delay = 0.001
        while self._monotonic() < deadline:
            yield Sleep(delay)
            state = yield from self._policy.peek_flow(user_id)
            if state is not None:
                return state
            delay = min(delay * 2, 0.02)
        return None

    def _observe(self, operation: str, began: float) -> None:
        """Time an operation that left the process (near hits are not timed)."""
        metrics = self._policy.metrics
        if metrics is not None:
            metrics.timers[operation].observe(self._monotonic() - began)

    def _bind_flow(self) -> TrackerFlow[None]:
        """Bind once, whoever asks first: a burst of first calls shares one SQL read of
        the store's identity (200 coroutines each queued one in the worker threads, so
        the first miss's SQL load waited behind all of them)."""
        if not self._bound:
            yield Shared(_BIND, _blocking(self._bind))

    def _read_flow(self, user_id: str, min_version: int) -> TrackerFlow[PersonalityState]:
        """The read behind a near miss. Concurrent reads of one user in this process make
        one lookup (``_lookup_flow``) and share it: a burst of 200 made 200 Redis calls,
        and any of them that failed (a pool wait past the deadline) loaded SQL again.
        Each caller still counts exactly one lookup, as the shared one counted."""
        validate_user_id(user_id)
        min_version = _checked_version(min_version)
        yield from self._bind_flow()
        began = self._monotonic()
        ran: list[bool] = []  # the shared lookup this caller gets is its own
        try:
            lookup = self._lookup_flow(user_id, min_version, began, ran)
            state, cached = yield Shared(_READ + user_id, lookup)
        except Exception:
            if not ran:
                self._policy.count_lookup(hit=False)
            raise
        if not ran:
            if state.version < min_version:  # the shared lookup asked for less
                state, cached = yield from self._lookup_flow(user_id, min_version, began, ran)
            else:
                self._policy.count_lookup(hit=cached)
        self._observe("redis_hit" if cached else "miss", began)
        return self._view(state)

    def _lookup_flow(
        self, user_id: str, min_version: int, began: float, ran: list[bool]
    ) -> TrackerFlow[tuple[PersonalityState, bool]]:
        """Redis (or the lease to load), else SQL; nothing older than ``min_version``
        comes from a cache. Answers the state and whether a cache had it."""
        ran.append(True)
        ticket = self._policy.ticket()  # before the lookup: a later invalidation wins
        read = self._policy.read_or_lease_flow(user_id, ticket, min_version)
        cached, lease = yield from read
        if cached is not None:
            self._policy.shadow.offer(user_id, cached.version, self._sql_version)
            return cached, True
        state = self._recent_load(user_id, began, min_version)
        if state is None:
            load = self._load_flow(user_id, ticket, lease)
            try:
                # one SQL load per process for every concurrent miss; the holder of the
                # cross-process lease leads it, and never waits on another's (that one
                # may be waiting for the holder's own fill)
                state = yield Shared(user_id, load, wait=not lease)
            except StoreUnavailableError:
                state = self._fail_safe(user_id)
        return state, False

    def _near_hit(self, user_id: str, min_version: object) -> PersonalityState | None:
        """The hot path, outside any flow; only validated ids are ever in the near cache.
        A bad ``min_version`` finds nothing here and is refused by the read flow."""
        if not self._bound or min_version.__class__ is not int:
            return None
        state = self._policy.near_get(user_id, min_version)
        return None if state is None else self._view(state)

    def _update_flow(
        self, user_id: str, dimension: str, value: object, **options: object
    ) -> TrackerFlow[PersonalityState]:
        """Validate, commit the next version to SQL, then write it through to the cache.
        ``options``: ``change``, ``context``, ``confidence`` (see ``_update_args``)."""
        args = self._update_args(user_id, dimension, value, **options)
        yield from self._bind_flow()
        began = self._monotonic()
        if self._strict:  # under the row lock, before COMMIT (``policy.strict``)
            args["before_commit"] = lambda _current, version: self._policy.seal(user_id, version)
        state = yield Blocking(partial(self._store.update_dimension, **args))
        sql_state = partial(self._store.load, user_id)  # a refusal is checked against it
        write = self._policy.checked_write_through_flow(state, sql_state, sealed=self._strict)
        if (yield from write):
            self._confirm_delivery(state)
        self._observe("update", began)
        return self._view(state)

    def _history_flow(
        self, user_id: str, dimension: str | None, days: object
    ) -> TrackerFlow[list[EvolutionRecord]]:
        args = self._history_args(user_id, dimension, days)
        return (yield Blocking(partial(self._store.history, *args)))  # type: ignore[no-any-return]

    def _update_args(
        self,
        user_id: str,
        dimension: str,
        value: object,
        *,
        change: object,
        context: object,
        confidence: object,
    ) -> dict[str, Any]:
        """Validate at the edge: bad input raises ``InvalidInputError``, nothing written.
        Returns the store's ``update_dimension`` arguments."""
        validate_user_id(user_id)
        catalogue = self._store.catalogue
        catalogue.refuse_dimension_as_user_id(user_id, _UPDATE_SIGNATURE)
        return {
            "user_id": user_id,
            "dimension": dimension,
            "value": catalogue.validate_value(dimension, value),
            "confidence_change": validate_confidence_change(change),
            "context": _validate_context(context),
            "confidence": validate_confidence(confidence),
        }

    def _history_args(
        self, user_id: str, dimension: str | None, days: object
    ) -> tuple[str, str | None, float]:
        validate_user_id(user_id)
        catalogue = self._store.catalogue
        catalogue.refuse_dimension_as_user_id(user_id, _HISTORY_SIGNATURE)
        if dimension is not None:
            catalogue.validate_name(dimension)
        return user_id, dimension, _validate_days(days)
