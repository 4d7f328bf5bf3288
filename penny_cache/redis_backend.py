"""The sync Redis backend: byte-level operations on redis-py, behind the error boundary.

Every failure becomes a ``CacheError`` (``redis_boundary``); after repeated failures the
circuit breaker keeps calls off the network, so a dead or hanging Redis costs a few
bounded timeouts per cooldown, not one per request.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeVar, cast

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from penny_cache import scripts
from penny_cache.breaker import CircuitBreaker
from penny_cache.codec import Entry, version_prefix
from penny_cache.config import Settings
from penny_cache.errors import CacheError, CacheNotReplicatedError
from penny_cache.redis_boundary import ErrorBoundary, boundary_options
from penny_cache.redis_clients import SubscriberFactory, subscriber_factory, sync_client

__all__ = ["ALL_SCRIPTS", "RedisBackend", "Script", "entry_args"]

_SCAN_BATCH = 500


class Script:
    """A Lua source and its SHA1, for EVALSHA."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()


def entry_args(entry: Entry) -> tuple[int, bytes, int, str]:
    return entry.version, entry.payload, entry.ttl_ms, _PREFIX


_PREFIX = version_prefix()
_FILL = Script(scripts.FILL)
_WRITE_PUBLISH = Script(scripts.WRITE_PUBLISH)
_INVALIDATE_PUBLISH = Script(scripts.INVALIDATE_PUBLISH)
_PUBLISH_FLUSH = Script(scripts.PUBLISH_FLUSH)
_LEASE = Script(scripts.LEASE)
_RETIRE = Script(scripts.RETIRE_COUNTERS)
_SHARD_PUBLISH = Script(scripts.SHARD_PUBLISH)
ALL_SCRIPTS: Final = (
    _FILL,
    _WRITE_PUBLISH,
    _INVALIDATE_PUBLISH,
    _PUBLISH_FLUSH,
    _LEASE,
    _RETIRE,
    _SHARD_PUBLISH,
)
_T = TypeVar("_T")


class RedisBackend(ErrorBoundary):
    """Byte-level Redis operations with bounded time and translated errors."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        cooldown: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
        subscribers: SubscriberFactory | None = None,
        **boundary: Any,
    ) -> None:
        """``boundary``: deadline, breaker and the Sentinel options of ``ErrorBoundary``."""
        super().__init__(cooldown, monotonic, **boundary)
        self._client = client
        self._subscribers = subscribers

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        timeout: float = 0.1,
        cooldown: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> RedisBackend:
        """A backend whose connections open lazily, on first use."""
        settings = Settings(redis_url=url, redis_timeout=timeout, redis_cooldown=cooldown)
        return cls.from_settings(settings, monotonic=monotonic)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        breaker: CircuitBreaker | None = None,
    ) -> RedisBackend:
        """A backend for the configured topology (see ``boundary_options``)."""
        if settings.redis_topology == "cluster":
            from penny_cache.redis_cluster import ClusterRedisBackend

            backend_class: type[RedisBackend] = ClusterRedisBackend
        else:
            backend_class = cls
        return backend_class(
            sync_client(settings),
            subscribers=subscriber_factory(settings),
            **boundary_options(settings, monotonic, breaker),
        )

    def _reset_pool(self) -> None:
        self._pool_stale = False
        # idle connections only: yanking one another thread is using breaks redis-py
        # mid-call (found under failover: a TypeError from inside its socket check)
        self._client.connection_pool.disconnect(inuse_connections=False)

    def _replicated(self, result: _T) -> _T:
        """``result`` once ``wait_replicas`` replicas acknowledged this connection's writes."""
        if self._wait_replicas:
            acked = self._client.wait(self._wait_replicas, self._wait_timeout_ms)
            if acked < self._wait_replicas:
                raise CacheNotReplicatedError(
                    f"{acked} of {self._wait_replicas} replicas acknowledged within "
                    f"{self._wait_timeout_ms} ms"
                )
        return result

    def _enter(self) -> None:
        """Before a call while not healthy: the breaker may refuse; stale pool reset."""
        self._admit()
        if self._pool_stale:
            self._reset_pool()

    def _run(self, command: Callable[[], _T]) -> _T:
        breaker = self._breaker
        if not breaker.healthy:
            self._enter()
        started = self._monotonic()
        try:
            result = command()
        except CacheError:
            raise
        except Exception as exc:  # anything redis-py raises (see _translate)
            if not self._may_retry(exc, started):
                raise self._translate(exc) from exc
            try:
                result = command()
            except CacheError:
                raise
            except Exception as again:
                raise self._translate(again) from again
        if not breaker.healthy:
            breaker.success()
        return result

    def get(self, key: str) -> bytes | None:
        # The hot path: ``_run`` inlined (saves a closure and a call per Redis hit).
        breaker = self._breaker
        if not breaker.healthy:
            self._enter()
        started = self._monotonic()
        try:
            payload = self._client.get(key)
        except Exception as exc:  # anything redis-py raises (see _translate)
            if not self._may_retry(exc, started):
                raise self._translate(exc) from exc
            return cast("bytes | None", self._run(lambda: self._client.get(key)))
        if not breaker.healthy:
            breaker.success()
        return cast("bytes | None", payload)

    def read_counter(self, key: str) -> int:
        """An integer key's value (0 when absent)."""
        raw = self._run(lambda: self._client.get(key))
        return int(raw) if raw is not None else 0

    def set(self, key: str, payload: bytes, ttl_ms: int) -> None:
        self._run(lambda: self._client.set(key, payload, px=ttl_ms))

    def _eval(self, script: Script, keys: list[str], args: list[bytes | str | int]) -> Any:
        """EVALSHA, loading the script once if the server lost it (restart, FLUSHALL)."""
        client = self._client
        try:
            return client.evalsha(script.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            client.script_load(script.source)
            return client.evalsha(script.sha, len(keys), *keys, *args)

    def fill(self, entry: Entry, lease_key: str, token: str = "") -> bool:
        """Version-checked write of a SQL read; releases ``token``'s lease."""
        args: list[bytes | str | int] = [*entry_args(entry), token]
        return bool(self._run(lambda: self._eval(_FILL, [entry.key, lease_key], args)))

    def write_publish(self, entry: Entry, seq_key: str, channel: str, encoded_user: str) -> bool:
        """Version-checked write-through plus the invalidation message, in one trip."""
        args: list[bytes | str | int] = [*entry_args(entry), channel, encoded_user]
        written, _seq = self._run(
            lambda: self._replicated(self._eval(_WRITE_PUBLISH, [entry.key, seq_key], args))
        )
        return bool(written)

    def invalidate_publish(self, key: str, seq_key: str, channel: str, encoded_user: str) -> None:
        args: list[bytes | str | int] = [channel, encoded_user]
        self._run(lambda: self._replicated(self._eval(_INVALIDATE_PUBLISH, [key, seq_key], args)))

    def publish_flush(self, seq_key: str, channel: str) -> None:
        self._run(lambda: self._replicated(self._eval(_PUBLISH_FLUSH, [seq_key], [channel])))

    def try_lease(self, key: str, lease_key: str, token: str, ttl_ms: int) -> bytes | bool:
        """The entry if it appeared meanwhile, else True when this caller may load."""
        result = self._run(lambda: self._eval(_LEASE, [key, lease_key], [token, ttl_ms]))
        return result if isinstance(result, bytes) else bool(result)

    def subscriber(self, socket_timeout: float, channel: str = "") -> redis.Redis:
        """A fresh client for one pub/sub subscription: no retries, so a dropped
        connection surfaces to the listener instead of being papered over."""
        if self._subscribers is not None:
            return self._subscribers(channel, socket_timeout)
        kwargs = dict(self._client.connection_pool.connection_kwargs)
        kwargs.update(socket_timeout=socket_timeout, retry=Retry(NoBackoff(), 0))
        pool = redis.ConnectionPool(
            connection_class=self._client.connection_pool.connection_class, **kwargs
        )
        return redis.Redis(connection_pool=pool)

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

    def read_fields_many(self, keys: list[str]) -> list[dict[str, str]]:
        """HGETALL of each key, pipelined (one round trip per node)."""

        def read() -> list[Any]:
            pipe = self._client.pipeline(transaction=False)
            for key in keys:
                pipe.hgetall(key)
            return pipe.execute()

        raws = cast("list[dict[bytes, bytes]]", self._run(read))
        return [{k.decode(): v.decode() for k, v in raw.items()} for raw in raws]

    def retire_counters(
        self, key: str, marker: str, process_id: str, totals: Mapping[str, int]
    ) -> bool:
        args: list[bytes | str | int] = [process_id, 7 * 86400]
        for name, value in totals.items():
            args += [name, value]
        return bool(self._run(lambda: self._eval(_RETIRE, [key, marker], args)))

    def ping(self) -> bool:
        return bool(self._run(self._client.ping))

    def load_scripts(self) -> list[str]:
        """SCRIPT LOAD every script (the admin path when the service's ACL user may only
        EVALSHA); their SHA1s. On a Cluster, redis-py sends it to every primary."""

        def load() -> list[str]:
            return [str(self._client.script_load(script.source)) for script in ALL_SCRIPTS]

        return self._run(load)

    def revive(self, *, force: bool = False) -> bool:
        """The background probe: while the breaker is open and its cooldown has passed
        (or at once with ``force``: final counters, queued write-throughs), ping Redis
        and close the breaker if it answers. Requests never wait for this."""
        breaker = self._breaker
        if breaker.healthy:
            return True
        if not (force or breaker.probe_due()) and breaker.state == "open":
            return False
        if self._pool_stale:
            self._reset_pool()
        try:
            self._client.ping()
        except Exception:  # the background probe must not die of a client error
            breaker.failure()
            return False
        breaker.success()
        return True

    def close(self) -> None:
        self._client.close()
