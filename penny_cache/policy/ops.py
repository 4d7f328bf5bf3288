"""The typed operations a flow yields: one small record per thing the policy asks of Redis.

A flow says *what* it needs (``payload = yield Get(key)``); a transport in
``penny_cache.redis`` decides *how* (which command or Lua script, which keys). Each record
names its answer in its docstring. ``CacheOp`` is the closed union every transport must
handle: ``penny_cache.redis.commands.Commands.plan`` matches on it with ``assert_never``,
so mypy refuses a transport that forgets one. ``Blocking``, ``Sleep`` and ``Shared`` are the
tracker's own, answered by the tracker's driver, never by Redis.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from penny_cache.codec import Entry

__all__ = [
    "Blocking",
    "CacheOp",
    "CountIndexed",
    "CountMatching",
    "Delete",
    "DeleteIndexed",
    "Describe",
    "Described",
    "DropPublish",
    "Dropped",
    "Fill",
    "Get",
    "GetTicket",
    "Held",
    "Inspect",
    "InvalidatePublish",
    "ListMatching",
    "Op",
    "PublishFlush",
    "ReplacePublish",
    "Set",
    "SetTicketed",
    "Shared",
    "Sleep",
    "Tombstone",
    "TryLease",
    "UnlinkMatching",
    "WritePublish",
]


@dataclass(frozen=True, slots=True)
class Dropped:
    """The answer to a read whose entry Redis unlinked before sending it (see
    ``penny_cache.redis.lua``): ``reason`` is ``"oversized"`` (over
    ``signing.MAX_STORED_BYTES``), ``"wrong type"`` (a key that is not a string) or a
    lifetime no entry of ours has (``TryLease.max_entry_ttl_ms``). A miss,
    counted as a decode error."""

    reason: str


@dataclass(frozen=True, slots=True)
class Get:
    """Read one entry: its bytes, None, or ``Dropped``."""

    key: str


@dataclass(frozen=True, slots=True)
class Set:
    """Plain SET with a TTL (unversioned bytes; the drop-in uses ``SetTicketed``): None."""

    key: str
    payload: bytes
    ttl_ms: int


@dataclass(frozen=True, slots=True)
class Fill:
    """Version-checked write of a SQL read, releasing ``token``'s lease: True if written."""

    entry: Entry
    lease_key: str
    token: str = ""


@dataclass(frozen=True, slots=True)
class WritePublish:
    """Version-checked write-through plus its invalidation message: True if written."""

    entry: Entry
    seq_key: str
    channel: str
    encoded_user: str


@dataclass(frozen=True, slots=True)
class Held:
    """What an entry that refused a write holds: the version it claims, whether it is a
    strict-mode tombstone, and its bytes (what ``ReplacePublish`` compares)."""

    version: int
    tombstone: bool
    found: bytes


@dataclass(frozen=True, slots=True)
class Inspect:
    """What refused a write-through: ``Held``, or None when there is no entry or its
    version is unreadable (a write replaces such an entry)."""

    key: str


@dataclass(frozen=True, slots=True)
class ReplacePublish:
    """Replace an entry ahead of SQL with ``entry`` (SQL's version), only while the entry
    is still exactly ``found``, and tell every near cache to drop the user whatever its
    version. True if replaced."""

    entry: Entry
    found: bytes
    seq_key: str
    channel: str
    encoded_user: str


@dataclass(frozen=True, slots=True)
class InvalidatePublish:
    """Delete an entry and announce it: None."""

    key: str
    seq_key: str
    channel: str
    encoded_user: str


@dataclass(frozen=True, slots=True)
class Tombstone:
    """Strict mode, before the commit of ``entry.version``: make the user's entry unusable
    (a tombstone refusing every fill and write-through below that version, unless one of
    the same or a newer version is there) and announce the version, so every near cache
    drops older ones. ``entry.payload`` is the tombstone. True if written."""

    entry: Entry
    seq_key: str
    channel: str
    encoded_user: str


@dataclass(frozen=True, slots=True)
class DropPublish:
    """A write-through Redis refused (out of memory, a sequence key that is not a number):
    unlink the entry and announce the user with a sequence number every listener treats
    as a gap (so it flushes), touching neither memory nor the sequence key. None."""

    key: str
    channel: str
    encoded_user: str


@dataclass(frozen=True, slots=True)
class PublishFlush:
    """Tell every near cache to empty itself: None."""

    seq_key: str
    channel: str


@dataclass(frozen=True, slots=True)
class TryLease:
    """The entry's bytes if present (``Dropped`` if Redis unlinked it: no lease taken),
    else True when this caller may load (lease taken), False when another process holds
    the lease."""

    key: str
    lease_key: str
    token: str
    ttl_ms: int
    max_entry_ttl_ms: int = 0  # an entry with no TTL or a longer one: dropped (0: kept)


@dataclass(frozen=True, slots=True)
class Delete:
    """Drop one key: True if it existed."""

    key: str


@dataclass(frozen=True, slots=True)
class UnlinkMatching:
    """SCAN + UNLINK a pattern in batches (never KEYS): how many keys went."""

    pattern: str


@dataclass(frozen=True, slots=True)
class CountMatching:
    """SCAN-count a pattern (tools, not hot paths): how many keys match."""

    pattern: str


@dataclass(frozen=True, slots=True)
class ListMatching:
    """SCAN a pattern (admin tools, not hot paths): the matching keys, as text."""

    pattern: str


@dataclass(frozen=True, slots=True)
class Described:
    """One entry as an operator sees it: its stored bytes (None: absent; ``Dropped``: a
    key of another type) and its remaining lifetime in ms (-1: none, -2: absent)."""

    payload: bytes | Dropped | None
    ttl_ms: int


@dataclass(frozen=True, slots=True)
class Describe:
    """Read entries without changing them (no lease, no delete, no count), in one
    round trip: one ``Described`` per key, in order."""

    keys: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class GetTicket:
    """The drop-in's read: ``(bytes, "")`` on a hit; on a miss ``(None, ticket)`` (or
    ``(Dropped, ticket)`` when Redis unlinked a bad entry), the
    key's current fill ticket (``token`` becomes it when there is none; it lives
    ``ttl_ms``), and ``member`` leaves ``index_key`` (the entry is gone). The three keys
    share a slot."""

    key: str
    ticket_key: str
    index_key: str
    member: str
    token: str
    ttl_ms: int


@dataclass(frozen=True, slots=True)
class SetTicketed:
    """The drop-in's write: with ``ticket`` "" unconditionally, else only while that
    ticket is still the key's current one. A write stores ``payload`` with ``ttl_ms``,
    ends every outstanding ticket of the key and scores ``member`` in ``index_key`` by
    its expiry. True if written."""

    key: str
    ticket_key: str
    index_key: str
    member: str
    payload: bytes
    ttl_ms: int
    ticket: str


@dataclass(frozen=True, slots=True)
class DeleteIndexed:
    """The drop-in's invalidation: drop the entry, its outstanding tickets and its index
    member. True if the entry existed."""

    key: str
    ticket_key: str
    index_key: str
    member: str


@dataclass(frozen=True, slots=True)
class CountIndexed:
    """The drop-in's size: drop index members whose expiry has passed (server time) and
    count the rest."""

    index_key: str


@dataclass(frozen=True, slots=True)
class Blocking:
    """The tracker's own: a blocking call (SQL), made as it is by the sync tracker and in
    a worker thread by the asyncio one. Its answer is the call's."""

    call: Callable[[], Any]


@dataclass(frozen=True, slots=True)
class Shared:
    """The tracker's own: run ``flow`` once per process for every concurrent caller with
    this ``key`` (single-flight; see ``penny_cache.policy.flight``). Its answer is the
    flow's. ``wait=False`` never waits on another caller's flight."""

    key: str
    flow: Generator[Any, Any, Any]
    wait: bool = True  # False: lead a new flight, or run alone when one is running


@dataclass(frozen=True, slots=True)
class Sleep:
    """The tracker's own: wait ``seconds`` (a thread sleep, or ``asyncio.sleep``)."""

    seconds: float


CacheOp = (
    Get
    | Set
    | Fill
    | WritePublish
    | Tombstone
    | DropPublish
    | InvalidatePublish
    | PublishFlush
    | Inspect
    | ReplacePublish
    | TryLease
    | Delete
    | UnlinkMatching
    | CountMatching
    | ListMatching
    | Describe
    | GetTicket
    | SetTicketed
    | DeleteIndexed
    | CountIndexed
)
Op = CacheOp | Blocking | Sleep | Shared
