"""SingleFlight: one load per key at a time in a process, shared with the waiters."""

from __future__ import annotations

import threading

import pytest

from penny_cache.policy.flight import SingleFlight


def test_concurrent_callers_share_one_load() -> None:
    """Twenty threads missing the same key run the loader once and all get its result."""
    flight: SingleFlight[int] = SingleFlight()
    started, release = threading.Event(), threading.Event()
    calls = 0

    def load() -> int:
        nonlocal calls
        calls += 1
        started.set()
        assert release.wait(10)
        return 42

    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(flight.run("k", load)))]
    threads[0].start()
    assert started.wait(10)
    threads += [
        threading.Thread(target=lambda: results.append(flight.run("k", load))) for _ in range(19)
    ]
    for t in threads[1:]:
        t.start()
    release.set()
    for t in threads:
        t.join(10)
    assert calls == 1 and results == [42] * 20


def test_a_failed_load_is_not_shared_as_success() -> None:
    """The leader's exception reaches the leader; a waiter loads for itself."""
    flight: SingleFlight[int] = SingleFlight()
    with pytest.raises(RuntimeError):
        flight.run("k", lambda: (_ for _ in ()).throw(RuntimeError("sql down")))
    assert flight.run("k", lambda: 7) == 7


def test_keys_are_independent() -> None:
    """Loads of different keys do not wait on each other."""
    flight: SingleFlight[str] = SingleFlight()
    assert flight.run("a", lambda: flight.run("b", lambda: "inner")) == "inner"
