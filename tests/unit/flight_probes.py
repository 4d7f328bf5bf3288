"""Probes that let single-flight tests know a waiter has arrived, without sleeping."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from penny_cache.policy import flight

__all__ = ["LONG", "Arrivals", "report_waiters"]

LONG = 10.0  # never reached unless a test is broken


class Arrivals:
    """Counts callers that reached a point, for the test to wait on."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.count = 0

    def arrived(self) -> None:
        with self._cond:
            self.count += 1
            self._cond.notify_all()

    def wait_for(self, n: int) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: self.count >= n, LONG), f"{self.count} of {n}"


def report_waiters(monkeypatch: pytest.MonkeyPatch) -> Arrivals:
    """Make every ``SingleFlight`` call created from now on report each thread that starts
    waiting on it (its ``done.wait``), just before the thread blocks there: once the test
    has seen n arrivals, n threads are committed to the running load's outcome."""
    seen = Arrivals()

    class ReportingEvent(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            seen.arrived()
            return super().wait(timeout)

    class ReportingCall(flight._Call[Any]):
        def __init__(self) -> None:
            super().__init__()
            self.done = ReportingEvent()

    monkeypatch.setattr(flight, "_Call", ReportingCall)
    return seen
