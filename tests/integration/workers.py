"""Worker functions run in separate (spawned) processes by the integration tests.

They live in an importable module because ``spawn`` children import their target.
"""

from __future__ import annotations

from multiprocessing.synchronize import Event

from penny_cache.cache import PersonalityCache
from penny_cache.store.database import PersonalityStore
from penny_cache.tracker import PersonalityTracker


def lookups(redis_url: str, namespace: str, hits: int, misses: int, linger: Event | None) -> None:
    """Make ``hits`` hits and ``misses`` misses; optionally stay alive until ``linger`` is set."""
    cache = PersonalityCache.from_url(redis_url, namespace=namespace, stats_flush_interval=0.05)
    try:
        for _ in range(hits):
            assert cache.get("shared-user") is not None
        for n in range(misses):
            assert cache.get(f"absent-{n}") is None
        if linger is not None:
            assert linger.wait(60)
    finally:
        cache.close()


def updates(database_url: str, user: str, count: int, worker: int) -> list[int]:
    """Commit ``count`` updates of one user; return the versions they committed, in order."""
    store = PersonalityStore(database_url)
    versions = []
    try:
        for n in range(count):
            state = store.update_dimension(
                user, "communication_formality", (worker * 100 + n) / 10_000, 0.001, f"w{worker}"
            )
            versions.append(state.version)
    finally:
        store.close()
    return versions


def timed_reads(redis_url: str, namespace: str, database_url: str, users: int) -> None:
    """Read ``users`` cold users through a tracker with per-process metrics."""
    from penny_cache.observe.metrics import ProcessMetrics

    cache = PersonalityCache.from_url(redis_url, namespace=namespace, metrics=ProcessMetrics())
    tracker = PersonalityTracker(PersonalityStore(database_url), cache)
    try:
        for n in range(users):
            tracker.get_current_personality_state(f"cold-{cache.process_id}-{n}")
    finally:
        cache.close()
