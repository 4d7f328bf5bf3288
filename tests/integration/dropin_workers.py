"""Worker functions for ``test_dropin_processes``: each drives Penny's original API
(``PersonalityStateCache``: get / set / invalidate / .stats / get_stats) in a spawned
process. They live in an importable module because ``spawn`` children import their target.
"""

from __future__ import annotations

from typing import Any

import redis

from penny_cache.personality_state_cache import PersonalityStateCache
from tests.penny_shapes import PersonalityDimension, penny_state

__all__ = ["churn", "lookups", "read_back", "store", "write"]

USER = "default"


def _cache(redis_url: str, namespace: str) -> PersonalityStateCache:
    return PersonalityStateCache(ttl_seconds=300, redis_url=redis_url, namespace=namespace)


def store(redis_url: str, namespace: str, values: dict[str, Any]) -> None:
    """set() each value under its user id."""
    cache = _cache(redis_url, namespace)
    try:
        for user, value in values.items():
            assert cache.set(user, value) is True
    finally:
        cache.close()


def read_back(redis_url: str, namespace: str, users: list[str]) -> dict[str, Any]:
    """get() each user: the values, as this process rebuilt them (pickled back to the
    parent by multiprocessing, which is the parent's business, not the cache's)."""
    cache = _cache(redis_url, namespace)
    try:
        # Penny's tracker module is loaded in a Penny process; here, by this import
        assert PersonalityDimension.__module__ == "tests.penny_shapes"
        return {user: cache.get(user) for user in users}
    finally:
        cache.close()


def write(redis_url: str, namespace: str, action: str, value: Any) -> None:
    """Another process's change of the key: ``invalidate`` or ``set``."""
    cache = _cache(redis_url, namespace)
    try:
        if action == "invalidate":
            cache.invalidate(USER)
        else:
            cache.set(USER, value)
    finally:
        cache.close()


def lookups(
    redis_url: str, namespace: str, hits: int, misses: int, invalidations: int
) -> list[dict[str, int]]:
    """Two instances in this process: the first makes ``hits`` hits and ``misses`` misses
    and ``invalidations`` invalidations of absent users, the second one miss. Their
    ``.stats``, then close (which publishes the final counters)."""
    first, second = _cache(redis_url, namespace), _cache(redis_url, namespace)
    try:
        first.set("present", {"x": 1})
        for _ in range(hits):
            assert first.get("present") == {"x": 1}
        for n in range(misses):
            assert first.get(f"absent-{n}") is None
        for n in range(invalidations):
            first.invalidate(f"gone-{n}")
        assert second.get("absent-in-second") is None
        return [first.stats, second.stats]
    finally:
        first.close()
        second.close()


def churn(redis_url: str, namespace: str, db_key: str, rounds: int) -> dict[str, int]:
    """Penny's tracker, cache-aside, against a "database" (an integer in Redis outside
    the cache's namespace): every third round an update (INCR the database, then
    invalidate), otherwise a read (get; on a miss read the database, a few round trips
    of "work", then set). Counts reads that saw less than this process's own last update
    (read-your-writes violations) and its lookups."""
    cache = _cache(redis_url, namespace)
    db = redis.Redis.from_url(redis_url)
    own_last, violations, reads = 0, 0, 0
    try:
        for n in range(rounds):
            if n % 3 == 0:
                own_last = int(db.incr(db_key))
                cache.invalidate(USER)
                continue
            reads += 1
            value = cache.get(USER)
            if value is None:
                version = int(db.get(db_key) or 0)
                for _ in range(3):  # the database read takes a while: widen the race
                    db.ping()
                cache.set(USER, {"version": version, "dims": penny_state(version / rounds)})
            else:
                version = value["version"]
            violations += version < own_last
        return {"violations": violations, "reads": reads, **cache.stats}
    finally:
        cache.close()
        db.close()
