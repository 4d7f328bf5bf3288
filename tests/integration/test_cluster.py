"""Redis Cluster: a real 3-primary cluster on loopback ports, started by the test.

The cache runs unchanged through redis-py's cluster client: entries spread over the nodes,
counters spread over 16 hashes, invalidations travel on 16 sharded channels (SPUBLISH /
SSUBSCRIBE) that each live on one node, and the multi-process coherence check holds with
no fault and while the slots of a hot user's entry and of its invalidation channel move.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.crc import key_slot

from penny_cache import AsyncPersonalityCache, AsyncPersonalityTracker
from penny_cache.app.embedded import wait_until
from penny_cache.cache import PersonalityCache
from penny_cache.codec import encode_state
from penny_cache.config import Settings
from penny_cache.keys import INVALIDATION_SHARDS, KeySchema, encode_user_id, invalidation_shard
from penny_cache.keys import shard_channel as sharded
from penny_cache.signing import Signer
from penny_cache.store.database import PersonalityStore
from penny_cache.tracker import PersonalityTracker
from tests.integration.test_coherence import USERS, FaultLoop, assert_coherent, run_history
from tests.topologies import RedisClusterProcesses, running

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.scaleout]


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterProcesses]:
    """Three primaries on free loopback ports; stopped (and their files removed) after."""
    with running(RedisClusterProcesses(), "a Redis Cluster") as servers:
        yield servers


def _settings(cluster: RedisClusterProcesses, sqlite_url: str, namespace: str) -> Settings:
    return Settings(
        redis_url=cluster.url,
        redis_cluster=True,
        database_url=sqlite_url,
        namespace=namespace,
        stats_flush_interval=0.05,
    )


def _keys_per_node(cluster: RedisClusterProcesses, pattern: str) -> list[int]:
    counts = []
    for node in cluster.nodes:
        with redis.Redis(port=node.port) as client:
            counts.append(sum(1 for _ in client.scan_iter(match=pattern, count=500)))
    return counts


def test_entries_counters_and_channels_spread_over_the_nodes(
    cluster: RedisClusterProcesses, sqlite_url: str, namespace: str
) -> None:
    """Entries and counter hashes live on every node; each sharded channel is subscribed
    only on the node owning its slot (so a message never crosses to other nodes), and
    no plain (broadcast) channel is used."""
    settings = _settings(cluster, sqlite_url, namespace)
    store = PersonalityStore(sqlite_url)
    # 20 processes' counters (one shard each, by process id) cover the 3 nodes; one of
    # them keeps a near cache, whose sharded listener is what the channel checks need
    # (20 sets of 16 listener threads made this test take minutes on a loaded machine)
    without_near = dataclasses.replace(settings, near_cache=False)
    caches = [PersonalityCache.from_settings(settings)]
    caches += [PersonalityCache.from_settings(without_near) for _ in range(19)]
    try:
        trackers = [PersonalityTracker(store, cache) for cache in caches]
        for n in range(60):
            trackers[n % len(trackers)].get_current_personality_state(f"user-{n}")
        for cache in caches:  # a flush may time out on a loaded machine: retried
            wait_until(cache.flush_stats, 10, "the counters to be flushed")
        assert all(_keys_per_node(cluster, f"{namespace}:*:state:*"))
        assert all(_keys_per_node(cluster, f"{{{namespace}:stats:*"))
        assert caches[0].get_stats()["misses"] == 60
        channel = KeySchema(namespace).channel()
        wait_until(lambda: _subscribed_everywhere(cluster, channel), 10, "sharded listeners")
        for node in cluster.nodes:
            with redis.Redis(port=node.port, decode_responses=True) as client:
                assert not client.pubsub_channels(f"{namespace}:*")
    finally:
        for cache in caches:
            cache.close()
        store.close()


def _subscribed_everywhere(cluster: RedisClusterProcesses, channel: str) -> bool:
    """Every shard channel is subscribed on its owner, and on no other node."""
    seen: dict[str, int] = {}
    for node in cluster.nodes:
        with redis.Redis(port=node.port, decode_responses=True) as client:
            names = client.execute_command("PUBSUB SHARDCHANNELS", f"{channel}:*")
            for name in names:
                assert cluster.owner_of(_slot(name)) == node.port, name
                seen[name] = node.port
    return len(seen) == INVALIDATION_SHARDS


def _slot(key: str) -> int:
    return key_slot(key.encode())


def test_an_update_reaches_the_other_near_caches(
    cluster: RedisClusterProcesses, sqlite_url: str, namespace: str
) -> None:
    """An update through one cache (sync) and one through the asyncio cache both reach a
    second process-like cache's near cache, which then serves the new version."""
    settings = _settings(cluster, sqlite_url, namespace)
    store = PersonalityStore(sqlite_url)
    writer, reader = (PersonalityCache.from_settings(settings) for _ in range(2))
    try:
        write, read = PersonalityTracker(store, writer), PersonalityTracker(store, reader)
        assert read.get_current_personality_state("ann").version == 0
        wait_until(lambda: reader.near_trusted, 10, "the reader's listeners")
        assert read.get_current_personality_state("ann").version == 0  # a near hit now
        version = write.update_personality_dimension("ann", "technical_depth_preference", 1.0)
        wait_until(
            lambda: read.get_current_personality_state("ann").version == version.version,
            2,
            "the update to reach the reader",
        )

        async def async_update() -> int:
            async with AsyncPersonalityCache.from_settings(settings) as cache:
                tracker = AsyncPersonalityTracker(store, cache)
                state = await tracker.update_personality_dimension(
                    "ann", "humor_style_preference", "dry"
                )
                return state.version

        newer = asyncio.run(async_update())
        wait_until(
            lambda: read.get_current_personality_state("ann").version == newer,
            2,
            "the async update to reach the reader",
        )
    finally:
        writer.close()
        reader.close()
        store.close()


def test_history_is_coherent_on_a_cluster(
    cluster: RedisClusterProcesses, sqlite_url: str, namespace: str, tmp_path: Path
) -> None:
    """Four processes on the cluster: bounded staleness, read-your-writes, no invented
    versions, convergence, exact counters."""
    run = run_history(cluster, sqlite_url, namespace, tmp_path, options={"redis_cluster": True})
    print(f"\n[cluster] {run.summary()}")
    assert_coherent(run)


def _move_hot_slots(namespace: str) -> FaultLoop:
    """Every 0.7 s, move the slots of one user's entry and of its invalidation channel to
    the next node (keys migrate; the channel's subscribers get `sunsubscribe`)."""
    keys = KeySchema(namespace)
    user = USERS[0]
    channel = sharded(keys.channel(), invalidation_shard(encode_user_id(user)))
    slots = {_slot(keys.state(user)), _slot(channel)}

    def loop(cluster: RedisClusterProcesses, stop: threading.Event, times: list[float]) -> None:
        turn = 0
        while not stop.wait(0.7):
            turn += 1
            for slot in slots:
                target = cluster.nodes[(turn + slot) % len(cluster.nodes)]
                cluster.move_slot(slot, target.port)
            times.append(time.monotonic())

    return loop


def test_history_is_coherent_while_slots_migrate(
    cluster: RedisClusterProcesses, sqlite_url: str, namespace: str, tmp_path: Path
) -> None:
    """The same checks hold while a hot user's slots move between nodes under traffic."""
    run = run_history(
        cluster,
        sqlite_url,
        namespace,
        tmp_path,
        _move_hot_slots(namespace),
        options={"redis_cluster": True},
    )
    print(f"\n[cluster, slots moving] {run.summary()}")
    assert len(run.faults) >= 3
    assert_coherent(run)


def test_signed_entries_and_messages_on_a_cluster(
    cluster: RedisClusterProcesses, sqlite_url: str, namespace: str
) -> None:
    """With ``PENNY_VALUE_KEY`` on a Cluster, the write-through (two steps there: the
    entry's slot, then the user's sharded channel) is signed and tagged: the reader's
    listener applies the update as a precise invalidation (no message judged forged or
    malformed) and the entry on its node verifies."""
    settings = dataclasses.replace(
        _settings(cluster, sqlite_url, namespace), value_key="cluster-test-value-key-0123456789"
    )
    store = PersonalityStore(sqlite_url)
    writer, reader = (PersonalityCache.from_settings(settings) for _ in range(2))
    try:
        write, read = PersonalityTracker(store, writer), PersonalityTracker(store, reader)
        assert read.get_current_personality_state("ann").version == 0
        wait_until(lambda: reader.near_trusted, 10, "the reader's listeners")
        version = write.update_personality_dimension("ann", "technical_depth_preference", 1.0)
        wait_until(
            lambda: read.get_current_personality_state("ann").version == version.version,
            2,
            "the update to reach the reader",
        )
        stats = reader.local_stats()
        assert (stats["integrity_failures"], stats["malformed_messages"]) == (0, 0), stats
        key = writer.keys.state("ann")
        client = redis.RedisCluster.from_url(cluster.url)
        try:
            stored = client.get(key)
        finally:
            client.close()
        assert isinstance(stored, bytes)
        assert Signer.from_settings(settings).open(key, stored) == encode_state(version)
    finally:
        writer.close()
        reader.close()
        store.close()
