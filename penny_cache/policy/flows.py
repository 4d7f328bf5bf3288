"""Flows: generators that yield typed operations, and the two drivers that run them.

A flow yields an operation of ``penny_cache.policy.ops`` (``payload = yield Get(key)``),
receives its result (or has a ``CacheError`` thrown in at that ``yield``), and returns its
answer; ``drive`` runs one with plain calls and ``adrive`` with ``await``, so the policy is
written once for both APIs. The transports' protocols (``SyncTransport``,
``AsyncTransport``) say what each API's backend must provide.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator, Mapping
from typing import Any, Protocol, TypeVar

from penny_cache.errors import CacheError
from penny_cache.observe.counters import CounterBackend
from penny_cache.policy.near import NearCache
from penny_cache.policy.ops import CacheOp, Op

__all__ = [
    "AsyncTransport",
    "Flow",
    "Listener",
    "ListenerFactory",
    "SyncTransport",
    "TrackerFlow",
    "adrive",
    "drive",
    "stats_view",
]

_T = TypeVar("_T")
_O = TypeVar("_O", bound=Op)
Flow = Generator[CacheOp, Any, _T]  # the cache policy's flows: Redis operations only
TrackerFlow = Generator[Op, Any, _T]  # the tracker's: also SqlLoad and Sleep


class SyncTransport(CounterBackend, Protocol):
    """What the sync API needs of Redis (``penny_cache.redis.backend.RedisBackend``): every
    ``CacheOp``, the counters' operations and the breaker's background probe."""

    def run(self, op: CacheOp) -> Any: ...
    def ping(self) -> bool: ...
    def close(self) -> None: ...


class AsyncTransport(Protocol):
    """What the asyncio API needs (``penny_cache.redis.backend.AsyncRedisBackend``): every
    ``CacheOp``, awaited; its counters go through a ``SyncTransport``."""

    async def run(self, op: CacheOp) -> Any: ...
    async def ping(self) -> bool: ...
    async def close(self) -> None: ...


def drive(flow: Generator[_O, Any, _T], call: Callable[[_O], Any]) -> _T:
    """Run a flow to its end with synchronous calls (``adrive`` is its asyncio twin)."""
    try:
        op = next(flow)
        while True:
            try:
                result = call(op)
            except CacheError as exc:
                op = flow.throw(exc)
            else:
                op = flow.send(result)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    finally:
        flow.close()


async def adrive(flow: Generator[_O, Any, _T], call: Callable[[_O], Awaitable[Any]]) -> _T:
    """Run a flow to its end, awaiting each operation (the twin of ``drive``)."""
    try:
        op = next(flow)
        while True:
            try:
                result = await call(op)
            except CacheError as exc:
                op = flow.throw(exc)
            else:
                op = flow.send(result)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    finally:
        flow.close()


class Listener(Protocol):
    """What the policy needs from the invalidation listener."""

    trusted_until: float

    @property
    def running(self) -> bool: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def after_fork(self) -> None: ...


# (near cache, channel, on_event, on_tick, on_applied(lag seconds)) -> listener
ListenerFactory = Callable[
    [NearCache, str, Callable[[str], None], Callable[[], None], Callable[[float], None]],
    Listener,
]


def stats_view(totals: Mapping[str, int], *, shared: bool) -> dict[str, Any]:
    """The ``get_stats()`` mapping: totals plus requests and a 0..1 hit rate."""
    requests = totals["hits"] + totals["misses"]
    view: dict[str, Any] = dict(totals)
    view["requests"] = requests
    view["hit_rate"] = totals["hits"] / requests if requests else 0.0
    view["shared"] = shared
    return view
