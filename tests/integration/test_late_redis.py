"""A Redis Cluster or Sentinel group that is not there when the workers start, and comes later.

The seed port (or the sentinels' ports) is chosen and left closed; the trackers are built
(with a Cluster this used to raise in redis-py's sync ``RedisCluster`` constructor), answer
from SQL, and once the servers start on those ports they use Redis without a restart.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import pytest

from penny_cache import AsyncPersonalityCache, AsyncPersonalityTracker
from penny_cache.app.embedded import free_port
from penny_cache.cache import PersonalityCache
from penny_cache.config import Settings
from penny_cache.store.database import PersonalityStore
from penny_cache.tracker import PersonalityTracker
from tests.topologies import RedisClusterProcesses, SentinelGroup, running

pytestmark = pytest.mark.integration
WITHIN = 30.0  # servers starting (slot assignment, sentinels agreeing) plus the probes
TOPOLOGIES = ("cluster", "sentinel")


class _Late:
    """Settings pointing at closed ports, and how to start the servers there later."""

    def __init__(self, topology: str, sqlite_url: str, namespace: str) -> None:
        self.topology = topology
        self.ports = (free_port(),) if topology == "cluster" else tuple(free_port() for _ in "abc")
        common: dict[str, Any] = {
            "database_url": sqlite_url,
            "namespace": namespace,
            "redis_cooldown": 0.2,
            "stats_flush_interval": 0.05,
        }
        if topology == "cluster":
            common.update(redis_url=f"redis://127.0.0.1:{self.ports[0]}", redis_cluster=True)
        else:
            common.update(
                redis_sentinels=tuple(("127.0.0.1", port) for port in self.ports),
                redis_master_name=SentinelGroup.master_name,
            )
        self.settings = Settings(**common)

    def start(self) -> AbstractContextManager[object]:
        return self._cluster() if self.topology == "cluster" else self._sentinels()

    @contextmanager
    def _cluster(self) -> Iterator[object]:
        servers = RedisClusterProcesses()
        servers.nodes[0].port = self.ports[0]  # the seed the workers were given
        with running(servers, "a Redis Cluster") as started:
            yield started

    @contextmanager
    def _sentinels(self) -> Iterator[object]:
        with running(SentinelGroup(self.ports), "a Sentinel group") as started:
            yield started


def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WITHIN
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_sync_tracker_starts_without_redis_and_uses_it_once_found(
    topology: str, sqlite_url: str, namespace: str
) -> None:
    """Used to happen: with ``PENNY_REDIS_CLUSTER=on`` and the seed unreachable,
    ``PersonalityCache.from_settings`` raised ``RedisClusterException`` (the sync client
    connects in its constructor) and the worker died at start. Now, on a Cluster as
    behind Sentinel, it is built, reads and writes answer from SQL, and once the servers
    listen on the configured ports the cache fills and serves Redis hits, and the
    invalidation listener, which kept retrying, subscribes (near-cache hits)."""
    late = _Late(topology, sqlite_url, namespace)
    store = PersonalityStore(sqlite_url)
    cache = PersonalityCache.from_settings(late.settings)
    tracker = PersonalityTracker(store, cache, **late.settings.tracker_options())
    try:
        assert tracker.get_current_personality_state("ann").version == 0
        tracker.update_personality_dimension("ann", "communication_formality", 0.9)
        assert tracker.get_current_personality_state("ann").version == 1
        assert cache.get("ann") is None  # no Redis: SQL answered
        with late.start():

            def redis_hit() -> bool:
                tracker.get_current_personality_state("ann")
                state = cache.get("ann")
                return state is not None and state.version == 1

            _until(redis_hit, "a Redis hit")

            def near_hit() -> bool:  # the near cache is used only while the listener is
                cache.get("ann")  # subscribed: it kept retrying, and got there
                return bool(cache.local_stats()["near_hits"] > 0)

            _until(near_hit, "a near-cache hit (the listener subscribed)")
            tracker.update_personality_dimension("ann", "communication_formality", 0.1)
            _until(lambda: tracker.get_current_personality_state("ann").version == 2, "v2")
    finally:
        cache.close()
        store.close()


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_async_tracker_starts_without_redis_and_uses_it_once_found(
    topology: str, sqlite_url: str, namespace: str
) -> None:
    """The asyncio face, which shares the sync client for its counters and listener
    (on a Cluster that client used to raise at construction too): built with the ports
    closed, SQL answers, and Redis hits follow once the servers are up."""
    late = _Late(topology, sqlite_url, namespace)

    async def scenario() -> None:
        store = PersonalityStore(sqlite_url)
        cache = AsyncPersonalityCache.from_settings(late.settings)
        tracker = AsyncPersonalityTracker(store, cache, **late.settings.tracker_options())
        try:
            assert (await tracker.get_current_personality_state("bea")).version == 0
            assert await cache.get("bea") is None
            with late.start():
                deadline = time.monotonic() + WITHIN
                while True:
                    await tracker.get_current_personality_state("bea")
                    if await cache.get("bea") is not None:
                        break
                    assert time.monotonic() < deadline, "no Redis hit once Redis was up"
                    await asyncio.sleep(0.02)
        finally:
            await cache.aclose()
            store.close()

    asyncio.run(scenario())
