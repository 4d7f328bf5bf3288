"""``PersonalityCache`` and ``AsyncPersonalityCache``: the two faces of the cache policy.

Both drive the same flows (``penny_cache.policy.reads.CachePolicy``): the sync face with
plain calls, the asyncio face with ``await``. They know no redis-py or SQLAlchemy type:
bytes move through a backend (``penny_cache.redis.backend.RedisBackend`` in production, the
same class over fakeredis in unit tests). The rules (near cache only while vouched for,
version-checked writes that publish invalidations, undecodable entries as counted misses,
Redis failures as misses) live in the policy. The asyncio face shares two things rather
than awaiting them: the counters' flusher and the invalidation listener run in a daemon
thread with a sync client, so near caches keep receiving invalidations while the event
loop is busy.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, ClassVar, Self, TypeVar

from penny_cache import forks, wiring
from penny_cache.config import Settings
from penny_cache.errors import CacheError
from penny_cache.policy.flows import Flow, adrive, drive
from penny_cache.policy.near import Ticket
from penny_cache.policy.ops import CacheOp
from penny_cache.policy.ports import AsyncTransport, SyncTransport
from penny_cache.policy.reads import CachePolicy
from penny_cache.state import PersonalityState
from penny_cache.store.database import PersonalityStore

__all__ = ["AsyncPersonalityCache", "PersonalityCache"]

_V = TypeVar("_V")


class _Wired(CachePolicy):
    """``from_url`` and ``from_settings``, written once for both faces: each face names
    its constructor arguments' maker in ``_parts``."""

    _parts: ClassVar[Callable[..., wiring.Parts]]

    @classmethod
    def from_url(cls, url: str, *, store: PersonalityStore | None = None, **options: Any) -> Self:
        """A cache on the Redis at ``url``; ``options`` as in ``Settings`` field names
        (``ttl``, ``namespace``, ``near_cache``, ``max_staleness``, ``timeout``, ...).
        ``store``: the database whose entries it serves, known from the first call (a
        tracker given this cache names its store otherwise; see ``serve_store``).
        Connections open on first use."""
        settings, extra = wiring.settings_from_url(url, options)
        return cls.from_settings(settings, store=store, **extra)

    @classmethod
    def from_settings(
        cls, settings: Settings, *, store: PersonalityStore | None = None, **extra: Any
    ) -> Self:
        """A cache shaped by ``Settings`` (``get_cache()`` and the HTTP service use this);
        ``extra``: ``metrics``, ``stats_flush_interval`` (None: no flusher, for tests)."""
        args, options = cls._parts(settings, **extra)
        cache = cls(*args, **options)
        if store is not None:
            cache.serve_store(lambda: store.identity)
        return cache


class PersonalityCache(_Wired):
    """A shared Redis cache of ``PersonalityState`` entries with coherent near caches."""

    _parts = staticmethod(wiring.sync_parts)

    def __init__(self, backend: SyncTransport, **options: Any) -> None:
        super().__init__(backend, **options)
        self._backend = backend
        forks.track(self)

    def run_op(self, op: CacheOp) -> Any:
        """Carry out one operation a flow yielded (the tracker's driver passes them on)."""
        return self._backend.run(op)

    def _run(self, flow: Flow[_V]) -> _V:
        if self.scope_pending:  # before the flow's first step computes a key
            self.resolve_scope()
        return drive(flow, self._backend.run)

    def get(self, user_id: str) -> PersonalityState | None:
        """The cached state, or None on a miss; counts exactly one hit or miss."""
        # near_get() inlined: this is the hot path, a Python frame costs a third of it.
        near, listener = self._near, self._listener
        if near is not None and listener is not None and user_id.__class__ is str:
            now = self._monotonic()
            if now < listener.trusted_until:
                entry = near.lookup(user_id)
                if entry is not None and now < entry.expires_at:
                    self._local_counters.near_hit()
                    return entry.state
        return self._run(self.get_flow(user_id))

    def fill(self, state: PersonalityState, ticket: Ticket | None, lease: str = "") -> bool:
        """Cache a state just read from SQL, unless a newer version is already cached."""
        return self._run(self.fill_flow(state, ticket, lease))

    def set(self, user_id: str, state: PersonalityState) -> bool:
        """Write ``state`` unless Redis holds the same or a newer version, and drop older
        copies from every process's near cache. Raises ``InvalidStateError`` for a state
        of another user or over the size cap; a Redis failure returns False."""
        return self._run(self.set_flow(user_id, state))

    def write_through(self, state: PersonalityState) -> bool:
        """Publish a just-committed state (counts an invalidation); kept if Redis fails."""
        return self._run(self.write_through_flow(state))

    def invalidate(self, user_id: str) -> bool:
        """Drop ``user_id``'s entry here, in Redis and in every near cache."""
        return self._run(self.invalidate_flow(user_id))

    def clear(self, pattern: str | None = None) -> int:
        """Remove this namespace and store's entries and empty every near cache."""
        return self._run(self.clear_flow(pattern))

    def size(self, pattern: str | None = None) -> int:
        """Entries cached for this namespace and store (a SCAN: not for hot paths)."""
        return self._run(self.size_flow(pattern))

    def ping(self) -> bool:
        """True when Redis answers."""
        return self.check() is None

    def check(self) -> str | None:
        """None when Redis answers, else why not (for probes and the CLI)."""
        try:
            self._backend.ping()
        except CacheError as exc:
            return str(exc)
        return None

    def close(self) -> None:
        """Stop the listener, publish the final counters, close connections."""
        self._close_policy()
        self._backend.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncPersonalityCache(_Wired):
    """``PersonalityCache`` for asyncio: ``await cache.get(user)`` and friends."""

    _parts = staticmethod(wiring.async_parts)

    def __init__(
        self, backend: AsyncTransport, sync_backend: SyncTransport, **options: Any
    ) -> None:
        """``sync_backend`` serves the background threads: counters, the listener's
        periodic work, the outbox."""
        super().__init__(sync_backend, **options)
        self._backend = backend
        forks.track(self)

    async def run_op(self, op: CacheOp) -> Any:
        """Await one operation a flow yielded (the tracker's driver passes them on)."""
        return await self._backend.run(op)

    async def _run(self, flow: Flow[_V]) -> _V:
        if self.scope_pending:  # before the flow's first step computes a key
            await asyncio.to_thread(self.resolve_scope)
        return await adrive(flow, self._backend.run)

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
        self._sync_backend.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
