"""The SQL source of truth under concurrent writers, on SQLite and PostgreSQL."""

from __future__ import annotations

import multiprocessing

import pytest

from penny_cache.cache import PersonalityCache
from penny_cache.store.database import PersonalityStore
from penny_cache.tracker import PersonalityTracker
from tests.integration import workers

pytestmark = pytest.mark.integration
SPAWN = multiprocessing.get_context("spawn")
PROCESSES, UPDATES = 4, 25


def test_concurrent_updates_from_processes_lose_nothing(database_url: str) -> None:
    """4 processes x 25 updates of one user: version ends at 100, every version committed
    exactly once, each process sees its own versions strictly increase, and the history's
    timestamps follow its versions (stamped under the row lock: 19 of 142 records used to
    carry an earlier time than the version before them)."""
    PersonalityStore(database_url).identity  # noqa: B018 - create the tables up front
    with SPAWN.Pool(PROCESSES) as pool:
        results = pool.starmap(
            workers.updates, [(database_url, "hot-user", UPDATES, w) for w in range(PROCESSES)]
        )
    store = PersonalityStore(database_url)
    assert store.load("hot-user").version == PROCESSES * UPDATES
    committed = sorted(v for versions in results for v in versions)
    assert committed == list(range(1, PROCESSES * UPDATES + 1))
    for versions in results:
        assert versions == sorted(versions) and len(set(versions)) == len(versions)
    history = store.history("hot-user", days=1)
    assert [r.version for r in history] == list(range(1, PROCESSES * UPDATES + 1))
    stamps = [r.timestamp for r in history]
    assert stamps == sorted(stamps)
    store.close()


def test_tracker_round_trip(database_url: str, redis_url: str, namespace: str) -> None:
    """The tracker reads, updates and reports history identically on each dialect."""
    store = PersonalityStore(database_url)
    with PersonalityCache.from_url(redis_url, namespace=namespace) as cache:
        tracker = PersonalityTracker(store, cache)
        assert tracker.get_current_personality_state("ü-ser 1").version == 0
        state = tracker.update_personality_dimension(
            "ü-ser 1", "emotional_support_style", "empathetic", 0.2, "sounded down"
        )
        assert tracker.get_current_personality_state("ü-ser 1") == state
        assert store.load("ü-ser 1") == state
        assert state.updated_at.tzinfo is not None
        [record] = tracker.get_personality_evolution_history("ü-ser 1")
        assert (record.old_value, record.new_value) == ("balanced", "empathetic")
    store.close()


def test_float_values_round_trip_exactly(database_url: str) -> None:
    """A continuous value comes back from SQL bit-for-bit (double precision)."""
    store = PersonalityStore(database_url)
    value = 0.1 + 0.2
    state = store.update_dimension("u", "communication_formality", value, 0.0, None)
    assert store.load("u") == state
    assert store.load("u").dimensions["communication_formality"].value == value
    store.close()
