"""Near caches on a real redis-server: hits without Redis, invalidation, and no silent holes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from penny_cache.app.embedded import RedisServerProcess, wait_until
from penny_cache.cache import PersonalityCache
from penny_cache.store.database import PersonalityStore
from penny_cache.tracker import PersonalityTracker

pytestmark = pytest.mark.integration


@pytest.fixture
def pair(
    own_redis: RedisServerProcess, sqlite_url: str, namespace: str
) -> Iterator[tuple[PersonalityTracker, PersonalityTracker]]:
    """Two trackers with their own caches on one Redis and one database (two 'workers')."""
    trackers = [
        PersonalityTracker(
            PersonalityStore(sqlite_url),
            PersonalityCache.from_url(own_redis.url, namespace=namespace, max_staleness=0.5),
        )
        for _ in range(2)
    ]
    yield trackers[0], trackers[1]
    for tracker in trackers:
        tracker.cache.close()


def warm(tracker: PersonalityTracker, user: str) -> None:
    tracker.get_current_personality_state(user)
    wait_until(lambda: tracker.cache.near_trusted, 10, "the listener to vouch")
    tracker.get_current_personality_state(user)


def test_near_hit_does_not_touch_redis(
    own_redis: RedisServerProcess, pair: tuple[PersonalityTracker, PersonalityTracker]
) -> None:
    """Once trusted, repeated reads are near hits: Redis sees no further GET."""
    a, _ = pair
    warm(a, "alice")
    client = redis.Redis.from_url(own_redis.url)
    before = int(client.info("commandstats").get("cmdstat_get", {}).get("calls", 0))
    for _ in range(50):
        a.get_current_personality_state("alice")
    after = int(client.info("commandstats").get("cmdstat_get", {}).get("calls", 0))
    assert after == before
    assert a.cache.local_stats()["near_hits"] >= 50


def test_update_in_one_process_reaches_the_others_near_cache(
    pair: tuple[PersonalityTracker, PersonalityTracker],
) -> None:
    """B's near copy is dropped by A's update; B then reads the new version."""
    a, b = pair
    warm(b, "alice")
    new = a.update_personality_dimension("alice", "communication_formality", 0.9)
    wait_until(
        lambda: b.get_current_personality_state("alice").version == new.version,
        5,
        "B to see A's update",
    )


def test_writer_reads_its_own_write_at_once(
    pair: tuple[PersonalityTracker, PersonalityTracker],
) -> None:
    """Read-your-writes: no wait for the writer's own message."""
    a, _ = pair
    warm(a, "alice")
    for n in range(20):
        new = a.update_personality_dimension("alice", "technical_depth_preference", n / 20)
        assert a.get_current_personality_state("alice") == new


def test_killed_subscriber_flushes_and_recovers(
    own_redis: RedisServerProcess, pair: tuple[PersonalityTracker, PersonalityTracker]
) -> None:
    """CLIENT KILL TYPE pubsub: the near cache is flushed, the reconnect counted, and trust
    comes back; an update made meanwhile is seen."""
    a, b = pair
    warm(b, "alice")
    flushes = b.cache.near.flushes if b.cache.near else 0
    redis.Redis.from_url(own_redis.url).client_kill_filter(_type="pubsub")
    new = a.update_personality_dimension("alice", "humor_style_preference", "dry")
    wait_until(lambda: b.cache.local_stats()["listener_reconnects"] >= 1, 5, "a reconnect")
    assert b.cache.near is not None and b.cache.near.flushes > flushes
    assert b.get_current_personality_state("alice").version == new.version
    wait_until(lambda: b.cache.near_trusted, 10, "trust to come back")


def test_paused_redis_stops_trust_within_max_staleness(
    own_redis: RedisServerProcess, pair: tuple[PersonalityTracker, PersonalityTracker]
) -> None:
    """With Redis frozen, no PONG comes back: the near cache stops being trusted."""
    _, b = pair
    warm(b, "alice")
    own_redis.pause()
    try:
        wait_until(lambda: not b.cache.near_trusted, 3, "trust to lapse")
    finally:
        own_redis.resume()
    wait_until(lambda: b.cache.near_trusted, 10, "trust to come back")


def _child_after_fork(tracker: PersonalityTracker) -> None:
    cache = tracker.cache
    assert not cache.near_trusted, "a forked child must not trust its parent's near cache"
    assert cache.near is not None and len(cache.near) == 0
    tracker.get_current_personality_state("alice")  # starts the child's own listener
    wait_until(lambda: cache.near_trusted, 10, "the child's listener")
    cache.close()


def test_forked_worker_starts_its_own_listener(
    pair: tuple[PersonalityTracker, PersonalityTracker],
) -> None:
    """Pre-fork servers: a child forked from a process with a trusted near cache starts
    distrusted and empty, and vouches again only through a listener of its own."""
    import multiprocessing

    a, _ = pair
    warm(a, "alice")
    child = multiprocessing.get_context("fork").Process(target=_child_after_fork, args=(a,))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    assert a.cache.near_trusted, "the parent's listener is unaffected"
