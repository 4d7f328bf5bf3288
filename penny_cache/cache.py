"""``PersonalityCache``: the policy, and the only orchestrator of the cache tiers.

It knows no redis-py or SQLAlchemy type: bytes move through a ``CacheBackend``
(``RedisBackend`` in production, the same class over fakeredis in unit tests). Rules:

* a lookup is exactly one hit (near or Redis) or one miss, counted in memory and
  published by ``SharedCounters`` without an extra round trip;
* the near cache answers only while the invalidation listener vouches for it;
* every write is version-checked on the server; writes that change what others may hold
  publish an invalidation in the same script; a fill never replaces a newer version;
* an entry that does not decode is a miss: deleted and counted, never raised;
* a Redis failure is a miss (or a skipped write), counted and logged once per interval;
  a committed state Redis could not take is kept and delivered before it is trusted.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Mapping
from typing import Any, Protocol, Self, TypeVar

from penny_cache.codec import Entry, decode_state, encode_state
from penny_cache.config import Settings, positive_seconds, validate_jitter
from penny_cache.errors import CacheDecodeError, CacheError, InvalidStateError, StoreMismatchError
from penny_cache.keys import UNBOUND_SCOPE, KeySchema, encode_user_id
from penny_cache.near import NearCache, Ticket
from penny_cache.ratelog import RateLimitedLog
from penny_cache.state import PersonalityState
from penny_cache.stats import CounterBackend, SharedCounters

__all__ = ["CacheBackend", "Listener", "PersonalityCache", "stats_view"]

log = logging.getLogger("penny_cache")
_V = TypeVar("_V")
_LISTENER_COUNTERS = {
    "reconnect": "listener_reconnects",
    "gap": "sequence_gaps",
    "malformed": "malformed_messages",
}


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
    def try_lease(self, key: str, token: str, ttl_ms: int) -> bool: ...
    def delete(self, key: str) -> bool: ...
    def unlink_matching(self, pattern: str) -> int: ...
    def count_matching(self, pattern: str) -> int: ...
    def ping(self) -> bool: ...
    def close(self) -> None: ...


class Listener(Protocol):
    """What the policy needs from the invalidation listener."""

    trusted_until: float

    @property
    def running(self) -> bool: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def after_fork(self) -> None: ...


def stats_view(totals: Mapping[str, int], *, shared: bool) -> dict[str, Any]:
    """The ``get_stats()`` mapping: totals plus requests and a 0..1 hit rate."""
    requests = totals["hits"] + totals["misses"]
    view: dict[str, Any] = dict(totals)
    view["requests"] = requests
    view["hit_rate"] = totals["hits"] / requests if requests else 0.0
    view["shared"] = shared
    return view


class PersonalityCache:
    """A shared Redis cache of ``PersonalityState`` entries with coherent near caches."""

    def __init__(
        self,
        backend: CacheBackend,
        *,
        namespace: str = "penny",
        ttl: float = 300.0,
        ttl_jitter: float = 0.0,
        stats_flush_interval: float | None = 1.0,
        error_log_interval: float = 60.0,
        near: NearCache | None = None,
        listener: Callable[[NearCache, str, Callable[[str], None]], Listener] | None = None,
        lease_ttl: float = 0.25,
        rand: Callable[[], float] = random.random,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._backend = backend
        self._keys = KeySchema(namespace)
        self._ttl = positive_seconds(ttl, "ttl")
        self._jitter = validate_jitter(ttl_jitter, "ttl_jitter")
        self._lease_ms = int(positive_seconds(lease_ttl, "lease_ttl") * 1000)
        self._rand = rand
        self._monotonic = monotonic
        self._bind_lock = threading.Lock()
        if stats_flush_interval is not None:
            positive_seconds(stats_flush_interval, "stats_flush_interval")
        self._counters = SharedCounters(backend, self._keys, flush_interval=stats_flush_interval)
        self._errors = RateLimitedLog(log, error_log_interval, monotonic)
        self._pending: dict[str, PersonalityState] = {}
        self._pending_lock = threading.Lock()
        self._near = near
        self._listener = None
        if near is not None and listener is not None:
            self._listener = listener(near, self._keys.channel(), self._on_listener_event)
        _live.add(self)

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
    def keys(self) -> KeySchema:
        """The key schema in force (namespace and bound store scope)."""
        return self._keys

    @property
    def process_id(self) -> str:
        """This process's id in the shared counters hash."""
        return self._counters.process_id

    @property
    def near(self) -> NearCache | None:
        return self._near

    @property
    def near_trusted(self) -> bool:
        """True while the listener vouches for the near cache."""
        return self._listener is not None and self._monotonic() < self._listener.trusted_until

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
            if self._near is not None:
                self._near.flush()

    # -- reads -------------------------------------------------------------------------

    def get(self, user_id: str) -> PersonalityState | None:
        """The cached state, or None on a miss; counts exactly one hit or miss."""
        near = self._near
        if near is not None and user_id.__class__ is str:
            now = self._monotonic()
            listener = self._listener
            if listener is not None and now < listener.trusted_until:
                state = near.get(user_id, now)
                if state is not None:
                    self._counters.local.near_hit()
                    return state
        return self._get_shared(user_id)

    def _get_shared(self, user_id: str) -> PersonalityState | None:
        key = self._keys.state(user_id)
        ticket = self.ticket()
        if self._pending and not self._drain_pending(user_id):
            self._counters.incr("misses")  # Redis may still hold a version we replaced
            return None
        state = self.lookup(key, user_id, decode_state)
        if state is not None and self._near is not None and ticket is not None:
            self._near.put(state, ticket)
        return state

    def ticket(self) -> Ticket | None:
        """Take before a read whose result may go into the near cache (see ``NearCache``)."""
        if self._near is None:
            return None
        if self._listener is not None and not self._listener.running:
            self._listener.start()  # lazily, in the process that reads (fork-safe)
        return self._near.ticket()

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

    def peek(self, user_id: str) -> PersonalityState | None:
        """Read Redis without counting a lookup (a loader waiting on another's lease)."""
        try:
            payload = self._backend.get(self._keys.state(user_id))
            return decode_state(payload, user_id) if payload is not None else None
        except CacheError:
            return None

    # -- loads ---------------------------------------------------------------------------

    def acquire_lease(self, user_id: str) -> str | None:
        """A token if this caller should load ``user_id`` from SQL, None if another
        process holds the lease. Redis trouble grants a token: SQL must still answer."""
        token = uuid.uuid4().hex
        try:
            granted = self._backend.try_lease(self._keys.lease(user_id), token, self._lease_ms)
        except CacheError as exc:
            self._redis_failed("lease", exc)
            return token
        return token if granted else None

    @property
    def lease_ttl(self) -> float:
        return self._lease_ms / 1000

    def fill(self, state: PersonalityState, ticket: Ticket | None, lease: str = "") -> bool:
        """Cache a state just read from SQL, unless a newer version is already cached."""
        user_id = state.user_id
        try:
            written = self._backend.fill(
                self._entry(user_id, state), self._keys.lease(user_id), lease
            )
        except CacheError as exc:
            self._redis_failed("fill", exc)
            return False
        self._counters.incr("sets" if written else "fills_refused")
        if self._near is not None and ticket is not None:
            self._near.put(state, ticket)
        return written

    # -- writes --------------------------------------------------------------------------

    def set(self, user_id: str, state: PersonalityState) -> bool:
        """Write ``state`` unless Redis holds the same or a newer version, and drop older
        copies from every process's near cache. Raises ``InvalidStateError`` for a state
        of another user or over the size cap; a Redis failure returns False."""
        try:
            return self._publish_write(user_id, state, counter="sets")
        except CacheError as exc:
            self._redis_failed("set", exc)
            return False

    def write_through(self, state: PersonalityState) -> bool:
        """Publish a just-committed state (counts an invalidation); this process sees it
        at once. If Redis cannot take it, it is kept and written before this process
        trusts Redis for that user again (newest version per user wins)."""
        if self._near is not None:
            self._near.invalidate(state.user_id, state.version)
            self._near.put(state, self._near.ticket())
        try:
            return self._publish_write(state.user_id, state, counter="invalidations")
        except CacheError as exc:
            self._redis_failed("write-through", exc)
            with self._pending_lock:
                queued = self._pending.get(state.user_id)
                if queued is None or queued.version < state.version:
                    self._pending[state.user_id] = state
            return False

    def _publish_write(self, user_id: str, state: PersonalityState, *, counter: str) -> bool:
        written = self._backend.write_publish(
            self._entry(user_id, state),
            self._keys.sequence(),
            self._keys.channel(),
            encode_user_id(user_id),
        )
        self._counters.incr(counter if written else "fills_refused")
        return written

    def _entry(self, user_id: str, state: PersonalityState) -> Entry:
        if not isinstance(state, PersonalityState) or state.user_id != user_id:
            raise InvalidStateError(f"expected a PersonalityState of user {user_id!r}")
        key = self._keys.state(user_id)
        return Entry(key, state.version, encode_state(state), self._ttl_ms())

    def _drain_pending(self, user_id: str) -> bool:
        """Deliver queued write-throughs; False while ``user_id``'s is still undelivered."""
        with self._pending_lock:
            queued = list(self._pending.values())
        for state in queued:
            try:
                self._publish_write(state.user_id, state, counter="invalidations")
            except CacheError:
                break
            with self._pending_lock:
                if self._pending.get(state.user_id) is state:
                    del self._pending[state.user_id]
        return user_id not in self._pending

    @property
    def pending_writes(self) -> int:
        """Committed states not yet delivered to Redis (this process)."""
        return len(self._pending)

    def _ttl_ms(self) -> int:
        spread = 1.0 - self._jitter * self._rand()
        return max(1, int(self._ttl * spread * 1000))

    def store_unversioned(self, key: str, payload: bytes) -> bool:
        """Plain SET with the TTL, for the drop-in's unversioned mappings."""
        try:
            self._backend.set(key, payload, self._ttl_ms())
        except CacheError as exc:
            self._redis_failed("set", exc)
            return False
        self._counters.incr("sets")
        return True

    def invalidate(self, user_id: str) -> bool:
        """Drop ``user_id``'s entry here, in Redis and in every near cache; False if Redis
        could not be reached (other processes then learn it when their listener drops)."""
        key = self._keys.state(user_id)
        if self._near is not None:
            self._near.invalidate(user_id, None)
        try:
            self._backend.invalidate_publish(
                key, self._keys.sequence(), self._keys.channel(), encode_user_id(user_id)
            )
        except CacheError as exc:
            self._redis_failed("invalidate", exc)
            return False
        self._counters.incr("invalidations")
        return True

    def invalidate_key(self, key: str) -> bool:
        """Drop one entry by key and count an invalidation (the drop-in's entries)."""
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
        """Remove this namespace and store's entries (SCAN + UNLINK) and empty every near
        cache; counters stay."""
        if self._near is not None:
            self._near.flush()
        try:
            removed = self._backend.unlink_matching(pattern or self._keys.state_pattern())
            self._backend.publish_flush(self._keys.sequence(), self._keys.channel())
        except CacheError as exc:
            self._redis_failed("clear", exc)
            return 0
        return removed

    def size(self, pattern: str | None = None) -> int:
        """Entries cached for this namespace and store (a SCAN: for tools, not hot paths)."""
        try:
            return self._backend.count_matching(pattern or self._keys.state_pattern())
        except CacheError as exc:
            self._redis_failed("size", exc)
            return 0

    # -- statistics and lifecycle -------------------------------------------------------

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

    def _on_listener_event(self, event: str) -> None:
        counter = _LISTENER_COUNTERS.get(event)
        if counter is not None:
            self._counters.incr(counter)

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

    def after_fork(self) -> None:
        """Forget the parent's listener thread; the child starts its own on first read."""
        if self._listener is not None:
            self._listener.after_fork()

    def close(self) -> None:
        """Stop the listener, publish the final counters, close connections."""
        if self._listener is not None:
            self._listener.stop()
        self._counters.close()
        self._backend.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


_live: weakref.WeakSet[PersonalityCache] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for cache in list(_live):
        cache.after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
