"""The asyncio twin of ``RedisBackend`` (``redis.asyncio``): same operations, awaited.

Error translation and the cooldown come from the same ``ErrorBoundary``, the Lua
sources and their argument order from the same helpers, so the two backends cannot
drift apart in what they send.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import redis
import redis.asyncio as aredis

from penny_cache.breaker import CircuitBreaker
from penny_cache.codec import Entry
from penny_cache.config import Settings
from penny_cache.errors import CacheError, CacheNotReplicatedError
from penny_cache.redis_backend import (
    _FILL,
    _INVALIDATE_PUBLISH,
    _LEASE,
    _PUBLISH_FLUSH,
    _SCAN_BATCH,
    _WRITE_PUBLISH,
    Script,
    entry_args,
)
from penny_cache.redis_boundary import ErrorBoundary, boundary_options
from penny_cache.redis_clients import async_client

__all__ = ["AsyncRedisBackend"]

_T = TypeVar("_T")
_MAX_CONNECTIONS = 64


class AsyncRedisBackend(ErrorBoundary):
    """Byte-level Redis operations for asyncio, with bounded time and translated errors."""

    def __init__(
        self,
        client: aredis.Redis,
        *,
        cooldown: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
        **boundary: Any,
    ) -> None:
        """As ``RedisBackend``."""
        super().__init__(cooldown, monotonic, **boundary)
        self._client = client

    @classmethod
    def from_url(
        cls, url: str, *, timeout: float = 0.1, cooldown: float = 1.0
    ) -> AsyncRedisBackend:
        """A backend whose connections open lazily, on the event loop that uses them."""
        return cls.from_settings(
            Settings(redis_url=url, redis_timeout=timeout, redis_cooldown=cooldown)
        )

    @classmethod
    def from_settings(
        cls, settings: Settings, *, breaker: CircuitBreaker | None = None
    ) -> AsyncRedisBackend:
        """As ``RedisBackend.from_settings``: the topology's client, WAIT behind Sentinel."""
        if settings.redis_topology == "cluster":
            from penny_cache.redis_cluster import AsyncClusterRedisBackend

            backend_class: type[AsyncRedisBackend] = AsyncClusterRedisBackend
        else:
            backend_class = cls
        return backend_class(
            async_client(settings, _MAX_CONNECTIONS),
            **boundary_options(settings, time.monotonic, breaker),
        )

    async def _replicated(self, result: _T) -> _T:
        """As ``RedisBackend._replicated``."""
        if self._wait_replicas:
            acked = await self._client.wait(self._wait_replicas, self._wait_timeout_ms)
            if acked < self._wait_replicas:
                raise CacheNotReplicatedError(
                    f"{acked} of {self._wait_replicas} replicas acknowledged within "
                    f"{self._wait_timeout_ms} ms"
                )
        return result

    async def _run(self, command: Callable[[], Awaitable[_T]]) -> _T:
        """As ``RedisBackend._run``: the breaker, one fast-failure retry, translation."""
        breaker = self._breaker
        if not breaker.healthy:
            self._admit()
            if self._pool_stale:
                self._pool_stale = False
                await self._client.connection_pool.disconnect(inuse_connections=False)
        started = self._monotonic()
        try:
            result = await command()
        except CacheError:
            raise
        except Exception as exc:  # anything redis-py raises (see ErrorBoundary._translate)
            if not self._may_retry(exc, started):
                raise self._translate(exc) from exc
            try:
                result = await command()
            except CacheError:
                raise
            except Exception as again:
                raise self._translate(again) from again
        if not breaker.healthy:
            breaker.success()
        return result

    async def _eval(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        client = self._client
        try:
            return await client.evalsha(script.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            await client.script_load(script.source)
            return await client.evalsha(script.sha, len(keys), *keys, *args)

    async def get(self, key: str) -> bytes | None:
        result = await self._run(lambda: self._client.get(key))
        return cast("bytes | None", result)

    async def set(self, key: str, payload: bytes, ttl_ms: int) -> None:
        await self._run(lambda: self._client.set(key, payload, px=ttl_ms))

    async def fill(self, entry: Entry, lease_key: str, token: str = "") -> bool:
        args = [*entry_args(entry), token]
        return bool(await self._run(lambda: self._eval(_FILL, [entry.key, lease_key], args)))

    async def write_publish(
        self, entry: Entry, seq_key: str, channel: str, encoded_user: str
    ) -> bool:
        args = [*entry_args(entry), channel, encoded_user]
        keys = [entry.key, seq_key]
        written, _seq = await self._run(lambda: self._eval_replicated(_WRITE_PUBLISH, keys, args))
        return bool(written)

    async def invalidate_publish(
        self, key: str, seq_key: str, channel: str, encoded_user: str
    ) -> None:
        args = [channel, encoded_user]
        await self._run(lambda: self._eval_replicated(_INVALIDATE_PUBLISH, [key, seq_key], args))

    async def publish_flush(self, seq_key: str, channel: str) -> None:
        await self._run(lambda: self._eval_replicated(_PUBLISH_FLUSH, [seq_key], [channel]))

    async def _eval_replicated(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        return await self._replicated(await self._eval(script, keys, args))

    async def try_lease(self, key: str, lease_key: str, token: str, ttl_ms: int) -> bytes | bool:
        keys, args = [key, lease_key], [token, ttl_ms]
        result = await self._run(lambda: self._eval(_LEASE, keys, args))
        return result if isinstance(result, bytes) else bool(result)

    async def delete(self, key: str) -> bool:
        return bool(await self._run(lambda: self._client.unlink(key)))

    async def unlink_matching(self, pattern: str) -> int:
        return await self._run(lambda: self._unlink_scanned(pattern))

    async def _unlink_scanned(self, pattern: str) -> int:
        removed = 0
        batch: list[Any] = []
        async for key in self._client.scan_iter(match=pattern, count=_SCAN_BATCH):
            batch.append(key)
            if len(batch) >= _SCAN_BATCH:
                removed += int(await self._client.unlink(*batch))
                batch.clear()
        if batch:
            removed += int(await self._client.unlink(*batch))
        return removed

    async def count_matching(self, pattern: str) -> int:
        async def count() -> int:
            return sum([1 async for _ in self._client.scan_iter(match=pattern, count=_SCAN_BATCH)])

        return await self._run(count)

    async def ping(self) -> bool:
        return bool(await self._run(self._client.ping))

    async def close(self) -> None:
        await self._client.aclose()
