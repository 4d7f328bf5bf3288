"""The single-flight rule on both APIs (``penny_cache.policy.flight``).

Callers that arrive while a load of their key runs wait and share its outcome, its
result or its exception (the load function runs once); a waiter that has waited
``wait_timeout``, or whose leader was interrupted (cancelled, ``KeyboardInterrupt``),
loads for itself. Each test proves the waiters had arrived before the
leader finished: threads through an instrumented ``done`` event (a waiter reports from
inside its wait), coroutines because a waiter attaches to the leader's future before its
first suspension. No test sleeps hoping the other side got there.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest

from penny_cache.policy.flight import AsyncSingleFlight, SingleFlight
from tests.unit.flight_probes import LONG, Arrivals, report_waiters

WAITERS = 5


@pytest.fixture
def arrivals(monkeypatch: pytest.MonkeyPatch) -> Arrivals:
    """Every ``SingleFlight`` waiter of the test reports when it starts waiting."""
    return report_waiters(monkeypatch)


class _BlockedLoad:
    """A load that signals it started, then blocks until released, then answers or raises."""

    def __init__(self, outcome: Callable[[], str]) -> None:
        self.calls = 0
        self.started = threading.Event()
        self.release = threading.Event()
        self._outcome = outcome

    def __call__(self) -> str:
        self.calls += 1
        self.started.set()
        assert self.release.wait(LONG), "the test never released the load"
        return self._outcome()


def _run_all(
    flight_: SingleFlight[str], load: _BlockedLoad, arrivals: Arrivals
) -> list[str | BaseException]:
    """A leader and ``WAITERS`` callers of one key; the leader is released only once every
    waiter is inside its wait. Returns each caller's result or exception."""
    outcomes: list[str | BaseException] = []
    lock = threading.Lock()

    def call() -> None:
        try:
            result: str | BaseException = flight_.run("k", load)
        except BaseException as exc:  # the outcome under test
            result = exc
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=call) for _ in range(WAITERS + 1)]
    threads[0].start()
    assert load.started.wait(LONG)
    for t in threads[1:]:
        t.start()
    arrivals.wait_for(WAITERS)
    load.release.set()
    for t in threads:
        t.join(LONG)
    assert not any(t.is_alive() for t in threads)
    return outcomes


def test_sync_waiters_share_the_leaders_result(arrivals: Arrivals) -> None:
    """Threads arriving while a load runs get its result; the load runs once."""
    load = _BlockedLoad(lambda: "loaded")
    outcomes = _run_all(SingleFlight(wait_timeout=LONG), load, arrivals)
    assert outcomes == ["loaded"] * (WAITERS + 1)
    assert load.calls == 1


def test_sync_waiters_share_the_leaders_exception(arrivals: Arrivals) -> None:
    """Threads arriving while a load runs get the exception it raised, the same one, and
    the failing load runs once (a down database is asked once, not once per waiter)."""
    error = ConnectionError("sql down")

    def fail() -> str:
        raise error

    load = _BlockedLoad(fail)
    outcomes = _run_all(SingleFlight(wait_timeout=LONG), load, arrivals)
    assert len(outcomes) == WAITERS + 1
    assert all(outcome is error for outcome in outcomes)
    assert load.calls == 1


def test_sync_failure_is_not_remembered() -> None:
    """A failed load is shared only with callers that waited for it: the next caller
    after it loads anew."""
    flight_: SingleFlight[str] = SingleFlight(wait_timeout=LONG)

    def fail() -> str:
        raise ConnectionError("sql down")

    with pytest.raises(ConnectionError):
        flight_.run("k", fail)
    assert flight_.run("k", lambda: "again") == "again"


def test_sync_waiter_of_a_hung_leader_loads_for_itself(arrivals: Arrivals) -> None:
    """A waiter that waited ``wait_timeout`` while the leader hangs loads for itself and
    gets its own result; the leader, released afterwards, still finishes with its own."""
    flight_: SingleFlight[str] = SingleFlight(wait_timeout=0.05)
    hung = _BlockedLoad(lambda: "leader's")
    leader_result: list[str] = []
    leader = threading.Thread(target=lambda: leader_result.append(flight_.run("k", hung)))
    leader.start()
    try:
        assert hung.started.wait(LONG)
        assert flight_.run("k", lambda: "waiter's own") == "waiter's own"
        assert arrivals.count == 1  # it did wait on the leader first
        assert not hung.release.is_set() and leader.is_alive()
    finally:
        hung.release.set()
        leader.join(LONG)
    assert leader_result == ["leader's"]
    assert hung.calls == 1


def test_sync_waiters_of_an_interrupted_leader_load_for_themselves(arrivals: Arrivals) -> None:
    """A leader interrupted rather than failing (a ``KeyboardInterrupt`` in its thread)
    has no outcome to share: its waiters each load for themselves and get their result,
    not the interrupt."""

    def interrupted() -> str:
        raise KeyboardInterrupt

    load = _BlockedLoad(interrupted)
    own = _BlockedLoad(lambda: "own")
    own.release.set()
    flight_: SingleFlight[str] = SingleFlight(wait_timeout=LONG)
    outcomes: list[str | BaseException] = []

    def leader() -> None:
        try:
            flight_.run("k", load)
        except KeyboardInterrupt as exc:
            outcomes.append(exc)

    first = threading.Thread(target=leader)
    first.start()
    assert load.started.wait(LONG)
    waiter = threading.Thread(target=lambda: outcomes.append(flight_.run("k", own)))
    waiter.start()
    arrivals.wait_for(1)
    load.release.set()
    first.join(LONG)
    waiter.join(LONG)
    assert sorted(map(repr, outcomes)) == ["'own'", "KeyboardInterrupt()"]
    assert own.calls == 1


# -- asyncio ----------------------------------------------------------------------------------


class _AsyncBlockedLoad:
    """The coroutine twin of ``_BlockedLoad``."""

    def __init__(self, outcome: Callable[[], str]) -> None:
        self.calls = 0
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self._outcome = outcome

    async def __call__(self) -> str:
        self.calls += 1
        self.started.set()
        await asyncio.wait_for(self.release.wait(), LONG)
        return self._outcome()


async def _arun_all(
    flight_: AsyncSingleFlight[str], load: _AsyncBlockedLoad
) -> list[str | BaseException]:
    """A leader and ``WAITERS`` coroutines on one key, the leader released only after every
    waiter has attached to it. Returns each caller's result or exception."""
    arrived = 0
    all_arrived = asyncio.Event()

    async def waiter() -> str:
        nonlocal arrived
        arrived += 1
        if arrived == WAITERS:
            all_arrived.set()
        # no suspension between here and run() finding the leader's future
        return await flight_.run("k", load)

    leader = asyncio.create_task(flight_.run("k", load))
    await asyncio.wait_for(load.started.wait(), LONG)
    waiters = [asyncio.create_task(waiter()) for _ in range(WAITERS)]
    await asyncio.wait_for(all_arrived.wait(), LONG)
    load.release.set()
    return list(await asyncio.gather(leader, *waiters, return_exceptions=True))


def test_async_waiters_share_the_leaders_result() -> None:
    """Coroutines arriving while a load runs get its result; the load runs once."""

    async def scenario() -> None:
        load = _AsyncBlockedLoad(lambda: "loaded")
        outcomes = await _arun_all(AsyncSingleFlight(wait_timeout=LONG), load)
        assert outcomes == ["loaded"] * (WAITERS + 1)
        assert load.calls == 1

    asyncio.run(scenario())


def test_async_waiters_share_the_leaders_exception() -> None:
    """Coroutines arriving while a load runs get the exception it raised, the same one,
    and the failing load runs once."""
    error = ConnectionError("sql down")

    def fail() -> str:
        raise error

    async def scenario() -> None:
        load = _AsyncBlockedLoad(fail)
        outcomes = await _arun_all(AsyncSingleFlight(wait_timeout=LONG), load)
        assert len(outcomes) == WAITERS + 1
        assert all(outcome is error for outcome in outcomes)
        assert load.calls == 1

    asyncio.run(scenario())


def test_async_failure_is_not_remembered() -> None:
    """After a failed load the next caller loads anew."""

    async def scenario() -> None:
        flight_: AsyncSingleFlight[str] = AsyncSingleFlight(wait_timeout=LONG)

        async def fail() -> str:
            raise ConnectionError("sql down")

        async def again() -> str:
            return "again"

        with pytest.raises(ConnectionError):
            await flight_.run("k", fail)
        assert await flight_.run("k", again) == "again"

    asyncio.run(scenario())


def test_async_waiter_of_a_hung_leader_loads_for_itself() -> None:
    """A coroutine that waited ``wait_timeout`` on a hung leader loads for itself; the
    leader, released afterwards, still finishes with its own result."""

    async def scenario() -> None:
        flight_: AsyncSingleFlight[str] = AsyncSingleFlight(wait_timeout=0.05)
        hung = _AsyncBlockedLoad(lambda: "leader's")
        own_calls = 0

        async def own() -> str:
            nonlocal own_calls
            own_calls += 1
            return "waiter's own"

        leader = asyncio.create_task(flight_.run("k", hung))
        try:
            await asyncio.wait_for(hung.started.wait(), LONG)
            assert await flight_.run("k", own) == "waiter's own"
            assert own_calls == 1 and not leader.done()
        finally:
            hung.release.set()
        assert await asyncio.wait_for(leader, LONG) == "leader's"
        assert hung.calls == 1

    asyncio.run(scenario())


def test_async_cancelled_leader_does_not_cancel_its_waiters() -> None:
    """A leader cancelled mid-load (its request went away) is not an outcome of the load:
    the waiters are not cancelled with it; they finish with a loaded result. (Used to:
    the leader's CancelledError went into the shared future and cancelled every waiter.)"""

    async def scenario() -> None:
        flight_: AsyncSingleFlight[str] = AsyncSingleFlight(wait_timeout=LONG)
        load = _AsyncBlockedLoad(lambda: "loaded")
        leader = asyncio.create_task(flight_.run("k", load))
        await asyncio.wait_for(load.started.wait(), LONG)
        attached = asyncio.Event()

        async def waiter() -> str:
            attached.set()  # no suspension between here and run() finding the leader
            return await flight_.run("k", load)

        waiting = asyncio.create_task(waiter())
        await asyncio.wait_for(attached.wait(), LONG)
        leader.cancel()
        load.release.set()
        [outcome] = await asyncio.gather(waiting, return_exceptions=True)
        assert outcome == "loaded", repr(outcome)

    asyncio.run(scenario())
