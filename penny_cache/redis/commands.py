"""What each typed operation sends to Redis, written once for every transport.

``Commands.plan(op)`` is a generator (a *plan*) that yields client calls (``Call``: a
redis-py client method, same name and arguments on the sync and asyncio clients),
script runs (``Eval``) and key scans (``Scan``), receives each answer and returns the
operation's result. ``penny_cache.redis.backend`` drives a plan with plain calls or with
``await``; that is all a transport does. Behind Sentinel a plan that announces a change
also waits for a replica (``WAIT``), so a failover cannot bring back the replaced version.
With a value key, every message that names a user carries its tag, added here, where
each message's version is known (``penny_cache.signing.Signer.tag``).
``ClusterCommands`` changes only the publishing plans (sharded channels); the breaker and
the retry rule wrap every plan once, in ``ErrorBoundary.guarded``.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, Final, NamedTuple, assert_never

import redis

from penny_cache.codec import Entry, version_prefix
from penny_cache.errors import CacheNotReplicatedError
from penny_cache.keys import INVALIDATION_SHARDS, invalidation_shard, shard_channel, shard_sequence
from penny_cache.policy.ops import (
    CacheOp,
    CountIndexed,
    CountMatching,
    Delete,
    DeleteIndexed,
    Describe,
    Described,
    Dropped,
    DropPublish,
    Fill,
    Get,
    GetTicket,
    Held,
    Inspect,
    InvalidatePublish,
    ListMatching,
    PublishFlush,
    ReplacePublish,
    Set,
    SetTicketed,
    Tombstone,
    TryLease,
    UnlinkMatching,
    WritePublish,
)
from penny_cache.redis import scripts
from penny_cache.redis.scripts import Script
from penny_cache.signing import MAX_STORED_BYTES, UNSIGNED, Signer

__all__ = [
    "SCAN_BATCH",
    "Call",
    "ClusterCommands",
    "Commands",
    "Eval",
    "Pipeline",
    "Plan",
    "ResetPool",
    "Scan",
    "Step",
    "entry_args",
    "read_answer",
]

SCAN_BATCH: Final = 500
_PREFIX: Final = version_prefix()
_FLUSH: Final = "flush"
_ANY_VERSION: Final = "*"
_DROPPED: Final = {
    -1: Dropped("oversized"),
    -2: Dropped("wrong type"),
    -3: Dropped("no TTL, or a longer one than PENNY_CACHE_TTL"),
}


class Call(NamedTuple):
    """A redis-py client method and its arguments."""

    method: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = {}  # noqa: RUF012 - never mutated; NamedTuple defaults


class Eval(NamedTuple):
    """EVALSHA of a registered script (the transport reloads it on NOSCRIPT)."""

    script: Script
    keys: list[str]
    args: list[Any]


class Scan(NamedTuple):
    """Every key matching a pattern (SCAN, ``SCAN_BATCH`` at a time), as a list."""

    pattern: str


class Pipeline(NamedTuple):
    """Several calls in one round trip (no transaction): their answers, as a list.
    ``raise_on_error=False``: a command Redis refused (WRONGTYPE) answers its exception
    in place, so one bad key does not fail the others."""

    calls: tuple[Call, ...]
    raise_on_error: bool = True


class ResetPool(NamedTuple):
    """Drop the idle pooled connections (after a failure behind Sentinel)."""


Step = Call | Eval | Scan | Pipeline | ResetPool
Plan = Generator[Step, Any, Any]


def entry_args(entry: Entry) -> list[Any]:
    """ARGV[1..4] of the scripts that write entries (see ``scripts.FILL``)."""
    return [entry.version, entry.payload, entry.ttl_ms, _PREFIX]


def read_answer(raw: Any) -> Any:
    """A guarded read's answer (``lua.GUARD``) as the policy takes it: bytes, None, a
    ``Dropped``, or (from LEASE) the lease's True/False."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        return _DROPPED[raw] if raw < 0 else bool(raw)
    return raw


def _held(raw: Any) -> Held | None:
    if not raw:
        return None
    digits, tomb, found = raw
    return Held(int(digits), bool(tomb), found)


def _described(payload: Any, ttl_ms: Any) -> Described:
    """A pipelined GET and PTTL; a GET Redis refused (WRONGTYPE) is a key of another type."""
    if isinstance(payload, Exception):
        return Described(Dropped("wrong type"), int(ttl_ms))
    return Described(payload, int(ttl_ms))


class Commands:
    """The plans of a standalone or Sentinel-managed Redis."""

    def __init__(
        self, *, wait_replicas: int = 0, wait_timeout_ms: int = 100, signer: Signer = UNSIGNED
    ) -> None:
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self.signer = signer

    def plan(self, op: CacheOp) -> Plan:  # noqa: C901, PLR0911, PLR0912 - one case per op
        """The plan that carries out ``op``."""
        match op:
            case Get(key):
                return (yield from self.get(key))
            case Set(key, payload, ttl_ms):
                return (yield Call("set", (key, payload), {"px": ttl_ms}))
            case Fill(entry, lease_key, token):
                keys = [entry.key, lease_key]
                return bool((yield Eval(scripts.FILL, keys, [*entry_args(entry), token])))
            case WritePublish():
                return (yield from self.write_publish(op))
            case Tombstone():
                return (yield from self.tombstone(op))
            case DropPublish():
                return (yield from self.drop_publish(op))
            case InvalidatePublish():
                return (yield from self.invalidate_publish(op))
            case PublishFlush():
                return (yield from self.publish_flush(op))
            case TryLease(key, lease_key, token, ttl_ms, max_entry_ttl_ms):
                args = [token, ttl_ms, max_entry_ttl_ms or ""]
                return read_answer((yield Eval(scripts.LEASE, [key, lease_key], args)))
            case Inspect(key):
                return _held((yield Eval(scripts.INSPECT, [key], [_PREFIX])))
            case ReplacePublish():
                return (yield from self.replace_publish(op))
            case Delete(key):
                return bool((yield Call("unlink", (key,))))
            case UnlinkMatching(pattern):
                keys = yield Scan(pattern)
                removed = 0
                for start in range(0, len(keys), SCAN_BATCH):
                    removed += int((yield Call("unlink", tuple(keys[start : start + SCAN_BATCH]))))
                return removed
            case CountMatching(pattern):
                return len((yield Scan(pattern)))
            case ListMatching(pattern):
                return list(dict.fromkeys(_text(key) for key in (yield Scan(pattern))))
            case Describe(keys):
                calls = [Call(name, (key,)) for key in keys for name in ("get", "pttl")]
                answers = yield Pipeline(tuple(calls), raise_on_error=False)
                return [_described(*answers[k : k + 2]) for k in range(0, len(answers), 2)]
            case GetTicket() | SetTicketed() | DeleteIndexed() | CountIndexed():
                return (yield from self.drop_in(op))
            case _:
                assert_never(op)

    def drop_in(self, op: GetTicket | SetTicketed | DeleteIndexed | CountIndexed) -> Plan:
        """The drop-in's operations: one script each, its keys in one slot (one hash tag
        per namespace), so every topology runs the same plan."""
        match op:
            case GetTicket(key, ticket_key, index_key, member, token, ttl_ms):
                keys = [key, ticket_key, index_key]
                entry, ticket = yield Eval(scripts.GET_TICKET, keys, [member, token, ttl_ms])
                return read_answer(entry), _text(ticket)
            case SetTicketed(key, ticket_key, index_key, member, payload, ttl_ms, ticket):
                keys = [key, ticket_key, index_key]
                args = [member, payload, ttl_ms, ticket]
                return bool((yield Eval(scripts.SET_TICKETED, keys, args)))
            case DeleteIndexed(key, ticket_key, index_key, member):
                keys = [key, ticket_key, index_key]
                return bool((yield Eval(scripts.DELETE_INDEXED, keys, [member])))
            case CountIndexed(index_key):
                return int((yield Eval(scripts.COUNT_INDEXED, [index_key], [])))
            case _:
                assert_never(op)

    def get(self, key: str) -> Plan:
        """One plain command, as cheap as GET: ``GETRANGE`` sends at most one byte over
        the cap, so an oversized entry costs 64 KB once (then it is unlinked), never its
        whole size; a key of another type answers WRONGTYPE and is unlinked."""
        try:
            raw = yield Call("getrange", (key, 0, MAX_STORED_BYTES))
        except redis.ResponseError as exc:
            if not str(exc).startswith("WRONGTYPE"):
                raise
            yield Call("unlink", (key,))
            return _DROPPED[-2]
        if len(raw) > MAX_STORED_BYTES:
            yield Call("unlink", (key,))
            return _DROPPED[-1]
        return raw or None  # a missing key reads as b"" (an empty entry is no entry)

    def write_publish(self, op: WritePublish) -> Plan:
        user = self.signer.tag(str(op.entry.version), op.encoded_user)
        args = [*entry_args(op.entry), op.channel, user]
        written, _seq = yield Eval(scripts.WRITE_PUBLISH, [op.entry.key, op.seq_key], args)
        yield from self.replicated()
        return bool(written)

    def replace_publish(self, op: ReplacePublish) -> Plan:
        entry = op.entry
        user = self.signer.tag(_ANY_VERSION, op.encoded_user)
        args = [op.found, entry.payload, entry.ttl_ms, op.channel, user]
        written, _seq = yield Eval(scripts.REPLACE_PUBLISH, [entry.key, op.seq_key], args)
        yield from self.replicated()
        return bool(written)

    def tombstone(self, op: Tombstone) -> Plan:
        user = self.signer.tag(str(op.entry.version), op.encoded_user)
        args = [*entry_args(op.entry), op.channel, user]
        keys = [op.entry.key, op.seq_key]
        written, _seq = yield Eval(scripts.TOMBSTONE_PUBLISH, keys, args)
        yield from self.replicated()
        return bool(written)

    def drop_publish(self, op: DropPublish) -> Plan:
        user = self.signer.tag(_ANY_VERSION, op.encoded_user)
        yield Eval(scripts.DROP_PUBLISH, [op.key], [op.channel, user])
        yield from self.replicated()

    def invalidate_publish(self, op: InvalidatePublish) -> Plan:
        user = self.signer.tag(_ANY_VERSION, op.encoded_user)
        keys, args = [op.key, op.seq_key], [op.channel, user]
        yield Eval(scripts.INVALIDATE_PUBLISH, keys, args)
        yield from self.replicated()

    def publish_flush(self, op: PublishFlush) -> Plan:
        yield Eval(scripts.PUBLISH_FLUSH, [op.seq_key], [op.channel])
        yield from self.replicated()

    def replicated(self) -> Plan:
        """Behind Sentinel: done only once ``wait_replicas`` replicas acknowledged this
        connection's writes."""
        if self.wait_replicas:
            acked = yield Call("wait", (self.wait_replicas, self.wait_timeout_ms))
            if acked < self.wait_replicas:
                raise CacheNotReplicatedError(
                    f"{acked} of {self.wait_replicas} replicas acknowledged within "
                    f"{self.wait_timeout_ms} ms"
                )


def _text(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")


def _shard_publish(channel: str, encoded_user: str, version: str, signer: Signer) -> Eval:
    shard = invalidation_shard(encoded_user) if encoded_user else 0
    args = [shard_channel(channel, shard), version, signer.tag(version, encoded_user)]
    return Eval(scripts.SHARD_PUBLISH, [shard_sequence(channel, shard)], args)


class ClusterCommands(Commands):
    """Redis Cluster: a script may touch one slot only, and a plain ``PUBLISH`` reaches
    every node. So a write-through is two steps: the version-checked write in the entry's
    slot, then ``SPUBLISH`` on the user's invalidation shard (one of
    ``INVALIDATION_SHARDS`` channels, each with its own sequence number in its own slot),
    which reaches only the node that owns that channel. A crash between the two steps is
    covered like any undelivered write-through: the write is queued and retried whole."""

    def write_publish(self, op: WritePublish) -> Plan:
        # FILL without a lease token: the version compare-and-set alone. Its lease key must
        # be in the entry's slot; the entry key itself is (the token '' never matches).
        entry = op.entry
        written = yield Eval(scripts.FILL, [entry.key, entry.key], [*entry_args(entry), ""])
        yield _shard_publish(op.channel, op.encoded_user, str(entry.version), self.signer)
        return bool(written)

    def replace_publish(self, op: ReplacePublish) -> Plan:
        entry = op.entry
        args = [op.found, entry.payload, entry.ttl_ms]
        written = yield Eval(scripts.REPLACE, [entry.key], args)
        yield _shard_publish(op.channel, op.encoded_user, _ANY_VERSION, self.signer)
        return bool(written)

    def tombstone(self, op: Tombstone) -> Plan:
        entry = op.entry
        written = yield Eval(scripts.TOMBSTONE, [entry.key], entry_args(entry))
        yield _shard_publish(op.channel, op.encoded_user, str(entry.version), self.signer)
        return bool(written)

    def drop_publish(self, op: DropPublish) -> Plan:
        # no sequence key (it may be what Redis refuses): 0 makes every listener flush
        shard = invalidation_shard(op.encoded_user)
        message = f"0|{_ANY_VERSION}|0|{self.signer.tag(_ANY_VERSION, op.encoded_user)}"
        yield Call("unlink", (op.key,))
        yield Call("spublish", (shard_channel(op.channel, shard), message))

    def invalidate_publish(self, op: InvalidatePublish) -> Plan:
        yield Call("unlink", (op.key,))
        yield _shard_publish(op.channel, op.encoded_user, _ANY_VERSION, self.signer)

    def publish_flush(self, op: PublishFlush) -> Plan:
        for shard in range(INVALIDATION_SHARDS):
            args = [shard_channel(op.channel, shard), _FLUSH, ""]
            yield Eval(scripts.SHARD_PUBLISH, [shard_sequence(op.channel, shard)], args)
