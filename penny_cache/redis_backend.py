"""The only module that talks to redis-py: it moves bytes and translates errors.

Every redis-py exception becomes a ``CacheError`` here. After a connection failure or a
timeout the backend refuses calls for ``cooldown`` seconds without touching the network,
so a dead or hanging Redis costs one timeout per cooldown, not one per request.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from penny_cache import scripts
from penny_cache.errors import CacheError, CacheTimeoutError, CacheUnavailableError

__all__ = ["RedisBackend"]

_SCAN_BATCH = 500
_T = TypeVar("_T")


class RedisBackend:
    """Byte-level Redis operations with bounded time and translated errors."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        cooldown: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._cooldown = cooldown
        self._monotonic = monotonic
        self._down_until = 0.0
        self._lock = threading.Lock()
        self._set_if_newer = client.register_script(scripts.SET_IF_NEWER)
        self._retire = client.register_script(scripts.RETIRE_COUNTERS)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        timeout: float = 0.1,
        cooldown: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> RedisBackend:
        """Connect lazily with short timeouts and one retry on a dropped connection only.

        Every command we send is idempotent (plain reads, version-checked writes,
        cumulative counter writes), so the single reconnect-retry cannot double-apply.
        """
        client = redis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
            health_check_interval=0,
        )
        return cls(client, cooldown=cooldown, monotonic=monotonic)

    def _check_cooldown(self) -> None:
        if self._down_until and self._monotonic() < self._down_until:
            raise CacheUnavailableError("redis is cooling down after a failure")

    def _translate(self, exc: redis.RedisError) -> CacheError:
        """The one place redis-py errors become ours (tripping the cooldown if needed)."""
        if isinstance(exc, redis.TimeoutError):
            self._trip()
            return CacheTimeoutError(f"redis timed out: {exc}")
        if isinstance(exc, redis.ConnectionError):
            self._trip()
            return CacheUnavailableError(f"redis unreachable: {exc}")
        return CacheError(f"redis error: {type(exc).__name__}: {exc}")

    def _run(self, command: Callable[[], _T]) -> _T:
        self._check_cooldown()
        try:
            result = command()
        except redis.RedisError as exc:
            raise self._translate(exc) from exc
        self._down_until = 0.0
        return result

    def _trip(self) -> None:
        with self._lock:
            self._down_until = self._monotonic() + self._cooldown

    @property
    def available(self) -> bool:
        """False while cooling down after a failure."""
        return not self._down_until or self._monotonic() >= self._down_until

    def get(self, key: str) -> bytes | None:
        # The hot path: inlined rather than through _run (saves a call per cache hit).
        if self._down_until:
            self._check_cooldown()
        try:
            payload = self._client.get(key)
        except redis.RedisError as exc:
            raise self._translate(exc) from exc
        self._down_until = 0.0
        return cast("bytes | None", payload)

    def set(self, key: str, payload: bytes, ttl_ms: int) -> None:
        self._run(lambda: self._client.set(key, payload, px=ttl_ms))

    def set_if_newer(
        self, key: str, version: int, payload: bytes, ttl_ms: int, prefix: str
    ) -> bool:
        args: list[bytes | str | int] = [version, payload, ttl_ms, prefix]
        return bool(self._run(lambda: self._set_if_newer(keys=[key], args=args)))

    def delete(self, key: str) -> bool:
        return bool(self._run(lambda: self._client.unlink(key)))

    def unlink_matching(self, pattern: str) -> int:
        """SCAN + UNLINK in batches: never KEYS, never FLUSHDB."""
        return self._run(lambda: self._unlink_scanned(pattern))

    def _unlink_scanned(self, pattern: str) -> int:
        removed = 0
        batch: list[Any] = []
        for key in self._client.scan_iter(match=pattern, count=_SCAN_BATCH):
            batch.append(key)
            if len(batch) >= _SCAN_BATCH:
                removed += int(self._client.unlink(*batch))
                batch.clear()
        if batch:
            removed += int(self._client.unlink(*batch))
        return removed

    def count_matching(self, pattern: str) -> int:
        return self._run(
            lambda: sum(1 for _ in self._client.scan_iter(match=pattern, count=_SCAN_BATCH))
        )

    def write_fields(self, key: str, fields: Mapping[str, int | float | str]) -> None:
        self._run(lambda: self._client.hset(key, mapping=cast("Mapping[Any, Any]", fields)))

    def read_fields(self, key: str) -> dict[str, str]:
        raw = cast("dict[bytes, bytes]", self._run(lambda: self._client.hgetall(key)))
        return {k.decode(): v.decode() for k, v in raw.items()}

    def retire_counters(
        self, key: str, marker: str, process_id: str, totals: Mapping[str, int]
    ) -> bool:
        args: list[str | int] = [process_id, 7 * 86400]
        for name, value in totals.items():
            args += [name, value]
        return bool(self._run(lambda: self._retire(keys=[key, marker], args=args)))

    def ping(self) -> bool:
        return bool(self._run(self._client.ping))

    def close(self) -> None:
        self._client.close()
