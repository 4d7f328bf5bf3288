"""What the policy needs from the outside, as protocols: the Redis transports of each
API and the invalidation listener. ``penny_cache.redis`` provides them; the policy
never imports it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from penny_cache.observe.counters import CounterBackend
from penny_cache.policy.near import NearCache
from penny_cache.policy.ops import CacheOp

__all__ = ["AsyncTransport", "Listener", "ListenerFactory", "ListenerHooks", "SyncTransport"]


class SyncTransport(CounterBackend, Protocol):
    """What the sync API needs of Redis (``penny_cache.redis.backend.RedisBackend``): every
    ``CacheOp``, the counters' operations and the breaker's background probe."""

    def run(self, op: CacheOp) -> Any: ...
    def ping(self) -> bool: ...
    def close(self) -> None: ...

    @property
    def healthy(self) -> bool:
        """False while the circuit breaker (shared by both APIs' transports) is not closed."""


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
    def proven(self) -> bool:
        """Trust was granted once: a lapse since then is a lost proof."""

    @property
    def running(self) -> bool: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def after_fork(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ListenerHooks:
    """What a listener calls back in the policy."""

    on_event: Callable[[str], None]  # "reconnect", "gap", "malformed", "applied"
    on_tick: Callable[[], None]  # the periodic work (probe, queued write-throughs)
    on_applied: Callable[[float], None]  # an invalidation applied, with its lag (s)
    recover: Callable[[], bool]  # before trusting again after a lost proof


# (near cache, channel, hooks) -> listener
ListenerFactory = Callable[[NearCache, str, ListenerHooks], Listener]
