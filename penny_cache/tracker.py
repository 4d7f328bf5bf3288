"""``PersonalityTracker`` and ``AsyncPersonalityTracker``, side by side: the two faces of
``penny_cache.tracking.TrackerPolicy``. They differ only in how an operation is carried
out: a call, or ``await`` (SQL, sync drivers, in a worker thread via ``asyncio.to_thread``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Self

from penny_cache.cache import AsyncPersonalityCache, PersonalityCache
from penny_cache.default import get_shared_cache
from penny_cache.policy.flight import AsyncSingleFlight, SingleFlight
from penny_cache.policy.flows import adrive, drive
from penny_cache.policy.ops import Blocking, Op, Shared, Sleep
from penny_cache.state import (
    EvolutionRecord,
    PersonalityState,
)
from penny_cache.store.database import PersonalityStore
from penny_cache.tracking import TrackerPolicy

__all__ = ["AsyncPersonalityTracker", "PersonalityTracker"]


class PersonalityTracker(TrackerPolicy):
    """Penny's personality tracker, sharing one cache across processes."""

    def __init__(
        self,
        store: PersonalityStore,
        cache: PersonalityCache | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
        **options: Any,
    ) -> None:
        """Without ``cache``, the process-wide ``get_shared_cache()``, as the original did;
        ``options`` as in ``TrackerPolicy``."""
        self._cache = cache if cache is not None else get_shared_cache()
        super().__init__(store, self._cache, **options)
        self._loads: SingleFlight[PersonalityState] = SingleFlight()
        self._sleep = sleep

    @property
    def cache(self) -> PersonalityCache:
        return self._cache

    def _call(self, op: Op) -> Any:
        if isinstance(op, Blocking):
            return op.call()
        if isinstance(op, Sleep):
            return self._sleep(op.seconds)
        if isinstance(op, Shared):
            return self._loads.run(op.key, lambda: drive(op.flow, self._call), wait=op.wait)
        return self._cache.run_op(op)

    def get_current_personality_state(
        self, user_id: str, *, min_version: int = 0
    ) -> PersonalityState:
        """The user's current state: from the cache when present, else from SQL.

        ``min_version``: the version an update returned (read-your-writes across
        processes): a cached entry older than it is passed by and SQL answers."""
        state = self._near_hit(user_id, min_version)
        if state is not None:
            return state
        return drive(self._read_flow(user_id, min_version), self._call)

    def update_personality_dimension(
        self,
        user_id: str,
        dimension: str,
        value: float | str,
        confidence_change: float = 0.0,
        context: str | None = None,
        *,
        confidence: float | None = None,
    ) -> PersonalityState:
        """Commit ``dimension := value`` as the next version and return that state.

        ``confidence_change`` is added to the stored confidence, clamped to [0, 1];
        ``confidence`` instead sets it. Bad input raises ``InvalidInputError``, writes nothing.
        """
        options = {"change": confidence_change, "context": context, "confidence": confidence}
        return drive(self._update_flow(user_id, dimension, value, **options), self._call)

    def get_personality_evolution_history(
        self, user_id: str, dimension: str | None = None, days: float = 30
    ) -> list[EvolutionRecord]:
        """Committed changes of the last ``days`` days, oldest first."""
        return drive(self._history_flow(user_id, dimension, days), self._call)

    def get_cache_stats(self) -> dict[str, Any]:
        """The shared cache's totals across all processes (see ``PersonalityCache``)."""
        return self._cache.get_stats()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncPersonalityTracker(TrackerPolicy):
    """``PersonalityTracker`` for asyncio: the same flows, awaited; SQL in worker threads."""

    def __init__(
        self, store: PersonalityStore, cache: AsyncPersonalityCache, **options: Any
    ) -> None:
        """As ``PersonalityTracker``; the cache is required (there is no asyncio default)."""
        self._cache = cache
        super().__init__(store, cache, **options)
        self._loads: AsyncSingleFlight[PersonalityState] = AsyncSingleFlight()

    @property
    def cache(self) -> AsyncPersonalityCache:
        return self._cache

    async def _call(self, op: Op) -> Any:
        if isinstance(op, Blocking):
            return await asyncio.to_thread(op.call)
        if isinstance(op, Sleep):
            return await asyncio.sleep(op.seconds)
        if isinstance(op, Shared):
            return await self._loads.run(op.key, lambda: adrive(op.flow, self._call), wait=op.wait)
        return await self._cache.run_op(op)

    async def get_current_personality_state(
        self, user_id: str, *, min_version: int = 0
    ) -> PersonalityState:
        """As ``PersonalityTracker.get_current_personality_state``."""
        state = self._near_hit(user_id, min_version)
        if state is not None:
            return state
        return await adrive(self._read_flow(user_id, min_version), self._call)

    async def update_personality_dimension(
        self,
        user_id: str,
        dimension: str,
        value: float | str,
        confidence_change: float = 0.0,
        context: str | None = None,
        *,
        confidence: float | None = None,
    ) -> PersonalityState:
        """As ``PersonalityTracker.update_personality_dimension``."""
        options = {"change": confidence_change, "context": context, "confidence": confidence}
        return await adrive(self._update_flow(user_id, dimension, value, **options), self._call)

    async def get_personality_evolution_history(
        self, user_id: str, dimension: str | None = None, days: float = 30
    ) -> list[EvolutionRecord]:
        """As ``PersonalityTracker.get_personality_evolution_history``."""
        return await adrive(self._history_flow(user_id, dimension, days), self._call)

    async def get_cache_stats(self) -> dict[str, Any]:
        """As ``PersonalityTracker.get_cache_stats`` (the read runs in a thread)."""
        return await self._cache.get_stats()

    async def aclose(self) -> None:
        """As ``PersonalityTracker.close`` (joining the thread off the event loop)."""
        await asyncio.to_thread(self.close)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
