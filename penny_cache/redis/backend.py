"""The Redis transports: ``RedisBackend`` (redis-py) and ``AsyncRedisBackend``
(``redis.asyncio``), side by side.

A transport runs the plans of ``penny_cache.redis.commands`` (what to send is written
there, once) behind the error boundary: every failure becomes a ``CacheError``
(``penny_cache.redis.boundary``), and after repeated failures the circuit breaker keeps
calls off the network, so a dead or hanging Redis costs a few bounded timeouts per
cooldown, not one per request. The two classes differ only in ``await``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar, cast

import redis
import redis.asyncio as aredis
from redis.backoff import NoBackoff
from redis.retry import Retry

from penny_cache.config import Settings
from penny_cache.errors import CacheError
from penny_cache.policy.ops import CacheOp, Get
from penny_cache.redis import scripts
from penny_cache.redis.boundary import ErrorBoundary, boundary_options
from penny_cache.redis.clients import (
    ASYNC_MAX_CONNECTIONS,
    SubscriberFactory,
    async_client,
    sync_client,
)
from penny_cache.redis.commands import SCAN_BATCH, Call, Commands, Eval, Plan, Scan
from penny_cache.redis.scripts import Script

__all__ = ["AsyncRedisBackend", "RedisBackend"]

_T = TypeVar("_T")


class RedisBackend(ErrorBoundary):
    """Runs operations on a redis-py client with bounded time and translated errors."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        commands: Commands | None = None,
        cooldown: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
        subscribers: SubscriberFactory | None = None,
        **boundary: Any,
    ) -> None:
        """``boundary``: deadline, breaker and pool options of ``ErrorBoundary``;
        ``commands``: what to send (``ClusterCommands`` on a Cluster)."""
        super().__init__(cooldown, monotonic, **boundary)
        self._client = client
        self._commands = commands or Commands()
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
        """A standalone backend whose connections open lazily, on first use."""
        settings = Settings(redis_url=url, redis_timeout=timeout, redis_cooldown=cooldown)
        options = boundary_options(settings, monotonic, None)
        return cls(sync_client(settings), **options)

    def run(self, op: CacheOp) -> Any:
        """Carry out one operation a flow yielded."""
        if op.__class__ is Get:  # the hot path: no plan, no closure
            return self.get(op.key)
        return self._run(lambda: self._drive(self._commands.plan(op)))

    def _drive(self, plan: Plan) -> Any:
        try:
            step = next(plan)
            while True:
                step = plan.send(self._send(step))
        except StopIteration as done:
            return done.value

    def _send(self, step: Call | Eval | Scan) -> Any:
        client = self._client
        if isinstance(step, Call):
            return getattr(client, step.method)(*step.args, **step.kwargs)
        if isinstance(step, Scan):
            return list(client.scan_iter(match=step.pattern, count=SCAN_BATCH))
        return self._eval(step.script, step.keys, step.args)

    def _eval(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA, loading the script once if the server lost it (restart, FLUSHALL)."""
        try:
            return self._client.evalsha(script.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            self._client.script_load(script.source)
            return self._client.evalsha(script.sha, len(keys), *keys, *args)

    def _reset_pool(self) -> None:
        self._pool_stale = False
        # idle connections only: yanking one another thread is using breaks redis-py
        # mid-call (found under failover: a TypeError from inside its socket check)
        self._client.connection_pool.disconnect(inuse_connections=False)

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
        except Exception as exc:  # anything redis-py raises (see ErrorBoundary._translate)
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
        """``run(Get(key))`` with ``_run`` inlined: saves a closure and a call per hit."""
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

    # -- the counters', listener's and tools' operations (sync only) ------------------------

    def read_counter(self, key: str) -> int:
        """An integer key's value (0 when absent)."""
        raw = self._run(lambda: self._client.get(key))
        return int(raw) if raw is not None else 0

    def write_fields(self, key: str, fields: Mapping[str, int | float | str]) -> None:
        self._run(lambda: self._client.hset(key, mapping=cast("Mapping[Any, Any]", fields)))

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
        args: list[Any] = [process_id, 7 * 86400]
        for name, value in totals.items():
            args += [name, value]
        return bool(self._run(lambda: self._eval(scripts.RETIRE_COUNTERS, [key, marker], args)))

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

    def ping(self) -> bool:
        return bool(self._run(self._client.ping))

    def load_scripts(self) -> list[str]:
        """SCRIPT LOAD every script (the admin path when the service's ACL user may only
        EVALSHA); their SHA1s. On a Cluster, redis-py sends it to every primary."""

        def load() -> list[str]:
            return [str(self._client.script_load(s.source)) for s in scripts.ALL_SCRIPTS]

        return self._run(load)

    def probe(self, *, force: bool = False) -> bool:
        """The breaker's background probe: while it is open and its cooldown has passed
        (or at once with ``force``: final counters, queued write-throughs), ping Redis
        and close the breaker if it answers. Requests never wait for this. True when
        the breaker is closed (Redis may be used)."""
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


class AsyncRedisBackend(ErrorBoundary):
    """``RedisBackend`` for asyncio: the same plans, awaited."""

    def __init__(
        self,
        client: aredis.Redis,
        *,
        commands: Commands | None = None,
        cooldown: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
        **boundary: Any,
    ) -> None:
        """As ``RedisBackend``."""
        super().__init__(cooldown, monotonic, **boundary)
        self._client = client
        self._commands = commands or Commands()

    @classmethod
    def from_url(
        cls, url: str, *, timeout: float = 0.1, cooldown: float = 1.0
    ) -> AsyncRedisBackend:
        """A standalone backend whose connections open lazily, on the loop that uses them."""
        settings = Settings(redis_url=url, redis_timeout=timeout, redis_cooldown=cooldown)
        options = boundary_options(settings, time.monotonic, None)
        return cls(async_client(settings, ASYNC_MAX_CONNECTIONS), **options)

    async def run(self, op: CacheOp) -> Any:
        """Carry out one operation a flow yielded."""
        return await self._run(lambda: self._drive(self._commands.plan(op)))

    async def _drive(self, plan: Plan) -> Any:
        try:
            step = next(plan)
            while True:
                step = plan.send(await self._send(step))
        except StopIteration as done:
            return done.value

    async def _send(self, step: Call | Eval | Scan) -> Any:
        client = self._client
        if isinstance(step, Call):
            return await getattr(client, step.method)(*step.args, **step.kwargs)
        if isinstance(step, Scan):
            return [key async for key in client.scan_iter(match=step.pattern, count=SCAN_BATCH)]
        return await self._eval(step.script, step.keys, step.args)

    async def _eval(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        """As ``RedisBackend._eval``."""
        try:
            return await self._client.evalsha(script.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            await self._client.script_load(script.source)
            return await self._client.evalsha(script.sha, len(keys), *keys, *args)

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

    async def ping(self) -> bool:
        return bool(await self._run(self._client.ping))

    async def close(self) -> None:
        await self._client.aclose()
