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


def _resources() -> dict[str, int]:
    """This process's threads, open files and sockets, and shared engines and sweepers."""
    import os
    import threading

    from penny_cache.store.engines import ENGINES
    from penny_cache.store.outbox import SWEEPERS

    links = []
    for fd in os.listdir("/proc/self/fd"):
        try:  # the listing's own descriptor is gone by the time it is read
            links.append(os.readlink(f"/proc/self/fd/{fd}"))
        except FileNotFoundError:
            continue
    return {
        "threads": threading.active_count(),
        "fds": len(links),
        "sockets": sum(link.startswith("socket:") for link in links),
        "engines": len(ENGINES),
        "sweepers": len(SWEEPERS),
    }


def tracker_per_request(
    redis_url: str, namespace: str, database_url: str, requests: int
) -> list[dict[str, int]]:
    """Penny's way: one cache per process, a new store and tracker per request, never
    closed; a read each request, an update every tenth. Resources halfway (the pools and
    background threads have started by then) and after all of them."""
    cache = PersonalityCache.from_url(redis_url, namespace=namespace)
    samples = []
    try:
        for n in range(requests):
            tracker = PersonalityTracker(PersonalityStore(database_url), cache)
            tracker.get_current_personality_state(f"user-{n % 20}")
            if n % 10 == 0:
                tracker.update_personality_dimension(
                    f"user-{n % 20}", "conversation_pace_preference", n / requests
                )
            if n + 1 in (requests // 2, requests):
                samples.append(_resources())
    finally:
        cache.close()
    return samples
