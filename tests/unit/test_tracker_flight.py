"""The single-flight failure rule through the trackers (sync and asyncio, on fakeredis +
SQLite): concurrent misses of one user while its SQL load fails all raise
``StoreUnavailableError``, and the failing database is asked once.

Two shapes of "concurrent misses": (1) another process holds the user's loader lease, so
every miss here waits for its fill, then one of them loads SQL for all (single-flight);
(2) nobody holds it, so one miss here takes the lease and loads, and the others arrive
while that load runs.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import fakeredis
import pytest

from penny_cache import tracker as tracker_module
from penny_cache.cache import AsyncPersonalityCache, PersonalityCache
from penny_cache.errors import StoreUnavailableError
from penny_cache.policy.flight import AsyncSingleFlight
from penny_cache.redis.backend import AsyncRedisBackend, RedisBackend
from penny_cache.state import PersonalityState
from penny_cache.store.database import PersonalityStore
from penny_cache.tracker import AsyncPersonalityTracker, PersonalityTracker
from tests.unit.flight_probes import LONG, Arrivals, report_waiters

USER = "cold-user"
CALLERS = 6
# How long a miss waits for another loader's fill before loading itself, on the trackers'
# clock; long on Redis's clock, so no lease expires under a slow test run.
LEASE_TTL = 10.0
_T = TypeVar("_T")


class TickingClock:
    """The trackers' monotonic clock: each reading is a second after the previous one, so
    a miss gives up waiting for a fill after about ten polls (milliseconds, not 10 s)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


class FailingStore(PersonalityStore):
    """A real SQLite store whose loads, once ``failing``, count themselves, report that they
    started, block until released and raise ``StoreUnavailableError``."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.failing = False
        self.loads = 0
        self.started = threading.Event()
        self.release = threading.Event()
        self._count_lock = threading.Lock()

    def load(self, user_id: str) -> PersonalityState:
        if not self.failing:
            return super().load(user_id)
        with self._count_lock:
            self.loads += 1
        self.started.set()
        assert self.release.wait(LONG), "the test never released the load"
        raise StoreUnavailableError("database unavailable: the test's outage")


@pytest.fixture
def store(sqlite_url: str) -> Iterator[FailingStore]:
    s = FailingStore(sqlite_url)
    yield s
    s.release.set()
    s.close()


def _foreign_lease(raw: fakeredis.FakeRedis, lease_key: str) -> None:
    """Another process is loading this user (and will never fill: it is the outage too)."""
    raw.set(lease_key, "other-process:0", px=60_000)


# -- sync ---------------------------------------------------------------------------------


@pytest.fixture
def sync_tracker(
    store: FailingStore, fake_redis: fakeredis.FakeRedis, namespace: str
) -> Iterator[PersonalityTracker]:
    cache = PersonalityCache(
        RedisBackend(fake_redis),
        namespace=namespace,
        stats_flush_interval=None,
        lease_ttl=LEASE_TTL,
    )
    tracker = PersonalityTracker(store, cache, monotonic=TickingClock(), outbox_interval=None)
    tracker.get_current_personality_state("warm-up")  # binds the store outside the race
    store.failing = True
    yield tracker
    tracker.close()
    cache.close()


def _read_concurrently(
    tracker: PersonalityTracker, callers: int, before_release: Callable[[], None]
) -> list[BaseException | PersonalityState]:
    """``callers`` threads read USER; the first starts alone and must reach SQL before the
    others start; ``before_release`` waits until they are all committed to a running load;
    then SQL answers (with its failure). Returns each caller's outcome."""
    outcomes: list[BaseException | PersonalityState] = []
    lock = threading.Lock()

    def read() -> None:
        try:
            outcome: BaseException | PersonalityState = tracker.get_current_personality_state(USER)
        except BaseException as exc:  # the outcome under test
            outcome = exc
        with lock:
            outcomes.append(outcome)

    store = tracker.store
    assert isinstance(store, FailingStore)
    threads = [threading.Thread(target=read) for _ in range(callers)]
    threads[0].start()
    assert store.started.wait(LONG)
    for t in threads[1:]:
        t.start()
    before_release()
    store.release.set()
    for t in threads:
        t.join(LONG)
    assert not any(t.is_alive() for t in threads)
    return outcomes


def _all_unavailable(outcomes: list[Any]) -> bool:
    return len(outcomes) == CALLERS and all(isinstance(o, StoreUnavailableError) for o in outcomes)


def test_sync_misses_behind_a_foreign_lease_share_one_failing_load(
    sync_tracker: PersonalityTracker,
    store: FailingStore,
    fake_redis: fakeredis.FakeRedis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With another process holding the lease, concurrent misses wait for its fill, then
    one loads SQL for all: each raises ``StoreUnavailableError``; SQL was asked once."""
    arrivals = report_waiters(monkeypatch)
    _foreign_lease(fake_redis, sync_tracker.cache.keys.lease(USER))
    outcomes = _read_concurrently(sync_tracker, CALLERS, lambda: arrivals.wait_for(CALLERS - 1))
    assert _all_unavailable(outcomes), outcomes
    assert store.loads == 1


def _elected_holder_scenario(
    tracker: PersonalityTracker, arrivals: Arrivals
) -> list[BaseException | PersonalityState]:
    """The first miss takes the lease and loads; of the later misses one leads the
    in-process single-flight and the rest wait on it (CALLERS - 2 waiters)."""
    return _read_concurrently(tracker, CALLERS, lambda: arrivals.wait_for(CALLERS - 2))


def test_sync_misses_while_the_lease_holders_load_fails_all_raise(
    sync_tracker: PersonalityTracker, store: FailingStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Concurrent misses while this process's lease holder loads from a failing SQL all
    raise ``StoreUnavailableError`` (none hangs, none is answered with something else),
    and SQL is asked at most twice, not once per caller."""
    outcomes = _elected_holder_scenario(sync_tracker, report_waiters(monkeypatch))
    assert _all_unavailable(outcomes), outcomes
    assert 1 <= store.loads <= 2


def test_sync_misses_while_the_lease_holders_load_fails_ask_sql_once(
    sync_tracker: PersonalityTracker, store: FailingStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Concurrent misses of one user in one process during a failing SQL load ask SQL
    once: they share one lookup, and with it the holder's failure (the others used to
    wait the lease TTL for a fill that never came, then ask SQL again)."""
    outcomes = _elected_holder_scenario(sync_tracker, report_waiters(monkeypatch))
    assert _all_unavailable(outcomes), outcomes
    assert store.loads == 1


# -- asyncio ------------------------------------------------------------------------------


@dataclass
class _Entries:
    """Counts coroutines entering the tracker's ``AsyncSingleFlight.run``."""

    count: int = 0
    event: asyncio.Event | None = None
    target: int = 0


def _report_async_entries(monkeypatch: pytest.MonkeyPatch) -> _Entries:
    """Trackers built from now on use an ``AsyncSingleFlight`` that counts callers of
    ``run``. A caller attaches to a running load before it first suspends, so once the
    count is reached every caller is committed to the load running (or started) then."""
    entries = _Entries()

    class ReportingFlight(AsyncSingleFlight[_T]):
        async def run(
            self, key: str, load: Callable[[], Awaitable[_T]], *, wait: bool = True
        ) -> _T:
            entries.count += 1
            if entries.event is not None and entries.count >= entries.target:
                entries.event.set()
            return await super().run(key, load, wait=wait)

    monkeypatch.setattr(tracker_module, "AsyncSingleFlight", ReportingFlight)
    return entries


async def _aread_concurrently(
    tracker: AsyncPersonalityTracker, store: FailingStore, entries: _Entries, target: int
) -> list[BaseException | PersonalityState]:
    """As ``_read_concurrently``: the first reader reaches SQL alone, then the others start;
    SQL answers once ``target`` readers have entered the single-flight."""
    entries.event, entries.target = asyncio.Event(), target
    first = asyncio.create_task(tracker.get_current_personality_state(USER))
    assert await asyncio.to_thread(store.started.wait, LONG)
    rest = [
        asyncio.create_task(tracker.get_current_personality_state(USER)) for _ in range(CALLERS - 1)
    ]
    await asyncio.wait_for(entries.event.wait(), LONG)
    store.release.set()
    done = await asyncio.wait_for(asyncio.gather(first, *rest, return_exceptions=True), LONG)
    return list(done)


def _run_async(
    store: FailingStore,
    namespace: str,
    scenario: Callable[[AsyncPersonalityTracker, fakeredis.FakeRedis], Awaitable[_T]],
) -> _T:
    """Run ``scenario`` with an asyncio tracker on a fresh fake Redis (bound, warmed up)."""
    server = fakeredis.FakeServer()
    raw = fakeredis.FakeRedis(server=server)

    async def main() -> _T:
        cache = AsyncPersonalityCache(
            AsyncRedisBackend(lambda: fakeredis.FakeAsyncRedis(server=server)),
            RedisBackend(raw),
            namespace=namespace,
            stats_flush_interval=None,
            lease_ttl=LEASE_TTL,
        )
        tracker = AsyncPersonalityTracker(
            store, cache, monotonic=TickingClock(), outbox_interval=None
        )
        try:
            await tracker.get_current_personality_state("warm-up")
            store.failing = True
            return await scenario(tracker, raw)
        finally:
            store.release.set()
            tracker.close()
            await cache.aclose()

    return asyncio.run(main())


def test_async_misses_behind_a_foreign_lease_share_one_failing_load(
    store: FailingStore, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """asyncio: with another process holding the lease, concurrent misses all raise
    ``StoreUnavailableError`` and SQL was asked once."""
    entries = _report_async_entries(monkeypatch)

    async def scenario(
        tracker: AsyncPersonalityTracker, raw: fakeredis.FakeRedis
    ) -> list[BaseException | PersonalityState]:
        _foreign_lease(raw, tracker.cache.keys.lease(USER))
        return await _aread_concurrently(tracker, store, entries, CALLERS)

    outcomes = _run_async(store, namespace, scenario)
    assert _all_unavailable(outcomes), outcomes
    assert store.loads == 1


def _async_elected_holder(
    store: FailingStore, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> list[BaseException | PersonalityState]:
    """The first miss takes the lease and loads outside the single-flight; the other
    CALLERS - 1 enter it."""
    entries = _report_async_entries(monkeypatch)

    async def scenario(
        tracker: AsyncPersonalityTracker, _raw: fakeredis.FakeRedis
    ) -> list[BaseException | PersonalityState]:
        return await _aread_concurrently(tracker, store, entries, CALLERS - 1)

    return _run_async(store, namespace, scenario)


def test_async_misses_while_the_lease_holders_load_fails_all_raise(
    store: FailingStore, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """asyncio: concurrent misses while the lease holder's SQL load fails all raise
    ``StoreUnavailableError``, and SQL is asked at most twice, not once per caller."""
    outcomes = _async_elected_holder(store, namespace, monkeypatch)
    assert _all_unavailable(outcomes), outcomes
    assert 1 <= store.loads <= 2


def test_async_misses_while_the_lease_holders_load_fails_ask_sql_once(
    store: FailingStore, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """asyncio: concurrent misses of one user during a failing SQL load ask SQL once (the
    lease holder leads the in-process flight; it used to load outside it, and the others
    waited the lease TTL, then asked SQL again)."""
    outcomes = _async_elected_holder(store, namespace, monkeypatch)
    assert _all_unavailable(outcomes), outcomes
    assert store.loads == 1
