"""PersonalityTracker on fakeredis + SQLite: cache-aside reads, committed updates, races."""

from __future__ import annotations

import threading
from pathlib import Path

import fakeredis
import pytest

from penny_cache.cache import PersonalityCache
from penny_cache.codec import encode_state
from penny_cache.errors import InvalidInputError, StoreMismatchError, UnknownDimensionError
from penny_cache.policy.flows import Flow
from penny_cache.policy.near import Ticket
from penny_cache.policy.ops import Set
from penny_cache.redis.backend import RedisBackend
from penny_cache.state import PersonalityState
from penny_cache.store.database import PersonalityStore
from penny_cache.tracker import PersonalityTracker
from tests.conftest import FakeUTCClock
from tests.unit.test_cache import _DownBackend


class CountingStore(PersonalityStore):
    """A real store that counts SQL loads."""

    loads = 0

    def load(self, user_id: str) -> PersonalityState:
        self.loads += 1
        return super().load(user_id)


class ParkingStore(PersonalityStore):
    """A real store whose first load parks after reading SQL, until released."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.loaded = threading.Event()
        self.release = threading.Event()
        self._park = True

    def load(self, user_id: str) -> PersonalityState:
        state = super().load(user_id)
        if self._park:
            self._park = False
            self.loaded.set()
            assert self.release.wait(10), "the test never released the reader"
        return state


class PlainCacheAside(PersonalityCache):
    """The naive policy the race test must catch: a fill is an unconditional SET."""

    def fill_flow(self, state: PersonalityState, ticket: Ticket | None, lease: str) -> Flow[bool]:
        yield Set(self.keys.state(state.user_id), encode_state(state), int(self.ttl * 1000))
        return True


@pytest.fixture
def tracker(store: PersonalityStore, cache: PersonalityCache) -> PersonalityTracker:
    return PersonalityTracker(store=store, cache=cache)


def test_first_read_misses_then_hits_without_sql(sqlite_url: str, cache: PersonalityCache) -> None:
    """A read loads SQL once and fills the cache; the next read is a hit with no SQL."""
    store = CountingStore(sqlite_url)
    tracker = PersonalityTracker(store=store, cache=cache)
    first = tracker.get_current_personality_state("alice")
    second = tracker.get_current_personality_state("alice")
    assert first == second and first.version == 0
    assert store.loads == 1
    stats = tracker.get_cache_stats()
    assert (stats["hits"], stats["misses"]) == (1, 1)


def test_update_commits_then_writes_through(sqlite_url: str, cache: PersonalityCache) -> None:
    """An update returns the committed version and the next read hits that version."""
    store = CountingStore(sqlite_url)
    tracker = PersonalityTracker(store=store, cache=cache)
    tracker.get_current_personality_state("alice")
    new = tracker.update_personality_dimension(
        "alice", "communication_formality", 0.7, confidence_change=0.1, context="said 'please'"
    )
    assert new.version == 1
    assert new.dimensions["communication_formality"].value == 0.7
    assert new.dimensions["communication_formality"].confidence == pytest.approx(0.4)
    assert store.load("alice") == new
    loads = store.loads
    assert tracker.get_current_personality_state("alice") == new
    assert store.loads == loads


def test_confidence_is_clamped(tracker: PersonalityTracker) -> None:
    """confidence_change is added and clamped to [0, 1], as in the original tracker."""
    up = tracker.update_personality_dimension("a", "humor_style_preference", "dry", 5.0)
    assert up.dimensions["humor_style_preference"].confidence == 1.0
    down = tracker.update_personality_dimension("a", "humor_style_preference", "dry", -7)
    assert down.dimensions["humor_style_preference"].confidence == 0.0


@pytest.mark.parametrize(
    ("dimension", "value", "change", "context"),
    [
        ("no_such_dimension", 0.5, 0.0, None),
        ("communication_formality", 1.5, 0.0, None),
        ("communication_formality", float("nan"), 0.0, None),
        ("communication_formality", "high", 0.0, None),
        ("humor_style_preference", "slapstick", 0.0, None),
        ("communication_formality", 0.5, float("inf"), None),
        ("communication_formality", 0.5, 0.0, "x" * 5000),
        ("communication_formality", 0.5, 0.0, "nul\x00"),
    ],
)
def test_bad_input_raises_and_writes_nothing(
    tracker: PersonalityTracker,
    store: PersonalityStore,
    dimension: str,
    value: float | str,
    change: float,
    context: str | None,
) -> None:
    """Bad input is a ValueError of our tree; SQL, history and cache stay untouched."""
    with pytest.raises(InvalidInputError) as caught:
        tracker.update_personality_dimension("alice", dimension, value, change, context)
    assert isinstance(caught.value, ValueError)
    assert store.load("alice").version == 0
    assert store.history("alice") == []
    assert tracker.cache.size() == 0


def test_history_filters_by_dimension_and_days(
    tracker: PersonalityTracker, utc_clock: FakeUTCClock
) -> None:
    """The evolution history records each change and honours dimension and days."""
    tracker.update_personality_dimension("a", "communication_formality", 0.6, 0.1, "old")
    utc_clock.advance(days=40)
    tracker.update_personality_dimension("a", "communication_formality", 0.8, 0.1, "new")
    tracker.update_personality_dimension("a", "response_length_preference", "brief", 0.0)
    recent = tracker.get_personality_evolution_history("a", days=30)
    assert [r.version for r in recent] == [2, 3]
    only = tracker.get_personality_evolution_history("a", "communication_formality", days=60)
    assert [(r.old_value, r.new_value, r.trigger_context) for r in only] == [
        (0.5, 0.6, "old"),
        (0.6, 0.8, "new"),
    ]
    with pytest.raises(UnknownDimensionError):
        tracker.get_personality_evolution_history("a", "bogus")
    for days in (float("nan"), 0, -1, 1e9, 36_501):
        with pytest.raises(InvalidInputError):
            tracker.get_personality_evolution_history("a", days=days)


def run_race(sqlite_url: str, cache: PersonalityCache) -> tuple[int, int]:
    """Park a reader between its SQL read and its fill while a writer commits.

    Returns (version left in the cache, version in SQL).
    """
    store = ParkingStore(sqlite_url)
    reader = PersonalityTracker(store=store, cache=cache)
    writer = PersonalityTracker(store=PersonalityStore(sqlite_url), cache=cache)
    thread = threading.Thread(target=reader.get_current_personality_state, args=("alice",))
    thread.start()
    assert store.loaded.wait(10)
    committed = writer.update_personality_dimension("alice", "communication_formality", 0.9)
    store.release.set()
    thread.join(10)
    cached = cache.get("alice")
    assert cached is not None
    return cached.version, committed.version


def test_slow_fill_cannot_overwrite_a_newer_version(
    sqlite_url: str, fake_backend: RedisBackend, namespace: str
) -> None:
    """The classic cache-aside race: a fill of v read before v+1 committed is refused."""
    cache = PersonalityCache(fake_backend, namespace=namespace, stats_flush_interval=None)
    cached, committed = run_race(sqlite_url, cache)
    assert cached == committed == 1
    assert cache.get_stats()["fills_refused"] == 1


def test_the_race_test_catches_plain_cache_aside(
    sqlite_url: str, fake_backend: RedisBackend, namespace: str
) -> None:
    """The same interleaving leaves a stale entry under a naive fill: the test has teeth."""
    cache = PlainCacheAside(fake_backend, namespace=namespace, stats_flush_interval=None)
    cached, committed = run_race(sqlite_url, cache)
    assert (cached, committed) == (0, 1)


def test_redis_down_reads_and_updates_still_work(store: PersonalityStore) -> None:
    """With Redis unreachable, reads come from SQL and updates commit; nothing is raised."""
    down = PersonalityCache(_DownBackend(), stats_flush_interval=None)
    tracker = PersonalityTracker(store=store, cache=down)
    state = tracker.update_personality_dimension("alice", "proactive_suggestions", 0.9)
    assert tracker.get_current_personality_state("alice") == state
    assert tracker.get_cache_stats()["redis_errors"] >= 2


def test_one_cache_refuses_a_second_database(tmp_path: Path, cache: PersonalityCache) -> None:
    """A cache bound to one database raises rather than mixing in another's entries."""
    PersonalityTracker(PersonalityStore(f"sqlite:///{tmp_path / 'a.db'}"), cache)
    PersonalityTracker(
        PersonalityStore(f"sqlite:///{tmp_path / 'a.db'}"), cache
    ).get_current_personality_state("u")
    other = PersonalityTracker(PersonalityStore(f"sqlite:///{tmp_path / 'b.db'}"), cache)
    with pytest.raises(StoreMismatchError):
        other.get_current_personality_state("u")


def test_two_databases_on_one_namespace_never_mix(
    tmp_path: Path, fake_redis: fakeredis.FakeRedis, namespace: str
) -> None:
    """Trackers on different databases sharing a Redis namespace read only their own state."""

    def tracker_on(name: str) -> PersonalityTracker:
        cache = PersonalityCache(
            RedisBackend(fake_redis), namespace=namespace, stats_flush_interval=None
        )
        return PersonalityTracker(PersonalityStore(f"sqlite:///{tmp_path / name}"), cache)

    a, b = tracker_on("a.db"), tracker_on("b.db")
    a.update_personality_dimension("u", "communication_formality", 0.9)
    a.update_personality_dimension("u", "communication_formality", 0.8)
    b.update_personality_dimension("u", "communication_formality", 0.1)
    assert a.get_current_personality_state("u").version == 2
    b_state = b.get_current_personality_state("u")
    assert (b_state.version, b_state.dimensions["communication_formality"].value) == (1, 0.1)
    assert a.cache.keys.state("u") != b.cache.keys.state("u")


def test_concurrent_cold_reads_in_a_process_make_one_sql_load(
    sqlite_url: str, cache: PersonalityCache
) -> None:
    """50 threads missing the same user: single-flight plus the recent-load rule give one
    SQL read, and every thread gets that state."""
    store = CountingStore(sqlite_url)
    tracker = PersonalityTracker(store=store, cache=cache)
    tracker.get_current_personality_state("warm-up")  # bind the store outside the race
    barrier = threading.Barrier(50)
    results: list[PersonalityState] = []

    def read() -> None:
        barrier.wait(10)
        results.append(tracker.get_current_personality_state("cold"))

    threads = [threading.Thread(target=read) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 50 and len({r.version for r in results}) == 1
    assert store.loads == 2  # the warm-up user and "cold", once


def _outbox_threads() -> int:
    return sum(thread.name == "penny-outbox" for thread in threading.enumerate())


def test_trackers_share_one_sweeper_and_a_closed_one_leaves_no_thread(
    sqlite_url: str, cache: PersonalityCache
) -> None:
    """Twenty trackers on one database and cache run one outbox thread between them
    (each used to start its own); closing them (context managers) stops it, and a
    second close is harmless."""
    before = _outbox_threads()
    trackers = [PersonalityTracker(PersonalityStore(sqlite_url), cache) for _ in range(20)]
    for tracker in trackers:
        tracker.get_current_personality_state("u")
    assert _outbox_threads() == before + 1
    assert len({id(tracker.outbox) for tracker in trackers}) == 1
    for tracker in trackers:
        with tracker:
            pass
        tracker.close()
    assert _outbox_threads() == before  # the last close joined the thread


def test_a_later_version_never_carries_an_earlier_timestamp(
    store: PersonalityStore, utc_clock: FakeUTCClock
) -> None:
    """A writer whose clock runs behind (another host) still stamps its version no earlier
    than the version before it: history times follow versions, and so does updated_at."""
    first = store.update_dimension("ann", "communication_formality", 0.6)
    utc_clock.advance(seconds=-30)  # this writer's clock is half a minute behind
    second = store.update_dimension("ann", "communication_formality", 0.7)
    assert second.version == first.version + 1
    assert second.updated_at >= first.updated_at
    stamps = [record.timestamp for record in store.history("ann", days=1)]
    assert [record.version for record in store.history("ann", days=1)] == [1, 2]
    assert stamps == sorted(stamps)
