"""``PersonalityTracker``: cache-aside reads and committed, then cached, updates.

Reads: cache, else SQL, then a version-checked fill. Writes: validate at the edge,
commit to SQL (the source of truth), and only then write the committed version through
to the cache; a fill that loaded an older version can no longer overwrite it.
Redis trouble never reaches the caller: the cache answers a miss and SQL answers.
"""

from __future__ import annotations

import math
from typing import Any, Final

from penny_cache.cache import PersonalityCache
from penny_cache.errors import InvalidInputError
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

    def __init__(self, store: PersonalityStore, cache: PersonalityCache | None = None) -> None:
        if cache is None:
            from penny_cache.facade import get_cache

            cache = get_cache()
        self._store = store
        self._cache = cache
        self._bound = False

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
        cached = self._cache.get(user_id)
        if cached is not None:
            return cached
        state = self._store.load(user_id)
        self._cache.set(user_id, state)
        return state

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
