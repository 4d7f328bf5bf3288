"""The asyncio API: ``AsyncPersonalityCache`` and ``AsyncPersonalityTracker``.

Same names, same behaviour as the sync classes, because the decisions are the same
code: both drive the flows of ``policy.py`` and ``tracker.TrackerPolicy``; here each
yielded operation is awaited. Two things are deliberately shared rather than made
async: the counters' flusher and the invalidation listener run in a daemon thread with
a sync client, so near caches keep receiving invalidations even while the event loop is
busy. SQL (SQLAlchemy, sync drivers) runs in a worker thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, Self, TypeVar

from penny_cache import forks
from penny_cache.codec import Entry
from penny_cache.config import Settings
from penny_cache.errors import CacheError, StoreUnavailableError
from penny_cache.near import Ticket
from penny_cache.policy import CachePolicy, Flow
from penny_cache.process_metrics import ProcessMetrics
from penny_cache.state import EvolutionRecord, PersonalityState, validate_user_id
from penny_cache.stats import CounterBackend
from penny_cache.store import PersonalityStore
from penny_cache.tracker import TrackerPolicy

__all__ = ["AsyncCacheBackend", "AsyncPersonalityCache", "AsyncPersonalityTracker", "adrive"]

_V = TypeVar("_V")


async def adrive(flow: Flow[_V], call: Callable[[str, tuple[Any, ...]], Awaitable[Any]]) -> _V:
    """Run a flow to its end, awaiting each operation (the twin of ``policy.drive``)."""
    try:
        op = next(flow)
        while True:
            try:
                result = await call(*op)
            except CacheError as exc:
                op = flow.throw(exc)
            else:
                op = flow.send(result)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    finally:
        flow.close()


class AsyncCacheBackend(Protocol):
    """The awaitable byte-level operations (``AsyncRedisBackend`` provides them)."""

    async def get(self, key: str) -> bytes | None: ...
    async def fill(self, entry: Entry, lease_key: str, token: str = "") -> bool: ...
    async def ping(self) -> bool: ...
    async def close(self) -> None: ...


class AsyncPersonalityCache(CachePolicy):
    """``PersonalityCache`` for asyncio: ``await cache.get(user)`` and friends."""

    def __init__(
        self, backend: AsyncCacheBackend, counter_backend: CounterBackend, **options: Any
    ) -> None:
        super().__init__(counter_backend, **options)
        self._backend = backend
        self._counter_backend = counter_backend
        forks.track(self)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> AsyncPersonalityCache:
        """As ``PersonalityCache.from_url``; connections open on first use."""
        from penny_cache.wiring import async_cache_from_url

        return async_cache_from_url(cls, url, **options)

    @classmethod
    def from_settings(
        cls, settings: Settings, *, metrics: ProcessMetrics | None = None
    ) -> AsyncPersonalityCache:
        """A cache shaped by ``Settings`` (the HTTP service uses this)."""
        from penny_cache.wiring import async_cache_from_settings

        return async_cache_from_settings(cls, settings, metrics=metrics)

    async def call_backend(self, name: str, args: tuple[Any, ...]) -> Any:
        """Await one backend operation a flow yielded."""
        return await getattr(self._backend, name)(*args)

    async def _run(self, flow: Flow[_V]) -> _V:
        return await adrive(flow, self.call_backend)

    async def get(self, user_id: str) -> PersonalityState | None:
        """The cached state, or None on a miss; counts exactly one hit or miss."""
        state = self.near_get(user_id)
        if state is not None:
            return state
        return await self._run(self.get_flow(user_id))

    async def fill(self, state: PersonalityState, ticket: Ticket | None, lease: str = "") -> bool:
        return await self._run(self.fill_flow(state, ticket, lease))

    async def set(self, user_id: str, state: PersonalityState) -> bool:
        """As ``PersonalityCache.set``."""
        return await self._run(self.set_flow(user_id, state))

    async def write_through(self, state: PersonalityState) -> bool:
        """As ``PersonalityCache.write_through``."""
        return await self._run(self.write_through_flow(state))

    async def invalidate(self, user_id: str) -> bool:
        """As ``PersonalityCache.invalidate``."""
        return await self._run(self.invalidate_flow(user_id))

    async def clear(self) -> int:
        """As ``PersonalityCache.clear``."""
        return await self._run(self.clear_flow())

    async def size(self) -> int:
        return await self._run(self.size_flow())

    async def get_stats(self) -> dict[str, Any]:  # type: ignore[override]
        """As ``PersonalityCache.get_stats`` (the read runs in a thread)."""
        return await asyncio.to_thread(super().get_stats)

    async def ping(self) -> bool:
        try:
            return await self._backend.ping()
        except CacheError:
            return False

    async def aclose(self) -> None:
        """Stop the listener, publish the final counters, close connections."""
        await asyncio.to_thread(self._close_policy)
        await self._backend.close()
        close_counters = getattr(self._counter_backend, "close", None)
        if close_counters is not None:
            close_counters()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class AsyncPersonalityTracker(TrackerPolicy):
    """``PersonalityTracker`` for asyncio, sharing its flows."""

    def __init__(
        self,
        store: PersonalityStore,
        cache: AsyncPersonalityCache,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        outbox_interval: float | None = 5.0,
        outbox_grace: float = 2.0,
        serve_stale: bool = False,
    ) -> None:
        super().__init__(
            store,
            cache,
            monotonic=monotonic,
            outbox_interval=outbox_interval,
            outbox_grace=outbox_grace,
            serve_stale=serve_stale,
        )
        self._cache = cache
        self._loads: dict[str, asyncio.Future[PersonalityState]] = {}

    @property
    def cache(self) -> AsyncPersonalityCache:
        return self._cache

    async def _call(self, name: str, args: tuple[Any, ...]) -> Any:
        if name == "sql_load":
            return await asyncio.to_thread(self._store.load, *args)
        if name == "sleep":
            return await asyncio.sleep(*args)
        return await self._cache.call_backend(name, args)

    async def _bind_async(self) -> None:
        if not self._bound:
            await asyncio.to_thread(self._bind)

    async def get_current_personality_state(self, user_id: str) -> PersonalityState:
        """As ``PersonalityTracker.get_current_personality_state``."""
        if self._bound:
            near = self._cache.near_get(user_id)
            if near is not None:
                return near
        validate_user_id(user_id)
        await self._bind_async()
        began = self._monotonic()
        ticket = self._cache.ticket()
        read = self._policy.read_or_lease_flow(user_id, ticket)
        cached, lease = await adrive(read, self._call)
        if cached is not None:
            self._observe("redis_hit", began)
            return cached
        state = self._recent_load(user_id, began)
        if state is None:
            try:
                state = await self._load(user_id, ticket, lease)
            except StoreUnavailableError:
                state = self._fail_safe(user_id)
        self._observe("miss", began)
        return state

    async def _load(
        self, user_id: str, ticket: Ticket | None, lease: str | None
    ) -> PersonalityState:
        if lease:  # elected across processes: load now; a waiter must never hold the lease
            return await adrive(self._load_flow(user_id, ticket, lease), self._call)
        running = self._loads.get(user_id)
        if running is not None:  # single-flight: share the load already in progress
            return await asyncio.shield(running)
        future: asyncio.Future[PersonalityState] = asyncio.get_running_loop().create_future()
        self._loads[user_id] = future
        try:
            state = await adrive(self._load_flow(user_id, ticket, lease), self._call)
            future.set_result(state)
            return state
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody logs it as lost
            raise
        finally:
            del self._loads[user_id]

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
        args = self._update_args(
            user_id, dimension, value, confidence_change, context, confidence=confidence
        )
        await self._bind_async()
        began = self._monotonic()
        state = await asyncio.to_thread(lambda: self._store.update_dimension(**args))
        await self._cache.write_through(state)
        self._confirm_delivery(state)
        self._observe("update", began)
        return state

    async def get_personality_evolution_history(
        self, user_id: str, dimension: str | None = None, days: float = 30
    ) -> list[EvolutionRecord]:
        """As ``PersonalityTracker.get_personality_evolution_history``."""
        args = self._history_args(user_id, dimension, days)
        return await asyncio.to_thread(self._store.history, *args)

    async def get_cache_stats(self) -> dict[str, Any]:
        return await self._cache.get_stats()
