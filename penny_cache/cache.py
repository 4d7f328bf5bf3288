"""``PersonalityCache``: the synchronous face of the cache policy (``policy.py``).

It knows no redis-py or SQLAlchemy type: bytes move through a ``CacheBackend``
(``RedisBackend`` in production, the same class over fakeredis in unit tests). The rules
(near cache only while vouched for, version-checked writes that publish invalidations,
undecodable entries as counted misses, Redis failures as misses) live in the policy and
are shared with ``AsyncPersonalityCache``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, Self, TypeVar

from penny_cache import forks
from penny_cache.codec import Entry
from penny_cache.config import Settings
from penny_cache.errors import CacheError
from penny_cache.near import Ticket
from penny_cache.policy import CachePolicy, Flow, Listener, drive, stats_view
from penny_cache.state import PersonalityState
from penny_cache.stats import CounterBackend

__all__ = ["CacheBackend", "Listener", "PersonalityCache", "stats_view"]

_V = TypeVar("_V")


class CacheBackend(CounterBackend, Protocol):
    """The byte-level operations the policy needs (``RedisBackend`` provides them)."""

    def get(self, key: str) -> bytes | None: ...
    def set(self, key: str, payload: bytes, ttl_ms: int) -> None: ...
    def fill(self, entry: Entry, lease_key: str, token: str = "") -> bool: ...
    def write_publish(
        self, entry: Entry, seq_key: str, channel: str, encoded_user: str
    ) -> bool: ...
    def invalidate_publish(
        self, key: str, seq_key: str, channel: str, encoded_user: str
    ) -> None: ...
    def publish_flush(self, seq_key: str, channel: str) -> None: ...
    def try_lease(self, key: str, lease_key: str, token: str, ttl_ms: int) -> bytes | bool: ...
    def delete(self, key: str) -> bool: ...
    def unlink_matching(self, pattern: str) -> int: ...
    def count_matching(self, pattern: str) -> int: ...
    def ping(self) -> bool: ...
    def close(self) -> None: ...


class PersonalityCache(CachePolicy):
    """A shared Redis cache of ``PersonalityState`` entries with coherent near caches."""

    def __init__(self, backend: CacheBackend, **options: Any) -> None:
        super().__init__(backend, **options)
        self._backend = backend
        forks.track(self)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> PersonalityCache:
        """A cache on the Redis at ``url``; ``options`` as in ``Settings`` field names
        (``ttl``, ``namespace``, ``near_cache``, ``max_staleness``, ``timeout``, ...)."""
        from penny_cache.wiring import cache_from_url

        return cache_from_url(cls, url, **options)

    @classmethod
    def from_settings(cls, settings: Settings) -> PersonalityCache:
        """A cache shaped by ``Settings`` (``get_cache()`` uses this)."""
        from penny_cache.wiring import cache_from_settings

        return cache_from_settings(cls, settings)

    def call_backend(self, name: str, args: tuple[Any, ...]) -> Any:
        """Run one backend operation a flow yielded."""
        return getattr(self._backend, name)(*args)

    def _run(self, flow: Flow[_V]) -> _V:
        return drive(flow, self.call_backend)

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

    def lookup(self, key: str, user_id: str, decode: Callable[[bytes, str], _V]) -> _V | None:
        """Read and decode one entry, counting one hit or miss (shared with the drop-in)."""
        return self._run(self.lookup_flow(key, user_id, decode))

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

    def store_unversioned(self, key: str, payload: bytes) -> bool:
        """Plain SET with the TTL, for the drop-in's unversioned mappings."""
        return self._run(self.store_unversioned_flow(key, payload))

    def invalidate(self, user_id: str) -> bool:
        """Drop ``user_id``'s entry here, in Redis and in every near cache."""
        return self._run(self.invalidate_flow(user_id))

    def invalidate_key(self, key: str) -> bool:
        """Drop one entry by key and count an invalidation (the drop-in's entries)."""
        return self._run(self.invalidate_key_flow(key))

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
