"""Invalidation over Redis pub/sub: the message format and the listener that applies it.

Every write that changes what a near cache may hold (an update's write-through, ``set``,
``invalidate``, ``clear``) runs one Lua script that also takes the namespace's next
sequence number and publishes ``<seq>|<version>|<published us>|<user>`` (``*`` for "any
version", ``flush`` to empty every near cache; the publish time is Redis's clock, so the
receivers can measure the invalidation lag). The listener, one daemon thread per process,
applies each message to its near cache and keeps the near cache *trusted* only while
it can prove it has seen everything:

* a sequence number that is not the last one plus one (a lost message, a Redis restart
  that reset the counter) flushes the near cache;
* a dropped connection, or a reconnect made behind our back by redis-py (it resubscribes
  silently), flushes it and distrusts it until the new subscription is proven;
* trust lasts ``max_staleness`` after a PING whose PONG came back: Redis answers in
  order on the subscriber connection, so every message published before that PING was
  applied before the PONG was read. No PONG in time means reads go to Redis, or, once
  trust had been proven and then lapsed (a lost proof), to SQL;
* a PONG that ends a lapse proves nothing about updates acknowledged while Redis was out
  of reach (never published): trust returns only once ``recover`` has delivered them
  (this process's queued write-throughs, then the outbox's unconfirmed versions);
* a message that does not parse (or is forged) flushes, which is always safe; with a
  value key (``signing.Signer``), so does one whose tag is missing or does not verify;
* behind Sentinel, a subscription can be alive and deaf: on a primary that was paused,
  lost its role, and answers PINGs again. There each PING carries the primary's current
  sequence number (read through the request connections, which follow the sentinels); a
  PONG proves nothing unless every message up to that number has been applied, and one
  that finds a message missing drops the subscription.

On a Redis Cluster the messages travel on sharded channels (``SSUBSCRIBE``), one listener
per channel, each connected to the node that owns its slot; a ``ListenerGroup`` trusts
the near cache only while every one of them does. A slot that moves away unsubscribes
its channel (``sunsubscribe``): that listener flushes and reconnects to the new owner.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import redis
from redis.client import PubSub
from redis.exceptions import RedisClusterException

from penny_cache.errors import CacheError, CacheIntegrityError
from penny_cache.keys import decode_user_id
from penny_cache.observe.ratelog import RateLimitedLog
from penny_cache.policy.near import NearCache
from penny_cache.signing import UNSIGNED, Signer
from penny_cache.state import validate_user_id

__all__ = ["InvalidationListener", "ListenerGroup", "Message", "format_message", "parse_message"]

log = logging.getLogger("penny_cache.redis.listener")
_FIRST_BACKOFF: Final = 0.01
ANY_VERSION: Final = "*"
FLUSH: Final = "flush"


@dataclass(frozen=True, slots=True)
class Message:
    """One parsed invalidation: ``user_id`` None means flush everything."""

    seq: int
    user_id: str | None
    version: int | None
    published_us: int = 0


def format_message(seq: int, version: int | str, encoded_user: str, published_us: int = 0) -> bytes:
    """The wire form the Lua scripts build (kept here for tests and tools)."""
    return f"{seq}|{version}|{published_us}|{encoded_user}".encode()


def parse_message(data: bytes, signer: Signer = UNSIGNED) -> Message:
    """Parse a message, or raise ``ValueError`` for anything malformed or forged
    (``CacheIntegrityError`` for a user's message that ``signer`` does not verify)."""
    seq_text, version_text, published_text, user_text = data.decode("ascii").split("|", 3)
    if not seq_text.isdigit() or not published_text.isdigit():
        raise ValueError("bad sequence number or publish time")
    seq, published_us = int(seq_text), int(published_text)
    if version_text == FLUSH:
        if user_text:
            raise ValueError("flush carries no user")
        return Message(seq, None, None, published_us)
    user_id = validate_user_id(decode_user_id(signer.untag(version_text, user_text)))
    if version_text == ANY_VERSION:
        return Message(seq, user_id, None, published_us)
    if not version_text.isdigit():
        raise ValueError("bad version")
    return Message(seq, user_id, int(version_text), published_us)


class _TrackedPubSub(PubSub):
    """Counts (re)connections: redis-py resubscribes after a reconnect and tells nobody."""

    connects = 0

    def on_connect(self, connection: Any) -> None:
        self.connects += 1
        super().on_connect(connection)


class InvalidationListener:
    """Applies invalidations to a near cache and says when the near cache may be trusted."""

    def __init__(
        self,
        client_factory: Callable[[], redis.Redis],
        channel: str,
        near: NearCache,
        *,
        max_staleness: float = 0.5,
        monotonic: Callable[[], float] = time.monotonic,
        on_event: Callable[[str], None] = lambda _event: None,
        on_tick: Callable[[], None] = lambda: None,
        error_log_interval: float = 60.0,
        on_applied: Callable[[float], None] = lambda _lag: None,
        wall_clock: Callable[[], float] = time.time,
        sharded: bool = False,
        sequence_probe: Callable[[], int] | None = None,
        recover: Callable[[], bool] = lambda: True,
        signer: Signer = UNSIGNED,
    ) -> None:
        """``recover``: called when a PONG ends a lapse of trust (see ``_on_pong``)."""
        self._client_factory = client_factory
        self._signer = signer
        self._recover = recover
        self.proven = False  # trust was granted once: a lapse from here on is a lost proof
        self._channel = channel
        self._sharded = sharded
        self._probe = sequence_probe
        self._seq_floor = 0  # on subscribing: the sequence number already published
        self._ping_seq: dict[str, int | None] = {}
        self.on_trust: Callable[[], None] = lambda: None
        self._near = near
        self._max_staleness = max_staleness
        self._ping_every = max_staleness / 4
        self._monotonic = monotonic
        self._on_event = on_event
        self._on_tick = on_tick
        self._on_applied = on_applied
        self._wall_clock = wall_clock
        self._errors = RateLimitedLog(log, error_log_interval, monotonic)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pings: dict[str, float] = {}
        self._last_seq: int | None = None
        self._subscribed = False
        self.trusted_until = 0.0

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the daemon thread (idempotent)."""
        if self.running:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="penny-cache-listener", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        self.trusted_until = 0.0

    def after_fork(self) -> None:
        """A forked child has no thread and no subscription: start over, distrusted."""
        self._thread = None
        self._stop = threading.Event()
        self._distrust()
        self.proven = False

    def _distrust(self) -> None:
        self.trusted_until = 0.0
        self.on_trust()
        self._last_seq = None
        self._pings.clear()
        self._ping_seq.clear()
        self._near.flush()

    def _run(self) -> None:
        backoff = _FIRST_BACKOFF
        while not self._stop.is_set():
            self._subscribed = False
            try:
                self._listen()
            except (redis.RedisError, RedisClusterException, OSError, ValueError) as exc:
                self._errors.warning("lost", f"invalidation listener lost its subscription: {exc}")
            except Exception as exc:  # the thread must not die: a dead one trusts nothing again
                log.exception(
                    "invalidation listener failed (%s); restarting it", type(exc).__name__
                )
            self._distrust()
            if self._stop.is_set():
                return
            self._on_event("reconnect")
            backoff = _FIRST_BACKOFF if self._subscribed else min(backoff * 2, 1.0)
            self._stop.wait(backoff)

    def _listen(self) -> None:
        client = self._client_factory()
        pubsub = _TrackedPubSub(connection_pool=client.connection_pool)
        try:
            if self._sharded:
                pubsub.ssubscribe(self._channel)
            else:
                pubsub.subscribe(self._channel)
            self._pump(pubsub)
        finally:
            pubsub.close()
            client.close()

    def _pump(self, pubsub: _TrackedPubSub) -> None:
        last_ping = 0.0
        connects = None
        while not self._stop.is_set():
            now = self._monotonic()
            if now - last_ping >= self._ping_every:
                self._send_ping(pubsub, now)
                last_ping = now
            if self._overdue(now):
                raise ValueError("no pong within three staleness windows")
            message = pubsub.get_message(timeout=self._ping_every)
            if connects is None:
                connects = pubsub.connects
            elif pubsub.connects != connects:
                raise ValueError("redis-py reconnected the subscriber behind our back")
            if message is not None:
                self._handle(message)
            self._on_tick()

    def _send_ping(self, pubsub: _TrackedPubSub, now: float) -> None:
        token = f"penny-{now:.6f}"
        self._pings[token] = now
        if self._probe is not None:
            self._ping_seq[token] = self._probe_sequence()
        pubsub.ping(token)

    def _probe_sequence(self) -> int | None:
        """The primary's sequence number now, None when it cannot be read."""
        assert self._probe is not None
        try:
            return self._probe()
        except CacheError:
            return None

    def _overdue(self, now: float) -> bool:
        oldest = min(self._pings.values(), default=now)
        return now - oldest > 3 * self._max_staleness

    def _handle(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "pong":
            self._on_pong(message["data"])
        elif kind in {"message", "smessage"}:
            self._apply(message["data"])
        elif kind == "sunsubscribe":
            raise ValueError("the channel's slot moved to another node")
        elif kind in {"subscribe", "ssubscribe"}:
            # Only now is every later publish sure to reach us. Whatever the near cache
            # took in before may have missed one: start over (and refuse older tickets).
            self._near.flush()
            self._last_seq = None
            self._subscribed = True
            if self._probe is not None:
                floor = self._probe_sequence()
                if floor is None:
                    raise ValueError("cannot read the sequence number to start from")
                self._seq_floor = floor

    def _on_pong(self, data: bytes | str) -> None:
        token = data.decode() if isinstance(data, bytes) else data
        sent = self._pings.pop(token, None)
        if sent is None:
            return
        for older in [t for t, at in self._pings.items() if at < sent]:
            del self._pings[older]  # answered in order: older pings were lost with a reset
            self._ping_seq.pop(older, None)
        if self._probe is not None and not self._heard_up_to(self._ping_seq.pop(token, None)):
            return
        if self.proven and self._monotonic() >= self.trusted_until and not self._recover():
            # The proof is back, but it covers only what was published: updates
            # acknowledged while Redis was out of reach must reach it first.
            return
        self.trusted_until = max(self.trusted_until, sent + self._max_staleness)
        self.proven = True
        self.on_trust()

    def _heard_up_to(self, published: int | None) -> bool:
        """Whether every message the primary had published when the PING left has been
        applied; raises (drop the subscription) when one is missing."""
        if published is None:
            return False  # unknown: no proof, no trust (the near cache is not used)
        applied = max(self._last_seq or 0, self._seq_floor)
        if applied < published:
            raise ValueError(f"deaf subscription: {published} published, {applied} applied")
        return True

    def _apply(self, data: bytes) -> None:
        try:
            message = parse_message(data, self._signer)
        except (ValueError, UnicodeDecodeError, CacheIntegrityError) as exc:
            self._on_event("malformed")
            if isinstance(exc, CacheIntegrityError):
                self._on_event("forged")
            self._near.flush()
            return
        expected = None if self._last_seq is None else self._last_seq + 1
        self._last_seq = message.seq
        if expected is not None and message.seq != expected:
            self._on_event("gap")
            self._near.flush()
            return
        if message.user_id is None:
            self._near.flush()
        else:
            self._near.invalidate(message.user_id, message.version)
        self._on_event("applied")
        if message.published_us:
            self._on_applied(max(0.0, self._wall_clock() - message.published_us / 1e6))


class ListenerGroup:
    """Several listeners (one per sharded channel) acting as one: the near cache is
    trusted only until the earliest of their trust deadlines."""

    def __init__(self, members: list[InvalidationListener]) -> None:
        self._members = members
        self._lock = threading.Lock()
        self.trusted_until = 0.0
        for member in members:
            member.on_trust = self._refresh

    @property
    def proven(self) -> bool:
        return any(member.proven for member in self._members)

    def _refresh(self) -> None:
        with self._lock:  # a member's distrust must not be overwritten by a stale min
            self.trusted_until = min(member.trusted_until for member in self._members)

    @property
    def running(self) -> bool:
        return all(member.running for member in self._members)

    def start(self) -> None:
        for member in self._members:
            member.start()

    def stop(self) -> None:
        for member in self._members:
            member.stop()
        self.trusted_until = 0.0

    def after_fork(self) -> None:
        for member in self._members:
            member.after_fork()
        self.trusted_until = 0.0
