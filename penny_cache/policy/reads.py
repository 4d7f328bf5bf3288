"""The cache policy, written once for the sync and the asyncio API.

Every operation that needs Redis is a *flow*: a generator that yields a typed operation
(``penny_cache.policy.ops``) and receives its result (or has the ``CacheError`` thrown
in). ``PersonalityCache`` drives flows with plain calls, ``AsyncPersonalityCache``
with ``await``; the decisions in between (near cache, tickets, counting, version rules,
undelivered write-throughs) exist only here. The near-cache hit needs no I/O and never
enters a flow.
"""

from __future__ import annotations

import itertools
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from penny_cache.codec import decode_state
from penny_cache.config import positive_seconds, validate_jitter
from penny_cache.errors import CacheError, StoreMismatchError
from penny_cache.keys import UNBOUND_SCOPE, KeySchema, LogIds
from penny_cache.observe.counters import SharedCounters, stats_view
from penny_cache.observe.metrics import ProcessMetrics
from penny_cache.observe.ratelog import RateLimitedLog
from penny_cache.policy.dropin import DropInPolicy
from penny_cache.policy.entries import UNREADABLE
from penny_cache.policy.flows import Flow
from penny_cache.policy.near import NearCache, Ticket
from penny_cache.policy.ops import Delete, Dropped, Fill, Get, TryLease
from penny_cache.policy.ports import Listener, ListenerFactory, ListenerHooks, SyncTransport
from penny_cache.policy.recovery import Recovery
from penny_cache.policy.shadow import ShadowCheck
from penny_cache.signing import UNSIGNED, Signer
from penny_cache.state import PersonalityState

__all__ = ["CachePolicy"]

log = logging.getLogger("penny_cache")
_T = TypeVar("_T")
_V = TypeVar("_V")
_LISTENER_COUNTERS = {
    "reconnect": "listener_reconnects",
    "gap": "sequence_gaps",
    "malformed": "malformed_messages",
    "forged": "integrity_failures",
}


class CachePolicy(DropInPolicy):
    """State and decisions shared by the sync and async caches (the write side:
    ``writes.WritePolicy``; the drop-in's flows: ``dropin.DropInPolicy``)."""

    def __init__(
        self,
        sync_backend: SyncTransport,
        *,
        namespace: str = "penny",
        ttl: float = 300.0,
        ttl_jitter: float = 0.0,
        stats_flush_interval: float | None = 1.0,
        error_log_interval: float = 60.0,
        near: NearCache | None = None,
        listener: ListenerFactory | None = None,
        lease_ttl: float = 0.25,
        metrics: ProcessMetrics | None = None,
        signer: Signer = UNSIGNED,
        log_ids: LogIds | None = None,
        shadow_sample: float = 0.0,
        max_staleness: float = 0.5,
        rand: Callable[[], float] = random.random,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._keys = KeySchema(namespace)
        self._signer = signer
        self._ttl = positive_seconds(ttl, "ttl")
        self._jitter = validate_jitter(ttl_jitter, "ttl_jitter")
        self._lease_ms = int(positive_seconds(lease_ttl, "lease_ttl") * 1000)
        self._max_ttl_ms = int(self._ttl * 1000) + 1
        self._rand = rand
        self._monotonic = monotonic
        self._bind_lock = threading.Lock()
        self._identity: Callable[[], str] | None = None
        if stats_flush_interval is not None:
            positive_seconds(stats_flush_interval, "stats_flush_interval")
        self._sync_backend = sync_backend
        self._counters = SharedCounters(
            sync_backend,
            self._keys,
            flush_interval=stats_flush_interval,
            on_tick=self._counters_tick,
        )
        self.shadow = ShadowCheck(
            share=shadow_sample,
            recheck_after=max_staleness,
            redis_version=self.peek_version,
            count=self.count_event,
            monotonic=monotonic,
        )
        self._local_counters = self._counters.local  # reset in place after a fork
        self._errors = RateLimitedLog(log, error_log_interval, monotonic)
        self._log_ids = log_ids or LogIds.per_process()
        self._pending: dict[str, PersonalityState] = {}
        self._tokens = itertools.count()
        self._pending_lock = threading.Lock()
        self._near = near
        self.metrics = metrics
        self._recovery = Recovery()
        self._listener: Listener | None = None
        if near is not None and listener is not None:
            hooks = ListenerHooks(self._on_listener_event, self._tick, self._applied, self.recover)
            self._listener = listener(near, self._keys.channel(), hooks)

    # -- identity and state ---------------------------------------------------------------

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
    def signer(self) -> Signer:
        """How entries are signed and checked (``PENNY_VALUE_KEY``; tools read with it)."""
        return self._signer

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

    @property
    def lease_ttl(self) -> float:
        return self._lease_ms / 1000

    @property
    def pending_writes(self) -> int:
        """Committed states not yet delivered to Redis (this process)."""
        return len(self._pending)

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
                    "give each database its own cache (or namespace)"
                )
            self._keys = self._keys.with_scope(identity)
            if self._near is not None:
                self._near.flush()

    def serve_store(self, identity: Callable[[], str]) -> None:
        """Name the database this cache serves, as a function that reads its identity
        (``lambda: store.identity``): it is read once, before the first operation that
        needs a key, so a new process sees the entries others wrote from its first call.
        The first database named wins; a tracker of another raises at its first call."""
        with self._bind_lock:
            if self._identity is None and self._keys.scope == UNBOUND_SCOPE:
                self._identity = identity

    @property
    def scope_pending(self) -> bool:
        """True while a database is named but its identity not yet read."""
        return self._identity is not None and self._keys.scope == UNBOUND_SCOPE

    def resolve_scope(self) -> None:
        """Read the named database's identity and bind to it (touches the database once;
        the asyncio face runs this in a worker thread)."""
        identity = self._identity
        if identity is not None and self._keys.scope == UNBOUND_SCOPE:
            self.bind_store(identity())

    # -- reads ----------------------------------------------------------------------------

    def near_get(self, user_id: str, min_version: int = 0) -> PersonalityState | None:
        """The near-cache answer of at least ``min_version``, counted as a hit, or None:
        no I/O, the hot path."""
        near = self._near
        if near is not None and user_id.__class__ is str:
            now = self._monotonic()
            listener = self._listener
            if listener is not None and now < listener.trusted_until:
                state = near.get(user_id, now)
                if state is not None and state.version >= min_version:
                    self._local_counters.near_hit()
                    return state
        return None

    def count_lookup(self, *, hit: bool) -> None:
        """Count one lookup, as a hit or a miss (also for a caller that shared another's)."""
        (self._local_counters.hit if hit else self._local_counters.miss)()

    def last_known(self, user_id: str) -> PersonalityState | None:
        """This process's last known state of the user (fail-safe reads while SQL is
        down), counted as stale; None when there is none."""
        state = None if self._near is None else self._near.last_known(user_id)
        if state is not None:
            self._counters.incr("stale_served")
        return state

    def ticket(self) -> Ticket | None:
        """Take before a read whose result may go into the near cache (see ``NearCache``).

        Every read that reaches Redis takes one: background threads start here, lazily,
        in the process that reads (fork-safe).
        """
        self._counters.ensure_started()
        if self._near is None:
            return None
        if self._listener is not None and not self._listener.running:
            self._listener.start()
        return self._near.ticket()

    def redis_trusted(self) -> bool:
        """False after a lost proof until recovered (see ``policy.recovery``): Redis may
        still hold versions that updates acknowledged meanwhile replaced."""
        if self._recovery.pending:
            return False
        listener = self._listener
        return not (
            listener is not None and listener.proven and self._monotonic() >= listener.trusted_until
        )

    def recover(self) -> bool:
        """Make Redis trustworthy again after a lost proof (the listener's gate and the
        background tick call this); True when done."""
        return self._recovery.run(self._deliver_own)

    def _deliver_own(self) -> bool:
        """Recovered once Redis answers and every queued write-through was tried: one
        Redis keeps refusing stays queued, and only its user keeps reading SQL."""
        if not self._sync_backend.probe(force=True):
            return False
        return bool(self._drive_in_background(self.deliver_queued_flow()))

    def add_recovery_step(self, step: Callable[[], bool]) -> None:
        """Run ``step`` (a bound method, held weakly) on every recovery: a tracker's
        outbox sweep publishes the versions other processes could not deliver."""
        self._recovery.add_step(step)

    def _redis_usable_flow(self, user_id: str) -> Flow[bool]:
        """Whether Redis may answer for ``user_id`` now; if not, one miss is counted and
        SQL answers: after a lost proof until recovered, or while a write-through of
        this user is still undelivered (Redis may hold the version it replaced)."""
        usable = self.redis_trusted()
        if usable and self._pending:
            usable = yield from self._drain_flow(user_id)
        if not usable:
            self._local_counters.miss()
        return usable

    def get_flow(self, user_id: str) -> Flow[PersonalityState | None]:
        """The shared-tier read behind a near miss; counts one hit or miss."""
        key = self._keys.state(user_id)
        ticket = self.ticket()
        if not (yield from self._redis_usable_flow(user_id)):
            return None
        state = yield from self.lookup_flow(key, user_id, decode_state)
        if state is not None and self._near is not None and ticket is not None:
            self._near.put(state, ticket)
        return state

    def lookup_flow(
        self, key: str, user_id: str, decode: Callable[[bytes, str], _V]
    ) -> Flow[_V | None]:
        """Read and decode one entry, counting one hit or miss (shared with the drop-in)."""
        self._counters.ensure_started()
        try:
            payload = yield Get(key)
        except CacheError as exc:
            self._redis_failed("get", exc)
            payload = None
        value = None if payload is None else self.decode_entry(payload, user_id, decode, key)
        if value is UNREADABLE:
            yield from self._quiet(Delete(key))
            value = None
        self.count_lookup(hit=value is not None)
        return value

    def peek_flow(self, user_id: str) -> Flow[PersonalityState | None]:
        """Read Redis without counting a lookup (a loader waiting on another's lease)."""
        try:
            key = self._keys.state(user_id)
            payload = yield Get(key)
            if not isinstance(payload, bytes):
                return None
            return decode_state(self._signer.open(key, payload), user_id)
        except CacheError:
            return None

    def peek_version(self, user_id: str) -> int | None:
        """The version a worker would read from Redis now, uncounted (a background
        thread's call: the shadow check's re-read)."""
        state = self._drive_in_background(self.peek_flow(user_id))
        return None if state is None else int(state.version)

    def count_event(self, counter: str) -> None:
        """Add one to a shared counter (``observe.counters.COUNTERS``)."""
        self._counters.incr(counter)

    # -- loads ----------------------------------------------------------------------------

    def read_or_lease_flow(
        self, user_id: str, ticket: Ticket | None, min_version: int = 0
    ) -> Flow[tuple[PersonalityState | None, str | None]]:
        """The tracker's read behind a near miss, in one round trip: the entry (a hit), or
        this caller elected to load it (a miss and a lease token; ``""`` = load without
        one), or another process loading it (a miss and None: wait for its fill). An
        entry older than ``min_version`` is a miss, loaded without a lease."""
        key = self._keys.state(user_id)
        if not (yield from self._redis_usable_flow(user_id)):
            return None, ""
        token = f"{self.process_id}:{next(self._tokens)}"
        try:
            lease = TryLease(
                key, self._keys.lease(user_id), token, self._lease_ms, self._max_ttl_ms
            )
            result = yield lease
        except CacheError as exc:
            self._redis_failed("read-or-lease", exc)
            result = False
            token = ""
        state = None
        if isinstance(result, bytes | Dropped):
            state = self.decode_entry(result, user_id, decode_state, key)
            if state is UNREADABLE:
                yield from self._quiet(Delete(key))
                state = None
            elif state is not None and state.version < min_version:
                state = None  # older than the caller's own write: SQL answers
            result, token = False, ""  # no lease was taken: load without one
        self.count_lookup(hit=state is not None)
        if state is not None and self._near is not None and ticket is not None:
            self._near.put(state, ticket)
        return state, (token if result or not token else None)

    def fill_flow(self, state: PersonalityState, ticket: Ticket | None, lease: str) -> Flow[bool]:
        """Cache a state just read from SQL, unless a newer version is already cached."""
        entry = self._entry(state.user_id, state)
        try:
            written = yield Fill(entry, self._keys.lease(state.user_id), lease)
        except CacheError as exc:
            self._redis_failed("fill", exc)
            return False
        self._counters.incr("sets" if written else "fills_refused")
        if self._near is not None and ticket is not None:
            self._near.put(state, ticket)
        return bool(written)

    # -- statistics -----------------------------------------------------------------------

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

    @property
    def counting(self) -> bool:
        """False when Redis keeps refusing this process's counter flushes (readiness)."""
        return self._counters.counting

    def _on_listener_event(self, event: str) -> None:
        counter = _LISTENER_COUNTERS.get(event)
        if counter is not None:
            self._counters.incr(counter)

    def _tick(self) -> None:
        """The background threads' periodic work: probe an open breaker (so requests need
        not be the ones to find Redis back), deliver queued write-throughs, near-cache
        gauges."""
        if self._recovery.pending:
            self.recover()
        elif self._sync_backend.probe(force=bool(self._pending)):
            self.deliver_pending()
        if self.metrics is not None:
            self.metrics.observe_stats_flushes(self._counters.flush_failures_total)
        if self.metrics is not None and self._near is not None:
            self.metrics.observe_near(len(self._near), self._near.flushes)

    def _counters_tick(self) -> None:
        """The counters thread's tick: the shared work, then the shadow check's (SQL
        reads: never on the listener's tick, where they would delay invalidations)."""
        self._tick()
        self.shadow.run()

    def _applied(self, lag: float) -> None:
        if self.metrics is not None:
            self.metrics.invalidations_received.inc()
            self.metrics.invalidation_lag.observe(lag)

    def after_fork(self) -> None:
        """Forget the parent's listener thread; the child starts its own on first read."""
        self._recovery.after_fork()
        self.shadow.after_fork()
        if self._listener is not None:
            self._listener.after_fork()

    def _close_policy(self) -> None:
        if self._listener is not None:
            self._listener.stop()
        self._counters.close()
