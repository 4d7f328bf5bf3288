"""The Redis transports: ``RedisBackend`` (redis-py) and ``AsyncRedisBackend``
(``redis.asyncio``), side by side.

A transport drives the plans of ``penny_cache.redis.commands`` (what to send is written
there, once) wrapped in ``ErrorBoundary.guarded`` (the breaker and retry rule, written
once): every failure becomes a ``CacheError``, and after repeated failures the circuit
breaker keeps calls off the network, so a dead or hanging Redis costs a few bounded
timeouts per cooldown, not one per request. The two classes differ only in how a step
reaches the client (a call, or ``await``); the sync one also serves the background
threads (counters, listener, outbox) and the tools.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import redis
import redis.asyncio as aredis
from redis.backoff import NoBackoff
from redis.retry import Retry

from penny_cache.config import Settings
from penny_cache.policy.flows import adrive, drive
from penny_cache.policy.ops import CacheOp, Dropped, Get
from penny_cache.redis import scripts
from penny_cache.redis.boundary import ErrorBoundary, boundary_options
from penny_cache.redis.clients import (
    ASYNC_MAX_CONNECTIONS,
    SubscriberFactory,
    async_client,
    sync_client,
)
from penny_cache.redis.commands import (
    SCAN_BATCH,
    Call,
    Commands,
    Eval,
    Pipeline,
    Plan,
    ResetPool,
    Scan,
    Step,
)
from penny_cache.signing import MAX_STORED_BYTES

__all__ = ["AsyncRedisBackend", "RedisBackend"]


class _Transport(ErrorBoundary):
    """What both transports share: what to send, and the boundary around it."""

    def __init__(
        self,
        *,
        commands: Commands | None = None,
        cooldown: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
        **boundary: Any,
    ) -> None:
        """``boundary``: deadline, breaker and pool options of ``ErrorBoundary``;
        ``commands``: what to send (``ClusterCommands`` on a Cluster)."""
        super().__init__(cooldown, monotonic, **boundary)
        self._commands = commands or Commands()

    def _plan(self, op: CacheOp) -> Plan:
        return self.guarded(lambda: self._commands.plan(op))


class RedisBackend(_Transport):
    """Runs operations on a redis-py client with bounded time and translated errors."""

    def __init__(
        self, client: redis.Redis, *, subscribers: SubscriberFactory | None = None, **options: Any
    ) -> None:
        """``subscribers``: how the listener's connections are made (see ``clients``);
        ``options`` as in ``_Transport``."""
        super().__init__(**options)
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
        """A standalone backend whose connections open lazily, on first use."""
        settings = Settings(redis_url=url, redis_timeout=timeout, redis_cooldown=cooldown)
        return cls(sync_client(settings), **boundary_options(settings, monotonic, None))

    def run(self, op: CacheOp) -> Any:
        """Carry out one operation a flow yielded."""
        if op.__class__ is Get:  # the hot path: no generators
            return self.get(op.key)
        return drive(self._plan(op), self._send)

    def _guarded(self, step: Step) -> Any:
        """Send one step behind the boundary; its answer."""
        return drive(self.guarded(lambda: _one(step)), self._send)

    def _send(self, step: Step) -> Any:
        client = self._client
        if isinstance(step, Call):
            return getattr(client, step.method)(*step.args, **step.kwargs)
        if isinstance(step, Eval):
            try:
                return client.evalsha(step.script.sha, len(step.keys), *step.keys, *step.args)
            except redis.exceptions.NoScriptError:  # a restart or FLUSHALL lost it
                client.script_load(step.script.source)
                return client.evalsha(step.script.sha, len(step.keys), *step.keys, *step.args)
        if isinstance(step, Scan):
            return list(client.scan_iter(match=step.pattern, count=SCAN_BATCH))
        if isinstance(step, Pipeline):
            pipe = client.pipeline(transaction=False)
            for call in step.calls:
                getattr(pipe, call.method)(*call.args, **call.kwargs)
            return pipe.execute(raise_on_error=step.raise_on_error)
        # ResetPool: idle connections only: yanking one another thread is using breaks
        # redis-py mid-call (found under failover: a TypeError from its socket check)
        return client.connection_pool.disconnect(inuse_connections=False)

    def get(self, key: str) -> bytes | Dropped | None:
        """``run(Get(key))`` with the boundary inlined: a Redis hit costs one call (the
        bounded read of ``Commands.get``); an entry over the cap, a key of another type
        (an error reply) or a retry takes the plan."""
        breaker = self._breaker
        raw: Any = None
        if breaker.healthy:
            started = self._monotonic()
            try:
                raw = self._client.getrange(key, 0, MAX_STORED_BYTES)
            except redis.ResponseError:
                pass  # WRONGTYPE: the plan unlinks the key
            except Exception as exc:  # anything else redis-py raises (see _translate)
                if not self._may_retry(exc, started):
                    raise self._translate(exc) from exc
            if isinstance(raw, bytes) and len(raw) <= MAX_STORED_BYTES:
                return raw or None
        return cast("bytes | Dropped | None", drive(self._plan(Get(key)), self._send))

    # -- the counters', listener's and tools' operations (sync only) ------------------------

    def read_counter(self, key: str) -> int:
        """An integer key's value (0 when absent)."""
        raw = self._guarded(Call("get", (key,)))
        return int(raw) if raw is not None else 0

    def write_fields(self, key: str, fields: Mapping[str, int | float | str]) -> None:
        self._guarded(Call("hset", (key,), {"mapping": fields}))

    def read_fields_many(self, keys: list[str]) -> list[dict[str, str] | None]:
        """HGETALL of each key, pipelined (one round trip per node); None for a key Redis
        refused to read as a hash (another type: reported by the caller, never fatal).
        Bytes that are not UTF-8 are replaced, so they fail the caller's parse instead."""
        calls = tuple(Call("hgetall", (key,)) for key in keys)
        raws = cast("list[Any]", self._guarded(Pipeline(calls, raise_on_error=False)))
        return [
            {k.decode(errors="replace"): v.decode(errors="replace") for k, v in raw.items()}
            if isinstance(raw, dict)
            else None
            for raw in raws
        ]

    def delete_keys(self, keys: list[str]) -> None:
        """UNLINK each key (pipelined, one key per call: they may be in different slots)."""
        self._guarded(Pipeline(tuple(Call("unlink", (key,)) for key in keys)))

    def rebase_counters(self, key: str, baseline: str, names: Sequence[str]) -> None:
        """Make ``key``'s counts sum to zero (``scripts.REBASE_COUNTERS``)."""
        self._guarded(Eval(scripts.REBASE_COUNTERS, [key], [baseline, *names]))

    def repair_counters(self, key: str) -> str:
        """Unlink ``key`` if it is not a hash (nor missing): the type it had, or ''."""
        kind = self._guarded(Eval(scripts.REPAIR_COUNTERS, [key], []))
        return kind.decode() if isinstance(kind, bytes) else str(kind or "")

    def retire_counters(
        self, key: str, marker: str, process_id: str, totals: Mapping[str, int]
    ) -> bool:
        args: list[Any] = [process_id, 7 * 86400]
        for name, value in totals.items():
            args += [name, value]
        return bool(self._guarded(Eval(scripts.RETIRE_COUNTERS, [key, marker], args)))

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
        return bool(self._guarded(Call("ping")))

    def load_scripts(self) -> list[str]:
        """SCRIPT LOAD every script (the admin path when the service's ACL user may only
        EVALSHA); their SHA1s. On a Cluster, redis-py sends it to every primary."""
        loads = [Call("script_load", (script.source,)) for script in scripts.ALL_SCRIPTS]
        return [str(self._guarded(load)) for load in loads]

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
            self._pool_stale = False
            self._send(ResetPool())
        try:
            self._client.ping()
        except Exception:  # the background probe must not die of a client error
            breaker.failure()
            return False
        breaker.success()
        return True

    def close(self) -> None:
        self._client.close()


class AsyncRedisBackend(_Transport):
    """``RedisBackend`` for asyncio: the same plans, each step awaited.

    A redis.asyncio client belongs to the event loop it first ran on. Callers that run
    each call in a new loop (``asyncio.run()`` per call, a sync wrapper) would find
    connections bound to a closed loop, so each running loop gets a client of its own,
    made on first use and forgotten with its loop.
    """

    def __init__(self, new_client: Callable[[], aredis.Redis], **options: Any) -> None:
        """``new_client`` makes a client for a loop; ``options`` as in ``_Transport``."""
        super().__init__(**options)
        self._new_client = new_client
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aredis.Redis] = (
            weakref.WeakKeyDictionary()
        )

    @property
    def _client(self) -> aredis.Redis:
        """The running loop's client."""
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            client = self._clients[loop] = self._new_client()
        return client

    @classmethod
    def from_url(
        cls, url: str, *, timeout: float = 0.1, cooldown: float = 1.0
    ) -> AsyncRedisBackend:
        """A standalone backend whose connections open lazily, on the loop that uses them."""
        settings = Settings(redis_url=url, redis_timeout=timeout, redis_cooldown=cooldown)
        options = boundary_options(settings, time.monotonic, None)
        return cls(lambda: async_client(settings, ASYNC_MAX_CONNECTIONS), **options)

    async def run(self, op: CacheOp) -> Any:
        """Carry out one operation a flow yielded."""
        return await adrive(self._plan(op), self._send)

    async def _send(self, step: Step) -> Any:
        client = self._client
        if isinstance(step, Call):
            return await getattr(client, step.method)(*step.args, **step.kwargs)
        if isinstance(step, Eval):
            try:
                return await client.evalsha(step.script.sha, len(step.keys), *step.keys, *step.args)
            except redis.exceptions.NoScriptError:  # a restart or FLUSHALL lost it
                await client.script_load(step.script.source)
                return await client.evalsha(step.script.sha, len(step.keys), *step.keys, *step.args)
        if isinstance(step, Scan):
            return [key async for key in client.scan_iter(match=step.pattern, count=SCAN_BATCH)]
        if isinstance(step, Pipeline):
            pipe = client.pipeline(transaction=False)
            for call in step.calls:
                getattr(pipe, call.method)(*call.args, **call.kwargs)
            return await pipe.execute(raise_on_error=step.raise_on_error)
        return await client.connection_pool.disconnect(inuse_connections=False)

    async def ping(self) -> bool:
        return bool(await adrive(self.guarded(lambda: _one(Call("ping"))), self._send))

    async def close(self) -> None:
        """Close the running loop's client (those of closed loops went with them)."""
        client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()


def _one(step: Step) -> Plan:
    """A plan of one step (the tools' and counters' single calls)."""
    return (yield step)
