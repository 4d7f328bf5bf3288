"""The write side of the cache policy: write-through, set, invalidate, clear, and the
queue of write-throughs Redis could not take.

A mixin of ``CachePolicy`` (which owns the state declared here), kept apart so each
module stays one screenful of decisions.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from penny_cache.codec import Entry, encode_state
from penny_cache.errors import (
    CacheError,
    CacheTimeoutError,
    CacheUnavailableError,
    InvalidStateError,
)
from penny_cache.keys import KeySchema, encode_user_id
from penny_cache.observe.counters import SharedCounters
from penny_cache.observe.ratelog import RateLimitedLog
from penny_cache.policy.ahead import SqlState, VersionAhead
from penny_cache.policy.flows import Flow, TrackerFlow, drive
from penny_cache.policy.near import NearCache
from penny_cache.policy.ops import (
    Blocking,
    CacheOp,
    CountMatching,
    DropPublish,
    InvalidatePublish,
    Op,
    PublishFlush,
    Shared,
    Sleep,
    UnlinkMatching,
    WritePublish,
)
from penny_cache.policy.ports import SyncTransport
from penny_cache.policy.recovery import Recovery
from penny_cache.policy.strict import StrictWrites
from penny_cache.signing import Signer
from penny_cache.state import PersonalityState

__all__ = ["WritePolicy"]

_T = TypeVar("_T")


def _refused(exc: CacheError) -> bool:
    """Redis answered with an error (``redis.boundary`` translates an error reply, and
    only that, into a plain ``CacheError``): it is up, but would not take the write."""
    return type(exc) is CacheError


class WritePolicy(StrictWrites, VersionAhead):
    """Write flows; the attributes below are set by ``CachePolicy.__init__``."""

    _keys: KeySchema
    _near: NearCache | None
    _counters: SharedCounters
    _errors: RateLimitedLog
    _pending: dict[str, PersonalityState]
    _pending_lock: threading.Lock
    _sync_backend: SyncTransport
    _recovery: Recovery
    _ttl: float
    _jitter: float
    _rand: Callable[[], float]
    _signer: Signer

    # -- writes ---------------------------------------------------------------------------

    def set_flow(self, user_id: str, state: PersonalityState) -> Flow[bool]:
        """Write ``state`` unless Redis holds the same or a newer version, and drop older
        copies from every near cache. Bad states raise ``InvalidStateError``."""
        entry = self._entry(user_id, state)
        try:
            return (yield from self._publish_flow(entry, user_id, "sets"))
        except CacheError as exc:
            self._redis_failed("set", exc)
            return False

    def write_through_flow(self, state: PersonalityState, *, sealed: bool = False) -> Flow[bool]:
        """Publish a just-committed state; this process sees it at once. If Redis cannot
        take it, it is kept and written before this process trusts Redis for that user
        again (newest version per user wins). ``sealed``: a strict-mode tombstone of this
        version is in Redis and was announced, and must stay if this write fails. A
        tracker checks a refusal (``VersionAhead.checked_write_through_flow``)."""
        entry = self._entry(state.user_id, state)
        if self._near is not None:
            self._near.invalidate(state.user_id, state.version)
            self._near.put(state, self._near.ticket())
        try:
            written = yield from self._publish_flow(entry, state.user_id, "invalidations")
        except CacheError as exc:
            self._redis_failed("write-through", exc)
            if _refused(exc) and not sealed:
                yield from self._drop_flow(state.user_id)
            with self._pending_lock:
                queued = self._pending.get(state.user_id)
                if queued is None or queued.version < state.version:
                    self._pending[state.user_id] = state
            return False
        if self._pending:  # a newer write went through: an older queued one is moot
            with self._pending_lock:
                queued = self._pending.get(state.user_id)
                if queued is not None and queued.version <= state.version:
                    del self._pending[state.user_id]
        return written

    def _drop_flow(self, user_id: str) -> Flow[bool]:
        """Redis is up but refused the write-through (out of memory under noeviction, a
        sequence key that is not a number): without this, nothing is published and every
        other process keeps its near-cache copy of the replaced version up to the
        near-cache TTL. Unlink the entry and make every listener drop the user (it
        flushes), with a script that needs neither memory nor the sequence key. A
        strict-mode tombstone stays: the announcement went out before the commit."""
        op = DropPublish(self._keys.state(user_id), self._keys.channel(), encode_user_id(user_id))
        return bool((yield from self._quiet(op, default=False)))

    def deliver_pending(self) -> None:
        """Background delivery of queued write-throughs (listener and flusher threads):
        other processes must not wait for this process's next Redis read to learn of
        an update it committed while Redis was unreachable."""
        if self._pending:
            self._drive_in_background(self._drain_flow(None))

    def publish_committed(self, state: PersonalityState, sql_state: SqlState) -> bool:
        """Write a committed state through from a background thread (the outbox
        sweeper); True once Redis holds a version SQL committed. A refusal is not a
        delivery: it is checked against ``sql_state`` (``policy.ahead``), and an entry
        ahead of SQL is replaced."""
        flow = self.checked_write_through_flow(state, sql_state)
        return bool(self._drive_in_background(flow)) and not self.is_pending(state.user_id)

    def _drive_in_background(self, flow: TrackerFlow[Any]) -> Any:
        """Run a flow on the sync backend (a thread's work, also for an asyncio cache);
        its ``Blocking`` calls (SQL) are made here, in this thread."""
        return drive(flow, self._run_in_background)

    def _run_in_background(self, op: Op) -> Any:
        if isinstance(op, Blocking):
            return op.call()
        assert not isinstance(op, Sleep | Shared), "a cache flow sleeps and shares nothing"
        return self._sync_backend.run(op)

    def is_pending(self, user_id: str) -> bool:
        """Whether a write-through of ``user_id`` still waits for Redis."""
        return user_id in self._pending

    def _publish_flow(self, entry: Entry, user_id: str, counter: str) -> Flow[bool]:
        seq_key, channel = self._keys.sequence(), self._keys.channel()
        user = encode_user_id(user_id)
        written = yield WritePublish(entry, seq_key, channel, user)
        self._counters.incr(counter if written else "fills_refused")
        return bool(written)

    def _drain_flow(self, user_id: str | None) -> Flow[bool]:
        """Deliver queued write-throughs; False while ``user_id``'s is still undelivered."""
        yield from self.deliver_queued_flow()
        return user_id not in self._pending

    def deliver_queued_flow(self) -> Flow[bool]:
        """Try every queued write-through once; False only when Redis was out of reach.
        A write Redis refuses for its own key (an error reply: a permission, a bad key)
        stays queued, and its user reads SQL, but it no longer stops the ones after it:
        one permanently refused user used to keep every later user queued, and this
        process from ever trusting Redis again after a lost proof."""
        with self._pending_lock:
            queued = list(self._pending.values())
        for state in queued:
            try:
                entry = self._entry(state.user_id, state)
                yield from self._publish_flow(entry, state.user_id, "invalidations")
            except (CacheUnavailableError, CacheTimeoutError):
                return False
            except CacheError:
                continue
            with self._pending_lock:
                if self._pending.get(state.user_id) is state:
                    del self._pending[state.user_id]
        return True

    def _entry(self, user_id: str, state: PersonalityState) -> Entry:
        if not isinstance(state, PersonalityState):
            raise InvalidStateError(
                f"PersonalityCache caches PersonalityState values, not {type(state).__name__}; "
                "for arbitrary values (dicts, dataclasses, Structs) use the drop-in "
                "penny_cache.personality_state_cache.PersonalityStateCache"
            )
        if state.user_id != user_id:
            raise InvalidStateError(f"expected a PersonalityState of user {user_id!r}")
        spread = 1.0 - self._jitter * self._rand()
        ttl_ms = max(1, int(self._ttl * spread * 1000))
        key = self._keys.state(user_id)
        return Entry(key, state.version, self._signer.seal(key, encode_state(state)), ttl_ms)

    def invalidate_flow(self, user_id: str) -> Flow[bool]:
        """Drop ``user_id``'s entry here, in Redis and in every near cache; False if Redis
        could not be reached (other processes then learn it when their listener drops)."""
        key, seq_key, channel = (
            self._keys.state(user_id),
            self._keys.sequence(),
            self._keys.channel(),
        )
        if self._near is not None:
            self._near.invalidate(user_id, None)
        op = InvalidatePublish(key, seq_key, channel, encode_user_id(user_id))
        if not (yield from self._quiet(op, default=False)):
            return False
        self._counters.incr("invalidations")
        return True

    def clear_flow(self, pattern: str | None = None) -> Flow[int]:
        """Remove this namespace and store's entries (SCAN + UNLINK) and empty every near
        cache; counters stay."""
        if self._near is not None:
            self._near.flush()
        removed = yield from self._quiet(UnlinkMatching(pattern or self._keys.state_pattern()))
        yield from self._quiet(PublishFlush(self._keys.sequence(), self._keys.channel()))
        return int(removed or 0)

    def size_flow(self, pattern: str | None = None) -> Flow[int]:
        """Entries cached for this namespace and store (a SCAN: for tools, not hot paths)."""
        found = yield from self._quiet(CountMatching(pattern or self._keys.state_pattern()))
        return int(found or 0)

    def _quiet(self, op: CacheOp, default: Any = None) -> Flow[Any]:
        """An operation whose failure is counted and logged, and answers ``default``;
        one that returns nothing answers True."""
        try:
            result = yield op
        except CacheError as exc:
            self._redis_failed(type(op).__name__, exc)
            return default
        return True if result is None else result

    def _redis_failed(self, operation: str, exc: CacheError, *, count: bool = True) -> None:
        if count:
            self._counters.incr("redis_errors")
        if not self._sync_backend.healthy:  # the breaker opened: a lost proof
            self._recovery.pending = True
        self._errors.warning(
            f"redis:{type(exc).__name__}",
            f"redis {operation} failed, answering without the cache: {exc}",
        )
