"""``PersonalityTracker``: cache-aside reads and committed, then cached, updates.

Reads: cache, else SQL, then a version-checked fill. Writes: validate at the edge,
commit to SQL (the source of truth), and only then write the committed version through
to the cache; a fill that loaded an older version can no longer overwrite it.
Redis trouble never reaches the caller: the cache answers a miss and SQL answers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, Final

from penny_cache.cache import PersonalityCache
from penny_cache.errors import InvalidInputError
from penny_cache.flight import SingleFlight
from penny_cache.near import Ticket
from penny_cache.state import (
    EvolutionRecord,
    PersonalityState,
    validate_confidence_change,
    validate_dimension_name,
    validate_dimension_value,
    validate_user_id,
)
from penny_cache.store import PersonalityStore

__all__ = ["MAX_CONTEXT_CHARS", "PersonalityTracker"]

MAX_CONTEXT_CHARS: Final = 4096


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
    if not math.isfinite(days) or days <= 0:
        raise InvalidInputError(f"days must be positive and finite, got {days!r}")
    return float(days)


class PersonalityTracker:
    """Penny's personality tracker, sharing one cache across processes."""

    def __init__(
        self,
        store: PersonalityStore,
        cache: PersonalityCache | None = None,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if cache is None:
            from penny_cache.facade import get_cache

            cache = get_cache()
        self._store = store
        self._cache = cache
        self._bound = False
        self._loads: SingleFlight[PersonalityState] = SingleFlight()
        self._monotonic = monotonic
        self._sleep = sleep

    @property
    def store(self) -> PersonalityStore:
        return self._store

    @property
    def cache(self) -> PersonalityCache:
        return self._cache

    def _bind(self) -> None:
        # Lazy: reading the store's identity touches the database, which a constructor
        # should not do (and the database may come up after the process).
        if not self._bound:
            self._cache.bind_store(self._store.identity)
            self._bound = True

    def get_current_personality_state(self, user_id: str) -> PersonalityState:
        """The user's current state: from the cache when present, else from SQL."""
        validate_user_id(user_id)
        self._bind()
        ticket = self._cache.ticket()  # before the lookup: a later invalidation wins
        cached = self._cache.get(user_id)
        if cached is not None:
            return cached
        return self._loads.run(user_id, lambda: self._load(user_id, ticket))

    def _load(self, user_id: str, ticket: Ticket | None) -> PersonalityState:
        """One loader per user per process; across processes, one per lease."""
        lease = self._cache.acquire_lease(user_id)
        if lease is None:
            state = self._wait_for_other_loader(user_id)
            if state is not None:
                return state
            lease = ""  # the other loader is late: read SQL ourselves
        state = self._store.load(user_id)
        self._cache.fill(state, ticket, lease)
        return state

    def _wait_for_other_loader(self, user_id: str) -> PersonalityState | None:
        deadline = self._monotonic() + self._cache.lease_ttl
        delay = 0.001
        while self._monotonic() < deadline:
            self._sleep(delay)
            state = self._cache.peek(user_id)
            if state is not None:
                return state
            delay = min(delay * 2, 0.02)
        return None

    def update_personality_dimension(
        self,
        user_id: str,
        dimension: str,
        value: float | str,
        confidence_change: float = 0.0,
        context: str | None = None,
    ) -> PersonalityState:
        """Commit ``dimension := value`` as the next version and return that state.

        ``confidence_change`` is added to the stored confidence, clamped to [0, 1].
        Bad input raises an ``InvalidInputError`` and writes nothing.
        """
        validate_user_id(user_id)
        normalised = validate_dimension_value(dimension, value)
        change = validate_confidence_change(confidence_change)
        trigger = _validate_context(context)
        self._bind()
        state = self._store.update_dimension(user_id, dimension, normalised, change, trigger)
        self._cache.write_through(state)
        return state

    def get_personality_evolution_history(
        self, user_id: str, dimension: str | None = None, days: float = 30
    ) -> list[EvolutionRecord]:
        """Committed changes of the last ``days`` days, oldest first."""
        validate_user_id(user_id)
        if dimension is not None:
            validate_dimension_name(dimension)
        return self._store.history(user_id, dimension, _validate_days(days))

    def get_cache_stats(self) -> dict[str, Any]:
        """The shared cache's totals across all processes (see ``PersonalityCache``)."""
        return self._cache.get_stats()
