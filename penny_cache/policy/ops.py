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
    "CountMatching",
    "Delete",
    "Fill",
    "Get",
    "InvalidatePublish",
    "Op",
    "PublishFlush",
    "Set",
    "Shared",
    "Sleep",
    "TryLease",
    "UnlinkMatching",
    "WritePublish",
]


@dataclass(frozen=True, slots=True)
class Get:
    """Read one entry: its bytes, or None."""

    key: str


@dataclass(frozen=True, slots=True)
class Set:
    """Plain SET with a TTL (the drop-in's unversioned mappings): None."""

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
class InvalidatePublish:
    """Delete an entry and announce it: None."""

    key: str
    seq_key: str
    channel: str
    encoded_user: str


@dataclass(frozen=True, slots=True)
class PublishFlush:
    """Tell every near cache to empty itself: None."""

    seq_key: str
    channel: str


@dataclass(frozen=True, slots=True)
class TryLease:
    """The entry's bytes if present, else True when this caller may load (lease taken),
    False when another process holds the lease."""

    key: str
    lease_key: str
    token: str
    ttl_ms: int


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
class Blocking:
    """The tracker's own: a blocking call (SQL), made as it is by the sync tracker and in
    a worker thread by the asyncio one. Its answer is the call's."""

    call: Callable[[], Any]


@dataclass(frozen=True, slots=True)
class Shared:
    """The tracker's own: run ``flow`` once per process for every concurrent caller with
    this ``key`` (single-flight; see ``penny_cache.policy.flight``). Its answer is the
    flow's."""

    key: str
    flow: Generator[Any, Any, Any]


@dataclass(frozen=True, slots=True)
class Sleep:
    """The tracker's own: wait ``seconds`` (a thread sleep, or ``asyncio.sleep``)."""

    seconds: float


CacheOp = (
    Get
    | Set
    | Fill
    | WritePublish
    | InvalidatePublish
    | PublishFlush
    | TryLease
    | Delete
    | UnlinkMatching
    | CountMatching
)
Op = CacheOp | Blocking | Sleep | Shared
