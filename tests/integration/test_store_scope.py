"""A cache knows its database from its first call: entries written by other processes
are seen before any tracker has run, on both APIs, and the scope never changes later."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from penny_cache import AsyncPersonalityCache
from penny_cache.cache import PersonalityCache
from penny_cache.errors import StoreMismatchError
from penny_cache.store.database import PersonalityStore
from penny_cache.tracker import PersonalityTracker

pytestmark = pytest.mark.integration


def _written(redis_url: str, namespace: str, database_url: str) -> int:
    """Another cache (as another process would) commits and caches dave's state."""
    with PersonalityCache.from_url(redis_url, namespace=namespace, near_cache=False) as cache:
        tracker = PersonalityTracker(PersonalityStore(database_url), cache)
        state = tracker.update_personality_dimension("dave", "technical_depth_preference", 0.9)
        tracker.close()
        return state.version


def test_a_trackers_cache_sees_the_databases_entries_before_the_tracker_runs(
    redis_url: str, sqlite_url: str, namespace: str
) -> None:
    """cache.get() right after building a tracker on it finds an entry another process
    wrote (it used to return None until the tracker's first call bound the scope)."""
    version = _written(redis_url, namespace, sqlite_url)
    with PersonalityCache.from_url(redis_url, namespace=namespace) as cache:
        tracker = PersonalityTracker(PersonalityStore(sqlite_url), cache)
        state = cache.get("dave")
        assert state is not None and state.version == version
        assert cache.get_stats()["hits"] >= 1
        tracker.close()


def test_a_cache_given_its_store_sees_entries_on_both_apis(
    redis_url: str, sqlite_url: str, namespace: str
) -> None:
    """from_url(store=...) alone, sync and asyncio, serves the database's entries from
    the first call, with no tracker anywhere in the process."""
    version = _written(redis_url, namespace, sqlite_url)
    store = PersonalityStore(sqlite_url)
    with PersonalityCache.from_url(redis_url, namespace=namespace, store=store) as cache:
        state = cache.get("dave")
        assert state is not None and state.version == version

    async def read() -> int | None:
        async with AsyncPersonalityCache.from_url(
            redis_url, namespace=namespace, store=store
        ) as cache:
            found = await cache.get("dave")
            return None if found is None else found.version

    assert asyncio.run(read()) == version


def test_the_first_database_named_stays_the_caches(
    redis_url: str, tmp_path: Path, namespace: str
) -> None:
    """The scope is never changed behind a caller's back: a tracker of a second database
    on a cache that serves a first one raises StoreMismatchError at its first call."""
    first = PersonalityStore(f"sqlite:///{tmp_path / 'a.db'}")
    with PersonalityCache.from_url(redis_url, namespace=namespace, store=first) as cache:
        assert cache.get("dave") is None
        other = PersonalityTracker(PersonalityStore(f"sqlite:///{tmp_path / 'b.db'}"), cache)
        with pytest.raises(StoreMismatchError):
            other.get_current_personality_state("dave")
        other.close()
