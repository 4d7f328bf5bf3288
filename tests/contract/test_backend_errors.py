"""The error contract of both transports: with no Redis there, every operation raises
``CacheUnavailableError`` or ``CacheTimeoutError`` (never a redis-py or OS exception),
within the configured deadline, and a refused connection opens the breaker.

"No Redis" is a loopback port that nobody listens on (picked free a moment ago); for the
Sentinel and Cluster topologies it stands for every sentinel, or every seed node.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from penny_cache.app.embedded import free_port
from penny_cache.config import Settings
from penny_cache.errors import CacheTimeoutError, CacheUnavailableError
from penny_cache.policy.ops import CacheOp, Get
from penny_cache.redis.backend import AsyncRedisBackend, RedisBackend
from penny_cache.wiring import async_backend, sync_backend
from tests.contract.samples import CACHE_OPS, sample

DOWN = (CacheUnavailableError, CacheTimeoutError)
DEADLINE = 0.5
# "every Redis call is bounded by PENNY_REDIS_TIMEOUT (retry included)"; a refused
# connection answers at once, so twice the deadline leaves room for a loaded machine
WITHIN = 2 * DEADLINE


@pytest.fixture
def dead_url() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"


@pytest.mark.parametrize("op_type", CACHE_OPS, ids=lambda t: t.__name__)
def test_sync_backend_on_a_stopped_server_raises_cache_errors(
    dead_url: str, op_type: type[Any]
) -> None:
    """``RedisBackend.run`` of any operation against a port with no server raises
    ``CacheUnavailableError``/``CacheTimeoutError``, in bounded time."""
    backend = RedisBackend.from_url(dead_url, timeout=DEADLINE)
    op: CacheOp = sample(op_type)
    started = time.monotonic()
    try:
        with pytest.raises(DOWN):
            backend.run(op)
    finally:
        backend.close()
    assert time.monotonic() - started < WITHIN


@pytest.mark.parametrize("op_type", CACHE_OPS, ids=lambda t: t.__name__)
def test_async_backend_on_a_stopped_server_raises_cache_errors(
    dead_url: str, op_type: type[Any]
) -> None:
    """``await AsyncRedisBackend.run`` of any operation against a port with no server
    raises ``CacheUnavailableError``/``CacheTimeoutError``, in bounded time."""
    op: CacheOp = sample(op_type)

    async def attempt() -> None:
        backend = AsyncRedisBackend.from_url(dead_url, timeout=DEADLINE)
        try:
            with pytest.raises(DOWN):
                await backend.run(op)
        finally:
            await backend.close()

    started = time.monotonic()
    asyncio.run(attempt())
    assert time.monotonic() - started < WITHIN


def test_both_transports_from_wiring_open_the_breaker_and_stop_calling(dead_url: str) -> None:
    """Built by ``wiring`` (as the caches build them), both transports raise the cache's
    errors, and after ``breaker_failures`` failures the breaker is open: the next call
    fails as unavailable without reaching the network."""
    settings = Settings(redis_url=dead_url, redis_timeout=DEADLINE, breaker_failures=2)
    sync = sync_backend(settings)
    try:
        for _ in range(2):
            with pytest.raises(DOWN):
                sync.run(Get("k"))
        assert sync.breaker.state == "open"
        with pytest.raises(CacheUnavailableError, match="circuit open"):
            sync.run(Get("k"))
    finally:
        sync.close()

    async def asynchronous() -> None:
        backend = async_backend(settings)
        try:
            for _ in range(2):
                with pytest.raises(DOWN):
                    await backend.run(Get("k"))
            assert backend.breaker.state == "open"
            with pytest.raises(CacheUnavailableError, match="circuit open"):
                await backend.run(Get("k"))
        finally:
            await backend.close()

    asyncio.run(asynchronous())


def _topology(name: str, port: int) -> Settings:
    """Settings of ``name`` whose every sentinel or seed node is the dead ``port``."""
    options: dict[str, dict[str, Any]] = {
        "standalone": {},
        "sentinel": {
            "redis_sentinels": (("127.0.0.1", port),),
            "redis_master_name": "penny-test",
        },
        "cluster": {"redis_cluster": True},
    }
    url = f"redis://127.0.0.1:{port}"
    return Settings(redis_url=url, redis_timeout=DEADLINE, **options[name])


@pytest.mark.parametrize(
    ("api", "topology"),
    [
        ("sync", "standalone"),
        ("sync", "sentinel"),
        ("sync", "cluster"),
        ("async", "standalone"),
        ("async", "sentinel"),
        ("async", "cluster"),
    ],
)
def test_redis_down_costs_one_bounded_failure_on_every_topology(api: str, topology: str) -> None:
    """Whatever the topology, a backend built by ``wiring`` while Redis is down is built
    (connections open on first use), and its first call raises
    ``CacheUnavailableError``/``CacheTimeoutError`` within the deadline, retry included.
    (Behind Sentinel a call used to take 3-4 s: redis-py's default retries ran inside
    every master lookup. On a Cluster the sync client used to connect in its
    constructor, so building the backend raised ``RedisClusterException`` and a worker
    died at start; ``clients.LazyCluster`` builds it on first use.)"""
    settings = _topology(topology, free_port())
    started = time.monotonic()
    if api == "sync":
        backend = sync_backend(settings)
        try:
            with pytest.raises(DOWN):
                backend.run(Get("k"))
        finally:
            backend.close()
    else:

        async def attempt() -> None:
            backend = async_backend(settings)
            try:
                with pytest.raises(DOWN):
                    await backend.run(Get("k"))
            finally:
                await backend.close()

        asyncio.run(attempt())
    elapsed = time.monotonic() - started
    assert elapsed < WITHIN, f"{elapsed:.2f}s"
