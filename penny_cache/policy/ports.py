"""What the policy needs from the outside, as protocols: the Redis transports of each
API and the invalidation listener. ``penny_cache.redis`` provides them; the policy
never imports it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from penny_cache.observe.counters import CounterBackend
from penny_cache.policy.near import NearCache
from penny_cache.policy.ops import CacheOp

__all__ = ["AsyncTransport", "Listener", "ListenerFactory", "SyncTransport"]


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
