"""``PersonalityCache``: the policy, and the only orchestrator of the cache tiers.

It knows no redis-py or SQLAlchemy type: bytes move through a ``CacheBackend``
(``RedisBackend`` in production, the same class over fakeredis in unit tests). Rules:

* a lookup is exactly one hit or one miss, counted in memory and published to Redis
  by ``SharedCounters`` without an extra round trip;
* an entry that does not decode is a miss: it is deleted and counted, never raised;
* a fill is version-checked on the server, so it never replaces a newer version;
* a Redis failure is a miss (or a skipped write), counted and logged once per interval.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol, Self, TypeVar

from penny_cache.codec import decode_state, encode_state, version_prefix
from penny_cache.config import Settings, positive_seconds, validate_jitter, validate_redis_url
from penny_cache.errors import (
    CacheDecodeError,
    CacheError,
    InvalidStateError,
    StoreMismatchError,
)
from penny_cache.keys import UNBOUND_SCOPE, KeySchema
from penny_cache.ratelog import RateLimitedLog
from penny_cache.state import PersonalityState
from penny_cache.stats import CounterBackend, SharedCounters

__all__ = ["CacheBackend", "PersonalityCache", "stats_view"]

log = logging.getLogger("penny_cache")
_V = TypeVar("_V")


class CacheBackend(CounterBackend, Protocol):
    """The byte-level operations the policy needs (``RedisBackend`` provides them)."""

    def get(self, key: str) -> bytes | None: ...
    def set(self, key: str, payload: bytes, ttl_ms: int) -> None: ...
    def set_if_newer(
        self, key: str, version: int, payload: bytes, ttl_ms: int, prefix: str
    ) -> bool: ...
    def delete(self, key: str) -> bool: ...
    def unlink_matching(self, pattern: str) -> int: ...
    def count_matching(self, pattern: str) -> int: ...
    def ping(self) -> bool: ...
    def close(self) -> None: ...


def stats_view(totals: Mapping[str, int], *, shared: bool) -> dict[str, Any]:
    """The ``get_stats()`` mapping: totals plus requests and a 0..1 hit rate."""
    requests = totals["hits"] + totals["misses"]
    view: dict[str, Any] = dict(totals)
    view["requests"] = requests
    view["hit_rate"] = totals["hits"] / requests if requests else 0.0
    view["shared"] = shared
    return view


class PersonalityCache:
    """A shared Redis cache of ``PersonalityState`` entries, one namespace per deployment."""

    def __init__(
        self,
        backend: CacheBackend,
        *,
        namespace: str = "penny",
        ttl: float = 300.0,
        ttl_jitter: float = 0.0,
        stats_flush_interval: float | None = 1.0,
        error_log_interval: float = 60.0,
        rand: Callable[[], float] = random.random,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._backend = backend
        self._keys = KeySchema(namespace)
        self._ttl = positive_seconds(ttl, "ttl")
        self._jitter = validate_jitter(ttl_jitter, "ttl_jitter")
        self._rand = rand
        self._prefix = version_prefix()
        self._bind_lock = threading.Lock()
        if stats_flush_interval is not None:
            positive_seconds(stats_flush_interval, "stats_flush_interval")
        self._counters = SharedCounters(backend, self._keys, flush_interval=stats_flush_interval)
        self._errors = RateLimitedLog(log, error_log_interval, monotonic)
        self._pending: dict[str, PersonalityState] = {}
        self._pending_lock = threading.Lock()

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        ttl: float = 300.0,
        namespace: str = "penny",
        ttl_jitter: float = 0.0,
        timeout: float = 0.1,
        cooldown: float = 1.0,
        stats_flush_interval: float | None = 1.0,
    ) -> PersonalityCache:
        """A cache on the Redis at ``url`` (connections open lazily, on first use)."""
        from penny_cache.redis_backend import RedisBackend

        validate_redis_url(url)
        backend = RedisBackend.from_url(
            url,
            timeout=positive_seconds(timeout, "timeout"),
            cooldown=positive_seconds(cooldown, "cooldown"),
        )
        return cls(
            backend,
            namespace=namespace,
            ttl=ttl,
            ttl_jitter=ttl_jitter,
            stats_flush_interval=stats_flush_interval,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> PersonalityCache:
        """A cache shaped by ``Settings`` (``get_cache()`` uses this)."""
        from penny_cache.redis_backend import RedisBackend

        backend = RedisBackend.from_url(
            settings.redis_url, timeout=settings.redis_timeout, cooldown=settings.redis_cooldown
        )
        return cls(
            backend,
            namespace=settings.namespace,
            ttl=settings.cache_ttl,
            ttl_jitter=settings.ttl_jitter,
            stats_flush_interval=settings.stats_flush_interval,
            error_log_interval=settings.error_log_interval,
        )

    @property
    def namespace(self) -> str:
        return self._keys.namespace

    @property
    def ttl(self) -> float:
        return self._ttl

    @property
    def scope(self) -> str:
        """The store identity this cache is bound to (``_`` until a tracker binds it)."""
        return self._keys.scope

    @property
    def process_id(self) -> str:
        """This process's id in the shared counters hash."""
        return self._counters.process_id

    def bind_store(self, identity: str) -> None:
        """Key all further entries by a database's identity, so stores never mix.

        A cache serves one database: binding it to a second raises ``StoreMismatchError``.
        """
        with self._bind_lock:
            if self._keys.scope == identity:
                return
            if self._keys.scope != UNBOUND_SCOPE:
                raise StoreMismatchError(
                    f"this cache serves database {self._keys.scope}, not {identity}; "
                    "give each database its own PersonalityCache (or namespace)"
                )
            self._keys = self._keys.with_scope(identity)

    @property
    def keys(self) -> KeySchema:
        """The key schema in force (namespace and bound store scope)."""
        return self._keys

    def get(self, user_id: str) -> PersonalityState | None:
        """The cached state, or None on a miss; counts exactly one hit or miss."""
        key = self._keys.state(user_id)
        if self._pending and not self._drain_pending(user_id):
            self._counters.incr("misses")  # Redis may still hold a version we replaced
            return None
        return self.lookup(key, user_id, decode_state)

    def lookup(self, key: str, user_id: str, decode: Callable[[bytes, str], _V]) -> _V | None:
        """Read and decode one entry, counting one hit or miss (shared with the drop-in)."""
        try:
            payload = self._backend.get(key)
        except CacheError as exc:
            self._redis_failed("get", exc)
            payload = None
        value = self._decode(key, user_id, payload, decode) if payload is not None else None
        self._counters.incr("hits" if value is not None else "misses")
        return value

    def _decode(
        self, key: str, user_id: str, payload: bytes, decode: Callable[[bytes, str], _V]
    ) -> _V | None:
        try:
            return decode(payload, user_id)
        except CacheDecodeError as exc:
            self._counters.incr("decode_errors")
            self._errors.warning("decode", f"dropping an undecodable cache entry: {exc}")
            self._delete(key)
            return None

    def store_unversioned(self, key: str, payload: bytes) -> bool:
        """Plain SET with the TTL, for the drop-in's unversioned mappings."""
        try:
            self._backend.set(key, payload, self._ttl_ms())
        except CacheError as exc:
            self._redis_failed("set", exc)
            return False
        self._counters.incr("sets")
        return True

    def set(self, user_id: str, state: PersonalityState) -> bool:
        """Fill ``user_id``'s entry unless Redis holds the same or a newer version.

        Returns True when written. Raises ``InvalidStateError`` for a state of another
        user or one over the size cap; Redis failures return False.
        """
        try:
            return self._write(user_id, state, counter="sets")
        except CacheError as exc:
            self._redis_failed("set", exc)
            return False

    def write_through(self, state: PersonalityState) -> bool:
        """Replace an older entry with a just-committed state (counts an invalidation).

        If Redis cannot take it, the state is kept and written before this process
        trusts Redis for that user again (newest version per user wins).
        """
        try:
            return self._write(state.user_id, state, counter="invalidations")
        except CacheError as exc:
            self._redis_failed("write-through", exc)
            with self._pending_lock:
                queued = self._pending.get(state.user_id)
                if queued is None or queued.version < state.version:
                    self._pending[state.user_id] = state
            return False

    def _drain_pending(self, user_id: str) -> bool:
        """Deliver queued write-throughs; False while ``user_id``'s is still undelivered."""
        with self._pending_lock:
            queued = list(self._pending.values())
        for state in queued:
            try:
                self._write(state.user_id, state, counter="invalidations")
            except CacheError:
                break
            with self._pending_lock:
                if self._pending.get(state.user_id) is state:
                    del self._pending[state.user_id]
        return user_id not in self._pending

    def _write(self, user_id: str, state: PersonalityState, *, counter: str) -> bool:
        """Version-checked write; raises ``CacheError`` when Redis fails."""
        if not isinstance(state, PersonalityState) or state.user_id != user_id:
            raise InvalidStateError(f"expected a PersonalityState of user {user_id!r}")
        key = self._keys.state(user_id)
        payload = encode_state(state)
        written = self._backend.set_if_newer(
            key, state.version, payload, self._ttl_ms(), self._prefix
        )
        self._counters.incr(counter if written else "fills_refused")
        return written

    @property
    def pending_writes(self) -> int:
        """Committed states not yet delivered to Redis (this process)."""
        return len(self._pending)

    def _ttl_ms(self) -> int:
        spread = 1.0 - self._jitter * self._rand()
        return max(1, int(self._ttl * spread * 1000))

    def invalidate(self, user_id: str) -> bool:
        """Drop ``user_id``'s entry; False if Redis could not be reached."""
        return self.invalidate_key(self._keys.state(user_id))

    def invalidate_key(self, key: str) -> bool:
        """Drop one entry by key and count an invalidation (shared with the drop-in)."""
        if not self._delete(key):
            return False
        self._counters.incr("invalidations")
        return True

    def _delete(self, key: str) -> bool:
        try:
            self._backend.delete(key)
        except CacheError as exc:
            self._redis_failed("delete", exc)
            return False
        return True

    def clear(self, pattern: str | None = None) -> int:
        """Remove this namespace and store's entries (SCAN + UNLINK); counters stay."""
        try:
            return self._backend.unlink_matching(pattern or self._keys.state_pattern())
        except CacheError as exc:
            self._redis_failed("clear", exc)
            return 0

    def size(self, pattern: str | None = None) -> int:
        """Entries cached for this namespace and store (a SCAN: for tools, not hot paths)."""
        try:
            return self._backend.count_matching(pattern or self._keys.state_pattern())
        except CacheError as exc:
            self._redis_failed("size", exc)
            return 0

    def get_stats(self) -> dict[str, Any]:
        """Totals of all processes on this namespace, with ``hit_rate`` in 0..1.

        When Redis cannot be read the view holds this process's counts and
        ``shared`` is False.
        """
        try:
            totals = self._counters.totals()
        except CacheError as exc:
            self._redis_failed("stats", exc, count=False)
            return stats_view(self._counters.local.snapshot(), shared=False)
        return stats_view(totals, shared=True)

    def local_stats(self) -> dict[str, Any]:
        """This process's own counts (what it has added to the shared totals)."""
        return stats_view(self._counters.local.snapshot(), shared=False)

    def flush_stats(self) -> bool:
        """Publish this process's counters now; False if Redis could not be written."""
        return self._counters.flush()

    def ping(self) -> bool:
        """True when Redis answers."""
        try:
            return self._backend.ping()
        except CacheError:
            return False

    def _redis_failed(self, operation: str, exc: CacheError, *, count: bool = True) -> None:
        if count:
            self._counters.incr("redis_errors")
        self._errors.warning(
            f"redis:{type(exc).__name__}",
            f"redis {operation} failed, answering without the cache: {exc}",
        )

    def close(self) -> None:
        """Publish the final counters, stop background work, close connections."""
        self._counters.close()
        self._backend.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
