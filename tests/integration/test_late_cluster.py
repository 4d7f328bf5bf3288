"""A Redis Cluster that is not there when the workers start, and comes later.

The seed port is chosen and left closed; the trackers are built (this used to raise in
redis-py's sync ``RedisCluster`` constructor), answer from SQL, and once a cluster starts
on that port they use it without a restart.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from penny_cache import AsyncPersonalityCache, AsyncPersonalityTracker
from penny_cache.app.embedded import free_port
from penny_cache.cache import PersonalityCache
from penny_cache.config import Settings
from penny_cache.store.database import PersonalityStore
from penny_cache.tracker import PersonalityTracker
from tests.topologies import RedisClusterProcesses, running

pytestmark = pytest.mark.integration
WITHIN = 30.0  # a cluster start (three nodes, slot assignment) plus the breaker's probes


def _settings(port: int, sqlite_url: str, namespace: str) -> Settings:
    return Settings(
        redis_url=f"redis://127.0.0.1:{port}",
        redis_cluster=True,
        database_url=sqlite_url,
        namespace=namespace,
        redis_cooldown=0.2,
        stats_flush_interval=0.05,
    )


@contextmanager
def _cluster_on(port: int) -> Iterator[RedisClusterProcesses]:
    servers = RedisClusterProcesses()
    servers.nodes[0].port = port  # the seed the workers were given
    with running(servers, "a Redis Cluster") as started:
        yield started


def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WITHIN
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_sync_tracker_starts_without_the_cluster_and_uses_it_once_found(
    sqlite_url: str, namespace: str
) -> None:
    """Used to happen: with ``PENNY_REDIS_CLUSTER=on`` and the seed unreachable,
    ``PersonalityCache.from_settings`` raised ``RedisClusterException`` (the sync client
    connects in its constructor) and the worker died at start. Now it is built, reads
    and writes answer from SQL, and once a cluster listens on the seed port the cache
    fills and serves Redis hits (and the listener, retrying, subscribes)."""
    port = free_port()
    settings = _settings(port, sqlite_url, namespace)
    store = PersonalityStore(sqlite_url)
    cache = PersonalityCache.from_settings(settings)
    tracker = PersonalityTracker(store, cache, **settings.tracker_options())
    try:
        assert tracker.get_current_personality_state("ann").version == 0
        tracker.update_personality_dimension("ann", "communication_formality", 0.9)
        assert tracker.get_current_personality_state("ann").version == 1
        assert cache.get("ann") is None  # no Redis: SQL answered
        with _cluster_on(port):

            def redis_hit() -> bool:
                tracker.get_current_personality_state("ann")
                state = cache.get("ann")
                return state is not None and state.version == 1

            _until(redis_hit, "a Redis hit on the late cluster")
            tracker.update_personality_dimension("ann", "communication_formality", 0.1)
            _until(lambda: tracker.get_current_personality_state("ann").version == 2, "v2")
    finally:
        cache.close()
        store.close()


def test_async_tracker_starts_without_the_cluster_and_uses_it_once_found(
    sqlite_url: str, namespace: str
) -> None:
    """The asyncio face, which shares the sync client for its counters and listener
    (that client used to raise at construction too): built with the seed closed, SQL
    answers, and Redis hits follow once the cluster is up."""
    port = free_port()
    settings = _settings(port, sqlite_url, namespace)

    async def scenario() -> None:
        store = PersonalityStore(sqlite_url)
        cache = AsyncPersonalityCache.from_settings(settings)
        tracker = AsyncPersonalityTracker(store, cache, **settings.tracker_options())
        try:
            assert (await tracker.get_current_personality_state("bea")).version == 0
            assert await cache.get("bea") is None
            with _cluster_on(port):
                deadline = time.monotonic() + WITHIN
                while True:
                    await tracker.get_current_personality_state("bea")
                    if await cache.get("bea") is not None:
                        break
                    assert time.monotonic() < deadline, "no Redis hit on the late cluster"
                    await asyncio.sleep(0.02)
        finally:
            await cache.aclose()
            store.close()

    asyncio.run(scenario())
