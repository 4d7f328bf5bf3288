"""The error boundary every Redis backend shares: translation, retry rule, breaker.

Every redis-py exception (and anything else its client raises) becomes one of ours here,
and feeds the circuit breaker; the sync and asyncio backends differ only in ``await``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis
from redis.exceptions import RedisClusterException

from penny_cache.config import Settings
from penny_cache.errors import CacheError, CacheTimeoutError, CacheUnavailableError
from penny_cache.redis.breaker import CircuitBreaker
from penny_cache.redis.clients import FAST_FAILURE
from penny_cache.redis.commands import Plan, ResetPool

__all__ = ["ErrorBoundary", "boundary_options"]


def boundary_options(
    settings: Settings, monotonic: Callable[[], float], breaker: CircuitBreaker | None
) -> dict[str, Any]:
    """What the settings decide for a backend's boundary, the same for the sync and
    asyncio backends. Behind Sentinel a failure drops the pooled connections."""
    sentinel = settings.redis_topology == "sentinel"
    return {
        "cooldown": settings.redis_cooldown,
        "monotonic": monotonic,
        "deadline": settings.redis_timeout,
        "breaker": breaker
        or CircuitBreaker(settings.breaker_failures, settings.redis_cooldown, monotonic),
        "reset_pool_on_failure": sentinel,
    }


class ErrorBoundary:
    """Error translation, the retry rule and the circuit breaker, shared by the sync and
    asyncio backends (and by every backend of one cache: they share the breaker).

    A call has an overall deadline: socket connect and read timeouts are each
    ``RETRY_SHARE`` of it, and a call is retried once only after a connection failure
    that came back within ``FAST_FAILURE`` of the deadline (refused, reset: a restarted
    Redis or a stale pooled connection), so first attempt plus retry stay within the
    deadline. Timeouts are never retried. Every command we send is idempotent or harmless
    to repeat (reads, version-checked writes, absolute counter writes, invalidations that
    only drop more), so the one retry cannot do harm.
    """

    def __init__(
        self,
        cooldown: float,
        monotonic: Callable[[], float],
        *,
        deadline: float = 0.1,
        breaker: CircuitBreaker | None = None,
        reset_pool_on_failure: bool = False,
    ) -> None:
        self._monotonic = monotonic
        self._breaker = breaker or CircuitBreaker(3, cooldown, monotonic)
        self._fast_failure = deadline * FAST_FAILURE
        # Behind Sentinel a failure may mean a failover: pooled connections may lead to a
        # primary that is paused now and demoted later, still answering reads with old
        # data. After a failure, every connection is dropped and made anew (the pool asks
        # the sentinels where the primary is).
        self._reset_pool_on_failure = reset_pool_on_failure
        self._pool_stale = False

    @property
    def breaker(self) -> CircuitBreaker:
        return self._breaker

    @property
    def healthy(self) -> bool:
        """False while the breaker is open or half-open."""
        return self._breaker.healthy

    def guarded(self, plan: Callable[[], Plan]) -> Plan:
        """``plan()`` behind the breaker, with the one retry rule and translated errors:
        a plan itself, so both transports drive it their own way and the rule stays here."""
        breaker = self._breaker
        if not breaker.healthy:
            self._admit()
            if self._pool_stale:
                self._pool_stale = False
                yield ResetPool()
        started = self._monotonic()
        try:
            result = yield from plan()
        except CacheError:
            raise
        except Exception as exc:  # anything redis-py raises (see _translate)
            if not self._may_retry(exc, started):
                raise self._translate(exc) from exc
            try:
                result = yield from plan()
            except CacheError:
                raise
            except Exception as again:
                raise self._translate(again) from again
        if not breaker.healthy:
            breaker.success()
        return result

    def _admit(self) -> None:
        """Raise without touching the network while the breaker is open."""
        if not self._breaker.allow():
            raise CacheUnavailableError("redis circuit open: recent calls failed")

    def _may_retry(self, exc: Exception, started: float) -> bool:
        return (
            isinstance(exc, redis.ConnectionError)
            and self._monotonic() - started < self._fast_failure
        )

    def _translate(self, exc: Exception) -> CacheError:
        """The one place redis-py errors become ours (feeding the breaker)."""
        if isinstance(exc, RedisClusterException):  # no reachable node: not a RedisError
            self._trip()
            return CacheUnavailableError(f"redis cluster unreachable: {exc}")
        if isinstance(exc, redis.TimeoutError):
            self._trip()
            return CacheTimeoutError(f"redis timed out: {exc}")
        if isinstance(exc, redis.ConnectionError):
            self._trip()
            return CacheUnavailableError(f"redis unreachable: {exc}")
        if isinstance(exc, redis.RedisError):
            self._breaker.success()  # Redis answered (with an error): it is reachable
            return CacheError(f"redis error: {type(exc).__name__}: {exc}")
        # Not a redis-py error: the client failed inside (a race in its socket checks was
        # seen during a failover). A cache fault still never fails a request.
        self._trip()
        return CacheUnavailableError(f"redis client failed: {type(exc).__name__}: {exc}")

    def _trip(self) -> None:
        self._breaker.failure()
        self._pool_stale = self._reset_pool_on_failure
